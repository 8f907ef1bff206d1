"""Sharpen Focus (Wang et al. 2019) around any model whose layers are named.

Eq. 9:
    loss = CE(Y, t) + weight * mean_n [w_i sIoU_inner + w_l sIoU_last + w_c L_ac]
(``part_weights`` = (w_i, w_l, w_c), all 1 in the paper; the fused op returns the per-sample
parts, so weighting them is plain autograd through its outputs) with maps of the target t and of
the confuser (highest-scoring non-target class of the detached logits; multi-label: the top
negative) at ``inner_layer`` and ``last_layer``. With
``second_order`` the gradients stay in the graph (``create_graph=True``) so the loss also
differentiates through them; first-order mode treats them as constants. When ``head`` is the
``nn.Linear`` fed by global average pooling of ``last_layer``, dY^c/dF[n,k,i,j] = W[c,k] / (H W)
at every pixel, so the last-layer gradients are these N x K weights (no autograd pass).
Features and class-score gradients are taken as :mod:`attnfast.capture` describes.

``mask``: "normalized" (default, docs/SPEC.md decision 1) builds the soft mask of Eq. 7 from the
max-normalized last-layer target map, inside the fused ``ops.sharpen_focus_loss``; "raw" is the
paper's literal formula on the raw map, M = sigmoid(omega (R(A_last_t) - sigma)) with R the
bilinear resize (``align_corners=False``) to each layer's size and no normalization, built in
eager code and used with the public ``ops.soft_iou`` / ``ops.attention_consistency`` (an
ablation: raw maps are small, so with sigma = 0.55 that mask is nearly 0 everywhere).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as nnf

from . import ops
from ._args import flag, real
from ._compat import compile_opaque, donated_buffer_disabled
from .capture import (LayerTap, SupervisedWrapper, check_attention, check_targets,
                      classification_loss, confusers, detach_step, find_head, head_mismatch,
                      layer_map, refuse_compiled_double_backward, score_grads)

__all__ = ["SharpenFocus", "SharpenFocusStep"]


class SharpenFocusStep(NamedTuple):
    """One Sharpen Focus training step. ``parts`` is the op's SharpenFocusOutput
    (loss, inner_iou, last_iou, consistency); ``confusers``: N class indices."""
    logits: torch.Tensor
    loss: torch.Tensor
    classification_loss: torch.Tensor
    attention_loss: torch.Tensor
    parts: Any
    confusers: torch.Tensor


class _Grads(NamedTuple):
    logits: torch.Tensor
    targets: torch.Tensor
    confusers: torch.Tensor
    inner: torch.Tensor
    last: torch.Tensor
    inner_target: torch.Tensor
    inner_confuser: torch.Tensor
    last_target: torch.Tensor      # N x K x H x W, or N x K (analytic head)
    last_confuser: torch.Tensor


class SharpenFocus(SupervisedWrapper):
    """Sharpen Focus around ``model`` (see the module docstring for the math).

    ``head``: "auto" (default) uses the analytic last-layer gradients when a ``nn.Linear`` named
    fc/head/classifier/linear turns out, on the first call in each mode, to be fed by GAP of
    ``last_layer`` and to give the logits, else autograd; a name or module demands it (a head that
    fails the check raises ``ValueError``); ``None`` always uses autograd.
    ``sf(images, targets)`` -> :class:`SharpenFocusStep`; ``sf(images)`` -> logits.
    Called with gradients disabled, the step is first-order and its tensors detached.
    ``per_sample_grads``: in train mode, exact per-sample gradients (BatchNorm statistics held
    fixed in the class-score gradient pass; :mod:`attnfast.capture` says what is captured).

    ``weight`` defaults to 0.1, not the paper's 1 (Eq. 9): on the README's located-digits task
    weight 1 cost 25 points of top-1 and halved the target map's energy on the object, while
    0.1 (chosen on the validation split, docs/METHOD.md) trains at parity; pass ``weight=1.0``
    for Eq. 9 as written.

    The wrapper hooks ``inner_layer`` and ``last_layer`` (their outputs must be N x K x H x W
    feature maps, checked at the first call); ``sf.remove()`` or ``with SharpenFocus(...) as
    sf:`` takes the hooks off (:class:`attnfast.capture.Attached`).
    """

    def __init__(self, model, inner_layer="layer3", last_layer="layer4", *, head="auto",
                 attention="pixel", second_order=True, multilabel=False, weight=0.1, sigma=0.55,
                 omega=100.0, alpha=1.0, normalize=True, mask_grad=False,
                 part_weights=(1.0, 1.0, 1.0), mask="normalized", per_sample_grads=False):
        super().__init__()
        check_attention(attention)
        sigma, omega, alpha = (real(sigma, "sigma", lo=0.0, hi=1.0),
                               real(omega, "omega", positive=True), real(alpha, "alpha"))
        weight = real(weight, "weight", lo=0.0)
        for name, value in (("second_order", second_order), ("multilabel", multilabel),
                            ("normalize", normalize), ("mask_grad", mask_grad),
                            ("per_sample_grads", per_sample_grads)):
            flag(value, name)
        self.part_weights, self.mask = _check_knobs(part_weights, mask)
        refuse_compiled_double_backward(model, "SharpenFocus", second_order)
        self.model = model
        self.inner_layer, self.last_layer = inner_layer, last_layer
        self.attention, self.second_order, self.multilabel = attention, second_order, multilabel
        self.weight = weight
        self.loss_options = dict(attention=attention, sigma=sigma, omega=omega, alpha=alpha,
                                 normalize=normalize, mask_grad=mask_grad)
        self._head, self._head_name, self._head_required = (
            find_head(model, last_layer, head) or (None, None, False))
        self._head_checked: set = set()
        self.head_status = "autograd (no head)" if self._head is None else "unchecked"
        self._tap = LayerTap(model, (inner_layer, last_layer), per_sample=per_sample_grads,
                             user="SharpenFocus")
        self._attach(self._tap)

    @property
    def analytic_head(self) -> bool:
        """Whether the last-layer gradients are the analytic W[c] / (H W) weights."""
        return self._head is not None

    def _check_head(self, last, logits):
        """Refuse (or, for head="auto", stop using) a head not fed by GAP of ``last_layer``
        (:func:`attnfast.capture.head_mismatch`)."""
        if last.shape[0] == 0:
            return
        reason = head_mismatch(last, self._head, logits)
        if reason is None:
            self._head_checked.add(self.training)
            self.head_status = f"analytic ({self._head_name})"
            return
        if self._head_required:
            raise ValueError(f"head {self._head_name!r} is not the linear layer fed by global "
                             f"average pooling of {self.last_layer!r}: {reason}; pass head=None "
                             "to take the last-layer gradients by autograd")
        self._head, self.head_status = None, f"autograd ({self._head_name} refused: {reason})"

    def _analytic_grads(self, classes, last):
        """dY^c/dF_last = W[c] / (H W) (multi-hot: sum of the positive rows), N x K."""
        w = self._head.weight
        with torch.autocast(last.device.type, enabled=False):
            g = w[classes] if classes.dim() == 1 else classes.to(w.dtype) @ w
        return (g / (last.shape[2] * last.shape[3])).to(last.dtype)

    @compile_opaque  # autograd.grad w.r.t. hooked features: eager (model may be compiled)
    def _gradients(self, images, targets, create_graph) -> _Grads:
        with donated_buffer_disabled():
            with self._tap.capture() as store:
                logits = self.model(images)
            inner, last = store[self.inner_layer], store[self.last_layer]
            targets = check_targets(targets, logits, self.multilabel)
            if self._head is not None and self.training not in self._head_checked:
                self._check_head(last, logits)
            others = confusers(logits, targets)
            grads = []
            for classes in (targets, others):
                if self._head is None:
                    grads.append(score_grads(logits, classes, (inner, last), create_graph))
                else:
                    g_inner, = score_grads(logits, classes, (inner,), create_graph)
                    g_last = self._analytic_grads(classes, last)
                    grads.append((g_inner, g_last if create_graph else g_last.detach()))
        (it, lt), (ic, lc) = grads
        return _Grads(logits, targets, others, inner, last, it, ic, lt, lc)

    def _step(self, images, targets, keep_graph):
        return self._loss(self._gradients(images, targets, self.second_order and keep_graph))

    def _loss(self, g):
        if self.mask == "raw":
            parts = _raw_mask_parts(self._maps(g), **self.loss_options)
        else:
            parts = ops.sharpen_focus_loss(
                g.inner, g.inner_target, g.inner_confuser, g.last, g.last_target,
                g.last_confuser, **self.loss_options)
        wi, wl, wc = self.part_weights
        attention = (parts[0] if (wi, wl, wc) == (1.0, 1.0, 1.0)
                     else (wi * parts[1] + wl * parts[2] + wc * parts[3]).mean())
        cls = classification_loss(g.logits, g.targets, self.multilabel)
        loss = cls + self.weight * attention
        return SharpenFocusStep(g.logits, loss, cls, attention, parts, g.confusers)

    def _maps(self, g):
        pairs = {"inner_target": (g.inner, g.inner_target),
                 "inner_confuser": (g.inner, g.inner_confuser),
                 "last_target": (g.last, g.last_target),
                 "last_confuser": (g.last, g.last_confuser)}
        return {k: layer_map(f, gr, self.attention) for k, (f, gr) in pairs.items()}

    def attention_maps(self, images, targets):
        """The four raw maps the loss is built from (float32 N x h x w, detached):
        inner_target, inner_confuser, last_target, last_confuser."""
        return self.measure(images, targets)[1]

    def measure(self, images, targets):
        """(step, maps) from one forward and one set of first-order gradients, detached: the
        :class:`SharpenFocusStep` and the four raw maps of :meth:`attention_maps`."""
        with torch.enable_grad():
            g = self._gradients(images, targets, False)
            step, maps = self._loss(g), self._maps(g)
        return detach_step(step), {k: m.detach() for k, m in maps.items()}


def _check_knobs(part_weights, mask):
    weights = tuple(float(w) for w in part_weights)
    if len(weights) != 3 or any(w < 0 for w in weights):
        raise ValueError("part_weights must be three non-negative weights (sIoU_inner, "
                         f"sIoU_last, L_ac), got {part_weights!r}")
    if mask not in ("normalized", "raw"):
        raise ValueError(f"mask must be 'normalized' or 'raw', got {mask!r}")
    return weights, mask


def _raw_mask_parts(maps, *, attention, sigma, omega, alpha, normalize, mask_grad):
    """The three parts with the paper's literal mask sigmoid(omega (R(A_last_t) - sigma)) on the
    raw last-layer target map (module docstring), as a SharpenFocusOutput (loss = mean of sum)."""
    a_lt = maps["last_target"]
    src = a_lt if mask_grad else a_lt.detach()  # the maps' dtype (decision 16: no mixing)
    size = maps["inner_target"].shape[-2:]
    up = src if tuple(size) == tuple(src.shape[-2:]) else nnf.interpolate(
        src[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    m_last, m_inner = torch.sigmoid(omega * (src - sigma)), torch.sigmoid(omega * (up - sigma))
    a = {k: ops.normalize_attention(v) if normalize else v for k, v in maps.items()}
    inner = ops.soft_iou(a["inner_target"], a["inner_confuser"], m_inner)
    last = ops.soft_iou(a["last_target"], a["last_confuser"], m_last)
    cons = ops.attention_consistency(a["inner_target"], m_inner, alpha)
    return ops.SharpenFocusOutput((inner + last + cons).mean(), inner, last, cons)
