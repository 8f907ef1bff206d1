"""Class activation maps for looking at a model: batched, several classes per image, exact.

``CAM(model, target_layers, kind)(images, targets)`` gives, for every image n and each of its
target classes c (given, or the top-k predicted), a map per target layer, computed through the
library's ops (``attnfast.set_backend`` / ``use_backend`` choose the kernels). With F the
layer's features (N x K x h x w) and G = dY[n, c]/dF[n] the gradient of the class score:

* ``"gradcam"``  (Selvaraju et al. 2017): A = ReLU(sum_k (mean_p G[k,p]) F[k])
  -- ``ops.channel_attention(F, G, positive=False)``, the map of Captum's ``LayerGradCam``;
* ``"hirescam"`` (Draelos & Carin 2020): A = ReLU(sum_k G[k] F[k]) -- K ``ops.pixel_attention``;
* ``"pixel"``    (Sharpen Focus Eq. 5): A = ReLU((1/K) sum_k G[k] F[k]) -- ``ops.pixel_attention``;
* ``"channel"``  (Sharpen Focus Eq. 3-4): A = ReLU(sum_k (mean_p ReLU(G[k,p])) F[k]).

Then each map is resized bilinearly (``align_corners=False``) to ``size`` (default: the input
images' H x W) and, when ``normalize``, divided by its own maximum with
``ops.normalize_attention``: A / (max(max_p A, 0) + eps), eps = 1e-6, so the peak is ~1 and an
all-zero map stays all-zero (docs/SPEC.md decisions 7, 12). Several target layers are combined as
the mean of their (resized, normalized) maps, normalized again.

Cost, for T target classes per image, one forward pass per batch and:

* **no backward at all** for a layer that global average pooling feeds into the linear head
  (``head``): there dY^c/dF[n,k,i,j] = W[c,k] / (H W) at every pixel, so every kind is
  ``ops.weighted_attention(F, w)`` with per-channel w from row c of W (gradcam and hirescam give
  the same map there; pixel divides by K; channel takes ReLU(W[c])). Whether a layer is so fed is
  checked on every call: logits must equal head(GAP(F)) (else autograd is used, or with a named
  ``head`` a ``ValueError`` is raised);
* **one backward call** (``torch.autograd.grad``) for all other layers together: T = 1 is a plain
  backward of sum_n Y[n, c_n]; for T > 1 it is ``is_grads_batched=True`` (``torch.vmap`` over T
  one-hot upstream gradients), which holds T gradients of every such layer in memory at once and
  runs the model's backward once, vectorized over T (roughly the time of T backwards on a CPU,
  less on a GPU). Where the vmap cannot run (some ``torch.compile``d graphs; ``batch_classes=
  "loop"``) it falls back to T backward calls, one per class rank t (sum_n Y[n, c_{n,t}]);
  ``grad_calls`` counts the calls of the last ``__call__``.

A class-score gradient is sample n's own only when samples do not interact after the layer: put
the model in eval mode (train-mode BatchNorm mixes the batch; :mod:`attnfast.capture`); CAM does
not change the mode. ``create_graph=True`` keeps the maps differentiable (w.r.t. the images and
the parameters; first-order for a ``torch.compile``d model: double backward is refused there).
Works under ``torch.autocast`` (the ops take the low-precision features; maps are float32) and
with channels_last features.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as nnf

from . import ops
from ._compat import compile_opaque, donated_buffer_disabled
from ._schema import ATTENTION_KINDS, positive_weights
from .capture import (Attached, LayerTap, find_head, head_mismatch, layer_map,
                      refuse_compiled_double_backward, resolve_layer)

__all__ = ["CAM", "CAMOutput", "CAM_KINDS", "save_overlay"]

# The kinds of map CAM draws: HiResCAM and the ops' attention kinds (_schema.ATTENTION_KINDS).
CAM_KINDS = ("hirescam", *ATTENTION_KINDS)


class CAMOutput(NamedTuple):
    """``maps``: N x T x H x W float32 (the target layers combined); ``classes``: N x T class
    indices the maps are of; ``logits``: N x C; ``layer_maps``: name -> N x T x H x W, each
    layer's maps resized (and normalized) the same way."""
    maps: torch.Tensor
    classes: torch.Tensor
    logits: torch.Tensor
    layer_maps: dict


class CAM(Attached):
    """Class activation maps of ``model`` at ``target_layers`` (a name or a list of
    ``model.named_modules()`` names); see the module docstring for the math and the cost.

    ``kind``: one of :data:`CAM_KINDS`. ``head``: "auto" (an ``nn.Linear`` named fc / head /
    classifier / linear, used analytically for the layers whose GAP feeds it), a name or module
    (required to be such a head for at least one layer), or None (autograd everywhere).
    ``size``: "input" (default), None (the layer's own h x w) or (H, W). ``normalize``: divide
    every map by its maximum. ``create_graph``: differentiable maps. ``batch_classes``: "vmap"
    (one batched backward, default) or "loop" (one backward per class rank).
    ``cam(images, targets=None, topk=1)`` -> :class:`CAMOutput`; ``cam.remove()`` (or ``with
    CAM(...) as cam:``) removes the hooks (:class:`attnfast.capture.Attached`). Every target
    layer's output must be an N x K x H x W feature map (checked at the first call). A model in
    train mode gets a warning (module docstring: the gradients then mix the batch).
    """

    def __init__(self, model, target_layers, kind="gradcam", *, head="auto", size="input",
                 normalize=True, create_graph=False, batch_classes="vmap"):
        if kind not in CAM_KINDS:
            raise ValueError(f"kind must be one of {CAM_KINDS}, got {kind!r}")
        if batch_classes not in ("vmap", "loop"):
            raise ValueError(f"batch_classes must be 'vmap' or 'loop', got {batch_classes!r}")
        self.layers = [target_layers] if isinstance(target_layers, str) else list(target_layers)
        if not self.layers:
            raise ValueError("target_layers must name at least one layer")
        for name in self.layers:
            resolve_layer(model, name)
        refuse_compiled_double_backward(model, "CAM", create_graph)
        self.model, self.kind, self.normalize = model, kind, bool(normalize)
        self.size = size if size in ("input", None) else tuple(int(s) for s in size)
        self.create_graph, self.batch_classes = bool(create_graph), batch_classes
        self.head, _, self._head_required = (find_head(model, self.layers[-1], head)
                                             or (None, None, False))
        self.grad_calls = 0
        self.analytic_layers: list = []
        self.vmap_error = None
        self._tap = LayerTap(model, self.layers, user="CAM")
        self._attach(self._tap)

    def __call__(self, images, targets=None, *, topk=None) -> CAMOutput:
        """Maps of ``targets`` (None: the ``topk`` (default 1) highest-scoring classes; an int:
        that class for every image; N indices; or N x T indices, several per image)."""
        self._require_attached()
        if targets is not None and topk is not None:
            raise ValueError("give targets or topk, not both")
        if _mixes_batch(self.model):
            warnings.warn("CAM of a model in train mode: BatchNorm then normalizes with the "
                          "batch's statistics, so each map mixes in the other images' gradients "
                          "(and dropout is on): call model.eval() first", stacklevel=2)
        with torch.set_grad_enabled(self.create_graph):   # maps record a graph only if asked
            return self._maps(images, *self._raw_maps(images, targets,
                                                      1 if topk is None else topk))

    def _maps(self, images, logits, classes, raw):
        size = tuple(images.shape[-2:]) if self.size == "input" else self.size
        layer_maps = {name: self._finish(m, size) for name, m in raw.items()}
        maps = next(iter(layer_maps.values()))
        if len(layer_maps) > 1:
            if len({tuple(m.shape) for m in layer_maps.values()}) > 1:
                raise ValueError("target layers of different map sizes need a size to combine "
                                 "them (size='input' or (H, W)), not size=None")
            maps = self._finish(torch.stack(list(layer_maps.values())).mean(0), None)
        if not self.create_graph:
            maps, logits = maps.detach(), logits.detach()
            layer_maps = {k: v.detach() for k, v in layer_maps.items()}
        return CAMOutput(maps, classes, logits, layer_maps)

    def _finish(self, maps, size):
        """N x T x h x w -> resized to ``size`` (bilinear) and, if asked, max-normalized."""
        if size is not None and tuple(maps.shape[-2:]) != tuple(size):
            maps = nnf.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        if self.normalize and maps.numel():
            n, t, h, w = maps.shape
            maps = ops.normalize_attention(maps.reshape(n * t, h, w)).reshape(n, t, h, w)
        return maps

    @compile_opaque  # autograd.grad w.r.t. hooked features: eager (model may be compiled)
    def _raw_maps(self, images, targets, topk):
        """(logits, classes N x T, {layer: raw float32 maps N x T x h x w})."""
        self.grad_calls = 0
        # no graph is needed when every layer was analytic last time (rerun if that changed)
        graph = self.create_graph or set(self.analytic_layers) != set(self.layers)
        with donated_buffer_disabled():
            with torch.set_grad_enabled(graph), self._tap.capture() as store:
                logits = self.model(images)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                raise ValueError("the model must return N x C logits, got "
                                 f"{getattr(logits, 'shape', type(logits).__name__)}")
            classes = _classes(targets, logits, topk)
            feats = {name: store[name] for name in self.layers}
            weights = self._analytic_weights(feats, logits, classes)
            rest = [name for name in self.layers if name not in weights]
            if rest and not graph:
                self.analytic_layers = list(weights)
                return self._raw_maps(images, targets, topk)
            grads = dict(zip(rest, self._grads(logits, classes, {n: feats[n] for n in rest})))
        self.analytic_layers = list(weights)
        raw = {name: self._layer_maps(feats[name], weights.get(name), grads.get(name),
                                      classes.shape[1]) for name in self.layers}
        return logits, classes, raw

    def _layer_maps(self, f, weights, grads, t):
        """N x T x h x w raw maps of one layer: from N x T x K analytic ``weights`` or from the
        T gradients ``grads``."""
        if weights is not None:
            per_class = [ops.weighted_attention(f, weights[:, i]) for i in range(t)]
        else:
            per_class = [self._map(f, g) for g in grads]
        return torch.stack(per_class, 1) if per_class else f.new_zeros(
            (f.shape[0], 0, *f.shape[-2:]), dtype=torch.float32)

    def _map(self, f, g):
        """One class's raw map of ``self.kind`` from features and their N x K x h x w gradient."""
        if self.kind == "hirescam":
            return ops.pixel_attention(f, g) * f.shape[1]  # ReLU(x) K = ReLU(K x), K > 0
        return layer_map(f, g, self.kind)

    def _analytic_weights(self, feats, logits, classes):
        """{layer: N x T x K per-channel weights} for the layers GAP feeds into the head."""
        if self.head is None:
            return {}
        w = self.head.weight
        out = {}
        for name, f in feats.items():
            if head_mismatch(f, self.head, logits) is not None:
                continue
            h, wd = f.shape[-2:]
            acc = torch.float64 if f.dtype == w.dtype == torch.float64 else torch.float32
            g = w[classes].to(acc) / (h * wd)  # N x T x K = dY^c / dF at every pixel; the ops'
            # accumulation dtype (docs/SPEC.md decision 16), so float64 models stay float64
            # HiResCAM's map at such a layer is Grad-CAM's: signed weights
            positive = False if self.kind == "hirescam" else positive_weights(self.kind)
            if positive is None:
                g = g / f.shape[1]  # pixel-wise: the mean over channels
            elif positive:
                g = g.clamp_min(0)
            out[name] = g if self.create_graph else g.detach()
        if self._head_required and not out:
            raise ValueError("head is not an nn.Linear fed by global average pooling of any "
                             f"target layer {self.layers} (logits != head(GAP(F))); pass "
                             "head=None to take the gradients by autograd")
        return out

    def _grads(self, logits, classes, feats):
        """For each of ``feats`` (name -> features): the T per-class gradients (a sequence of
        N x K x h x w)."""
        if not feats:
            return []
        for name, f in feats.items():
            if not f.requires_grad:
                raise ValueError(f"the output of {name!r} does not require grad (no parameter "
                                 "or input before it does): no class-score gradient can be "
                                 "taken there; unfreeze it or pass images that require grad")
        feats = list(feats.values())
        t = classes.shape[1]
        onehot = torch.zeros((t, *logits.shape), dtype=logits.dtype, device=logits.device)
        onehot.scatter_(2, classes.t()[:, :, None], 1.0)
        kw = dict(retain_graph=True, create_graph=self.create_graph)
        if t > 1 and self.batch_classes == "vmap":
            try:
                grads = torch.autograd.grad(logits, feats, onehot, is_grads_batched=True, **kw)
                self.grad_calls += 1
                return grads
            except (RuntimeError, NotImplementedError) as exc:
                # no batching rule on this graph (e.g. compiled): one call per class rank
                self.vmap_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        per_rank = []
        for i in range(t):
            self.grad_calls += 1
            per_rank.append(torch.autograd.grad(logits, feats, onehot[i], **kw))
        return [[per_rank[i][j] for i in range(t)] for j in range(len(feats))]


_BATCH_MIXERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.Dropout,
                 nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _mixes_batch(model) -> bool:
    """Whether a BatchNorm or dropout layer of ``model`` is in train mode."""
    return any(m.training and isinstance(m, _BATCH_MIXERS) for m in model.modules())


def _classes(targets, logits, topk):
    """N x T long class indices: given (int, N, or N x T) or the ``topk`` best-scoring."""
    n, c = logits.shape
    if targets is None:
        if not (isinstance(topk, int) and 1 <= topk <= c):
            raise ValueError(f"topk must be an int in 1..{c} (the model's classes), got {topk!r}")
        return logits.detach().float().topk(topk, dim=1).indices
    t = torch.as_tensor(targets, device=logits.device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"targets must be integer class indices, got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(n)
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2 or t.shape[0] != n:
        raise ValueError(f"targets must be an int, N = {n} indices or N x T indices, got shape "
                         f"{tuple(torch.as_tensor(targets).shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= c):
        raise ValueError(f"targets out of range: the model has {c} classes (0..{c - 1})")
    return t.long()


def save_overlay(path, images, result: CAMOutput, class_names=None, targets=None, title=None,
                 *, mean=None, std=None, denormalize=None):
    """A PNG of ``result``'s maps over ``images`` (N x C x H x W): one row per image, the image
    then its T maps, each titled with the class and its softmax probability; ``targets`` frames
    the true class in green. Images normalized for the model are shown as they were with
    ``mean`` / ``std`` (per channel) or a ``denormalize`` callable; values still outside [0, 1]
    are clipped with a warning (:func:`attnfast.viz.save_overlay`)."""
    from .viz import save_overlay as draw
    probs = torch.softmax(result.logits.detach().float(), 1).gather(1, result.classes)
    names = class_names or [str(c) for c in range(result.logits.shape[1])]
    return draw(path, images, result.classes, probs, result.maps, class_names=names,
                targets=targets, title=title, mean=mean, std=std, denormalize=denormalize)
