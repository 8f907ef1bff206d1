"""Training wrappers: Sharpen Focus and GGAM around any model whose layers are named.

Features are captured with forward hooks on named layers (``model.named_modules()`` names);
class-score gradients are taken with ``torch.autograd.grad`` w.r.t. those features only, so no
parameter ``.grad`` is ever touched. The class score of a batch is S = sum_n Y[n, c_n] (single
label) or S = sum_n sum_c T[n, c] Y[n, c] (multi-hot T), and dS/dF is taken with an upstream
gradient of ones (SPEC decision 9): dS/dF[n] = dY[n, c_n]/dF[n] exactly, never scaled by the
batch's summed logit.

Sharpen Focus (Wang et al. 2019, Eq. 9):
    loss = CE(Y, t) + weight * mean_n [sIoU_inner + sIoU_last + L_ac]
with maps of the target t and of the confuser (highest-scoring non-target class of the detached
logits; multi-label: the top negative) at ``inner_layer`` and ``last_layer``. With
``second_order`` the gradients stay in the graph (``create_graph=True``) so the loss also
differentiates through them; first-order mode treats them as constants. When ``head`` is the
``nn.Linear`` fed by global average pooling of ``last_layer``, dY^c/dF[n,k,i,j] = W[c,k] / (H W)
at every pixel, so the last-layer gradients are these N x K weights (no autograd pass).

GGAM (Xu et al. 2021): after ``layer`` an SE channel attention S = sigmoid(W2 ReLU(W1 GAP(A)))
and the channel-spatial op give D = A * T (SPEC), passed on as (H W) * D (T sums to 1 over
the pixels; see ChannelSpatialAttention); the loss adds
``weight * mean_n ggam_loss(S, beta)``, beta = Grad-CAM channel weights (mean_ij dY^c/dA) of the
predicted (or labelled) class w.r.t. the module input A, detached.
"""
from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as nnf

from . import ops

__all__ = ["SharpenFocus", "SharpenFocusStep", "GGAM", "GGAMStep", "Baseline", "BaselineStep",
           "ChannelSpatialAttention", "class_attention_maps", "resolve_layer"]

_HEAD_CANDIDATES = ("fc", "head", "head.fc", "classifier", "linear")


class SharpenFocusStep(NamedTuple):
    """One Sharpen Focus training step. ``parts`` is the op's SharpenFocusOutput
    (loss, inner_iou, last_iou, consistency); ``confusers``: N class indices."""
    logits: torch.Tensor
    loss: torch.Tensor
    classification_loss: torch.Tensor
    attention_loss: torch.Tensor
    parts: Any
    confusers: torch.Tensor


class BaselineStep(NamedTuple):
    """Plain classification step (``attention_loss`` is 0), the same fields a trainer logs."""
    logits: torch.Tensor
    loss: torch.Tensor
    classification_loss: torch.Tensor
    attention_loss: torch.Tensor


class GGAMStep(NamedTuple):
    """One GGAM training step: S (N x C), T (N x H x W), beta (N x C, detached) and the classes
    whose Grad-CAM gave beta (N indices, or N x C multi-hot)."""
    logits: torch.Tensor
    loss: torch.Tensor
    classification_loss: torch.Tensor
    attention_loss: torch.Tensor
    channel_weights: torch.Tensor
    spatial: torch.Tensor
    gradcam_weights: torch.Tensor
    classes: torch.Tensor


# ----------------------------------------------------------------------------- layers and hooks

def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel/DataParallel (``.module``) and
    ``torch.compile`` (``._orig_mod``) wrappers, whose names the layer arguments use."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` in ``model.named_modules()``; a clear error listing the
    available names (up to two levels deep) otherwise."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"layer names must be non-empty strings, got {name!r}")
    modules = dict(_unwrap(model).named_modules())
    if name in modules:
        return modules[name]
    shown = [n for n in modules if n and n.count(".") <= 1]
    raise ValueError(f"model {type(_unwrap(model)).__name__} has no layer named {name!r}; "
                     f"available: {', '.join(shown)}")


def _compiled(model: nn.Module) -> bool:
    """Whether ``model`` or a submodule runs through ``torch.compile``."""
    return any(getattr(m, "_compiled_call_impl", None) is not None
               or isinstance(getattr(m, "_orig_mod", None), nn.Module) for m in model.modules())


def _allow_compiled(model, wrapper, double_backward):
    """Let ``model`` run through ``torch.compile``: the wrappers backpropagate through its graph
    more than once (``retain_graph=True``), which AOTAutograd's donated buffers forbid, so they
    are switched off process-wide (they only save memory); set before the lazy first
    compilation. Double backward through a compiled graph is not supported by PyTorch at all."""
    import torch._functorch.config as functorch_config
    functorch_config.donated_buffer = False
    if double_backward and _compiled(model):
        raise ValueError(f"{wrapper} with second_order=True differentiates through the model's "
                         "backward (double backward), which torch.compile'd models do not "
                         "support; pass second_order=False, or do not compile the model")


class _Tap:
    """Forward hooks that keep the latest output (and for ``io`` layers the first input too) of
    named layers while capturing. The hooks are opaque to ``torch.compile`` so a compiled model
    splits its graph at each captured tensor, which keeps dY/dF computable by autograd."""

    def __init__(self, model, names=(), io=()):
        self.store: dict = {}
        self.active = False
        self.handles = [resolve_layer(model, n).register_forward_hook(self._hook(n, n in io))
                        for n in dict.fromkeys((*names, *io))]

    def _hook(self, name, with_input):
        @torch.compiler.disable
        def hook(module, args, output):
            if self.active:
                self.store[name] = (args[0], output) if with_input else output
        return hook

    @contextlib.contextmanager
    def capture(self):
        self.store.clear()
        self.active = True
        try:
            yield self.store
        finally:
            self.active = False

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


# ----------------------------------------------------------------------------- targets and scores

def _check_targets(targets, logits, multilabel):
    """Validate single-label (N class indices in [0, C)) or multi-label (N x C of 0/1) targets."""
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a tensor, got {type(targets).__name__}")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return an N x C logits tensor, got {got}")
    n, c = logits.shape
    if c < 2:
        raise ValueError(f"a confuser class needs at least 2 classes, the model has {c}")
    if multilabel:
        if tuple(targets.shape) != (n, c):
            raise ValueError(f"multi-label targets must be N x C = {n} x {c} multi-hot, got shape "
                             f"{tuple(targets.shape)}")
        if targets.numel() and not ((targets == 0) | (targets == 1)).all():
            raise ValueError("multi-label targets must contain only 0 and 1")
        return targets.to(logits.device, torch.float32)
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer class indices (multi-hot targets need "
                        f"multilabel=True), got dtype {targets.dtype}")
    if tuple(targets.shape) != (n,):
        raise ValueError(f"targets must have shape (N,) = ({n},) with one class index per image, "
                         f"got shape {tuple(targets.shape)}")
    if n:
        lo, hi = torch.aminmax(targets)
        if lo < 0 or hi >= c:
            raise ValueError(f"labels out of range: the model has {c} classes (0..{c - 1}), "
                             f"targets span {int(lo)}..{int(hi)}")
    return targets.to(logits.device, torch.long)


def _classification_loss(logits, targets, multilabel):
    """Cross-entropy, or MultiLabelSoftMarginLoss for multi-hot targets (float32; float64 for
    float64 logits)."""
    if logits.dtype != torch.float64:
        logits = logits.float()
    if multilabel:
        return nnf.multilabel_soft_margin_loss(logits, targets.to(logits.dtype))
    return nnf.cross_entropy(logits, targets)


def _class_scores(logits, classes):
    """s[n] = Y[n, c_n] for N indices, or sum_c T[n, c] Y[n, c] for an N x C multi-hot T."""
    if classes.dim() == 1:
        return logits.gather(1, classes[:, None])[:, 0]
    return (logits * classes.to(logits.dtype)).sum(1)


def _confusers(logits, targets):
    """argmax over classes other than the target(s) of the detached logits (N indices)."""
    y = logits.detach().float()
    positive = targets > 0.5 if targets.dim() == 2 else nnf.one_hot(targets, y.shape[1]).bool()
    return y.masked_fill(positive, float("-inf")).argmax(1)


def _score_grads(logits, classes, features, create_graph):
    """d(sum_n s_n)/dF for each F in ``features``, with an upstream gradient of ones."""
    scores = _class_scores(logits, classes)
    return torch.autograd.grad(scores, features, grad_outputs=torch.ones_like(scores),
                               retain_graph=True, create_graph=create_graph)


def _layer_map(features, grads, kind):
    """Raw map of one class at one layer: pixel (Eq. 5), channel (Eq. 3-4) or Grad-CAM."""
    if grads.dim() == 2:
        grads = grads[:, :, None, None].expand(-1, -1, *features.shape[-2:])
    if kind == "pixel":
        return ops.pixel_attention(features, grads)
    return ops.channel_attention(features, grads, positive=(kind == "channel"))


def class_attention_maps(model, layer, images, classes, attention="pixel"):
    """Maps of several classes per image at ``layer`` of any model (e.g. a baseline).

    ``classes``: N x M class indices. Returns (logits, maps N x M x h x w float32), detached.
    """
    if attention not in ("pixel", "channel", "gradcam"):
        raise ValueError(f"attention must be 'pixel', 'channel' or 'gradcam', got {attention!r}")
    tap = _Tap(model, [layer])
    try:
        with torch.enable_grad(), tap.capture() as store:
            logits = model(images)
            feats = store[layer]
            maps = [_layer_map(feats, _score_grads(logits, classes[:, m], [feats], False)[0],
                               attention) for m in range(classes.shape[1])]
    finally:
        tap.remove()
    return logits.detach(), torch.stack(maps, 1).detach()


# ----------------------------------------------------------------------------- baseline

class Baseline(nn.Module):
    """loss = cross-entropy (or MultiLabelSoftMarginLoss), with the wrappers' call convention:
    ``b(images, targets)`` -> :class:`BaselineStep`, ``b(images)`` -> logits."""

    def __init__(self, model, *, multilabel=False):
        super().__init__()
        self.model, self.multilabel = model, multilabel

    def forward(self, images, targets=None):
        logits = self.model(images)
        if targets is None:
            return logits
        targets = _check_targets(targets, logits, self.multilabel)
        cls = _classification_loss(logits, targets, self.multilabel)
        return BaselineStep(logits, cls, cls, torch.zeros_like(cls))


# ----------------------------------------------------------------------------- Sharpen Focus

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


class SharpenFocus(nn.Module):
    """Sharpen Focus around ``model`` (see the module docstring for the math).

    ``head``: "auto" (default) uses the analytic last-layer gradients when a ``nn.Linear`` named
    fc/head/classifier/linear turns out, on the first call in each mode, to be fed by GAP of
    ``last_layer`` and to give the logits, else autograd; a name or module demands it (a head that
    fails the check raises ``ValueError``); ``None`` always uses autograd.
    ``sf(images, targets)`` -> :class:`SharpenFocusStep`; ``sf(images)`` -> logits.
    Called with gradients disabled, the step is first-order and its tensors detached.
    """

    def __init__(self, model, inner_layer="layer3", last_layer="layer4", *, head="auto",
                 attention="pixel", second_order=True, multilabel=False, weight=1.0, sigma=0.55,
                 omega=100.0, alpha=1.0, normalize=True, mask_grad=False):
        super().__init__()
        if attention not in ("pixel", "channel", "gradcam"):
            raise ValueError(f"attention must be 'pixel', 'channel' or 'gradcam', "
                             f"got {attention!r}")
        _allow_compiled(model, "SharpenFocus", second_order)
        self.model = model
        self.inner_layer, self.last_layer = inner_layer, last_layer
        self.attention, self.second_order, self.multilabel = attention, second_order, multilabel
        self.weight = weight
        self.loss_options = dict(attention=attention, sigma=sigma, omega=omega, alpha=alpha,
                                 normalize=normalize, mask_grad=mask_grad)
        self._head, self._head_name, self._head_required = self._find_head(head)
        io = (self._head_name,) if self._head is not None else ()
        self._tap = _Tap(model, (inner_layer, last_layer), io)
        self._head_checked: set = set()
        self.head_status = "autograd (no head)" if self._head is None else "unchecked"

    def _find_head(self, head):
        if head is None:
            return None, None, False
        root = _unwrap(self.model)
        if head == "auto":
            modules = dict(root.named_modules())
            for name in _HEAD_CANDIDATES:
                if isinstance(modules.get(name), nn.Linear):
                    return modules[name], name, False
            return None, None, False
        if isinstance(head, nn.Module):
            names = [n for n, m in root.named_modules() if m is head]
            if not names:
                raise ValueError("head module is not a submodule of the model")
            head = names[0]
        module = resolve_layer(self.model, head)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"head {head!r} must be an nn.Linear fed by global average pooling of "
                             f"{self.last_layer!r}, got {type(module).__name__}; pass head=None")
        return module, head, True

    @property
    def analytic_head(self) -> bool:
        """Whether the last-layer gradients are the analytic W[c] / (H W) weights."""
        return self._head is not None

    def _check_head(self, last, head_io, logits):
        """Refuse (or, for head="auto", stop using) a head not fed by GAP of ``last_layer``."""
        x, y = head_io
        n, k = last.shape[:2]
        if n == 0:
            return
        reason = None
        if self._head.in_features != k:
            reason = (f"it takes {self._head.in_features} features but {self.last_layer!r} has "
                      f"{k} channels")
        else:
            gap = last.detach().float().mean(dim=(2, 3))
            xf = x.detach().float().reshape(gap.shape) if x.numel() == gap.numel() else None
            if xf is None or (xf - gap).abs().max() > 1e-2 * gap.abs().max() + 1e-5:
                reason = (f"its input is not the global average pool of {self.last_layer!r} "
                          "(something other than GAP lies between them)")
            elif y.shape != logits.shape or not torch.equal(y.detach(), logits.detach()):
                reason = "its output is not the model's logits (the model changes them after it)"
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

    @torch.compiler.disable  # autograd.grad w.r.t. hooked features: eager (model may be compiled)
    def _gradients(self, images, targets, create_graph) -> _Grads:
        with self._tap.capture() as store:
            logits = self.model(images)
        inner, last = store[self.inner_layer], store[self.last_layer]
        targets = _check_targets(targets, logits, self.multilabel)
        if self._head is not None and self.training not in self._head_checked:
            self._check_head(last, store[self._head_name], logits)
        confusers = _confusers(logits, targets)
        grads = []
        for classes in (targets, confusers):
            if self._head is None:
                grads.append(_score_grads(logits, classes, (inner, last), create_graph))
            else:
                g_inner, = _score_grads(logits, classes, (inner,), create_graph)
                g_last = self._analytic_grads(classes, last)
                grads.append((g_inner, g_last if create_graph else g_last.detach()))
        (it, lt), (ic, lc) = grads
        return _Grads(logits, targets, confusers, inner, last, it, ic, lt, lc)

    def forward(self, images, targets=None):
        if targets is None:
            return self.model(images)
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            g = self._gradients(images, targets, self.second_order and keep_graph)
            parts = ops.sharpen_focus_loss(
                g.inner, g.inner_target, g.inner_confuser, g.last, g.last_target,
                g.last_confuser, **self.loss_options)
            cls = _classification_loss(g.logits, g.targets, self.multilabel)
            loss = cls + self.weight * parts[0]
        step = SharpenFocusStep(g.logits, loss, cls, parts[0], parts, g.confusers)
        return step if keep_graph else _detach(step)

    def attention_maps(self, images, targets):
        """The four raw maps the loss is built from (float32 N x h x w, detached):
        inner_target, inner_confuser, last_target, last_confuser."""
        with torch.enable_grad():
            g = self._gradients(images, targets, False)
            maps = {"inner_target": (g.inner, g.inner_target),
                    "inner_confuser": (g.inner, g.inner_confuser),
                    "last_target": (g.last, g.last_target),
                    "last_confuser": (g.last, g.last_confuser)}
            return {k: _layer_map(f, gr, self.attention).detach()
                    for k, (f, gr) in maps.items()}


def _detach(step):
    """The step with every tensor (also inside tuples) detached."""
    def d(x):
        if isinstance(x, torch.Tensor):
            return x.detach()
        if isinstance(x, tuple):
            return type(x)(*map(d, x)) if hasattr(x, "_fields") else tuple(map(d, x))
        return x
    return d(step)


# ----------------------------------------------------------------------------- GGAM

class ChannelSpatialAttention(nn.Module):
    """S = sigmoid(W2 ReLU(W1 GAP(A) + b1) + b2) (SE, hidden = C / reduction), then
    (D, T) = channel_spatial_attention(A, S): D = A * T, T = sum_c A S / sum_{c,i,j} A S.

    The module outputs (H W) * D: T sums to 1 over the H x W pixels, so D alone is the features
    shrunk by about H W (1/64 on an 8 x 8 map), which starves a GAP + linear head that follows
    (on digits a ResNet-20 stays at chance); the constant H W makes a uniform T the identity.
    """

    def __init__(self, channels, reduction=16):
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be >= 1, got {channels}, {reduction}")
        hidden = max(channels // reduction, 1)
        self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)

    def forward(self, a):
        """Returns ((H W) * D, S, T)."""
        if a.dim() != 4 or a.shape[1] != self.fc1.in_features:
            raise ValueError(f"GGAM attention expects N x {self.fc1.in_features} x H x W features, "
                             f"got shape {tuple(a.shape)} (check `channels`)")
        acc = torch.float64 if a.dtype == torch.float64 else torch.float32
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(a.mean(dim=(2, 3)))))).to(acc)
        d, t = ops.channel_spatial_attention(a, s)
        return d * (a.shape[2] * a.shape[3]), s, t


class GGAM(nn.Module):
    """GGAM around ``model``: the channel-spatial module rescales the output of ``layer``.

    ``ggam(images, targets)`` -> :class:`GGAMStep` with
    loss = classification + weight * mean_n ggam_loss(S, beta.detach()), beta the Grad-CAM channel
    weights w.r.t. the module input of the predicted class (``target="predicted"``, the paper) or
    of the label (``"label"``; multi-label: the positives / the classes with logit > 0).
    ``ggam(images)`` -> logits (the module applied).
    """

    def __init__(self, model, layer="layer4", *, channels, reduction=16, weight=1.0,
                 target="predicted", multilabel=False):
        super().__init__()
        if target not in ("predicted", "label"):
            raise ValueError(f"target must be 'predicted' or 'label', got {target!r}")
        _allow_compiled(model, "GGAM", False)
        self.model, self.layer = model, layer
        self.attention = ChannelSpatialAttention(channels, reduction)
        self.weight, self.target, self.multilabel = weight, target, multilabel
        self._capture, self._store = False, {}
        self._handle = resolve_layer(model, layer).register_forward_hook(self._attend)

    @torch.compiler.disable
    def _attend(self, module, args, output):
        d, s, t = self.attention(output)
        if self._capture:
            self._store.update(a=output, s=s, t=t)
        return d

    def forward(self, images, targets=None):
        if targets is None:
            return self.model(images)
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            logits, targets, classes, s, t, beta = self._forward_gradcam(images, targets)
            attn = ops.ggam_loss(s, beta).mean()
            cls = _classification_loss(logits, targets, self.multilabel)
            loss = cls + self.weight * attn
        step = GGAMStep(logits, loss, cls, attn, s, t, beta, classes)
        return step if keep_graph else _detach(step)

    @torch.compiler.disable  # autograd.grad w.r.t. the hooked input: eager (model may be compiled)
    def _forward_gradcam(self, images, targets):
        """Logits, checked targets, the Grad-CAM classes, S, T and beta (detached)."""
        self._capture = True
        try:
            logits = self.model(images)
        finally:
            self._capture = False
        a, s, t = (self._store.pop(k) for k in ("a", "s", "t"))
        targets = _check_targets(targets, logits, self.multilabel)
        classes = targets if self.target == "label" else self._predicted(logits)
        g, = _score_grads(logits, classes, (a,), False)
        beta = ops.channel_weights(g, positive=False).detach()
        return logits, targets, classes, s, t, beta

    def _predicted(self, logits):
        y = logits.detach()
        return (y > 0).float() if self.multilabel else y.argmax(1)
