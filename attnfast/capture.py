"""What the training wrappers share: features of named layers, targets, class scores and their
gradients, the classification loss, and the exact per-sample mode of BatchNorm.

Features are captured with forward hooks on named layers (``model.named_modules()`` names);
class-score gradients are taken with ``torch.autograd.grad`` w.r.t. those features only, so no
parameter ``.grad`` is ever touched. The class score of a batch is S = sum_n Y[n, c_n] (single
label) or S = sum_n sum_c T[n, c] Y[n, c] (multi-hot T), and G = dS/dF is taken with an upstream
gradient of ones (docs/SPEC.md decision 9), never scaled by the batch's summed logit.

What G[n] is depends on whether samples interact after F:

* eval mode (and any model whose layers after F act on each sample alone): G[n] = dY[n, c_n]/dF[n]
  exactly, sample n's own class-score gradient.
* train mode with BatchNorm after F (``per_sample_grads=False``, the default): each such layer
  normalizes with the batch's mean and variance, which depend on every sample, so
  G[n] = dS/dF[n] = dY[n, c_n]/dF[n] + sum_{m != n} dY[m, c_m]/dF[n], all derivatives taken
  through the batch statistics: besides sample n's own term (which includes n's 1/N share of the
  statistics) G[n] holds the other samples' class scores' dependence on F[n]. (At the inner layer
  of a ResNet-20 on digits, batch 64, this G is tens of percent away from the per-sample one:
  docs/GGAM_AND_CAPTURE.md.)
* ``per_sample_grads=True`` (:class:`FixedBatchStatistics`): in the class-score gradient pass every
  BatchNorm layer that normalizes with batch statistics treats its mean and variance as constants,
  so G[n] = dY[n, c_n]/dF[n] at fixed statistics, exactly the gradient that sample n alone gets
  from the model in eval mode with this batch's statistics as running statistics. Forward values,
  running statistics and the classification loss's gradients are those of the default mode; a
  second-order step still differentiates G through the statistics' values.

A model may run through ``torch.compile``: the hooks are opaque to the compiler (the graph splits
at each captured tensor), and every forward and backward the wrappers take through the model runs
under :func:`attnfast._compat.donated_buffer_disabled`.
"""
from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as nnf

from . import ops
from ._batchnorm import FixedBatchStatistics
from ._batchnorm import score_gradient_pass as _score_gradient_pass
from ._compat import compile_opaque, donated_buffer_disabled
from ._schema import positive_weights

__all__ = ["class_attention_maps", "resolve_layer", "FixedBatchStatistics", "Attached",
           "find_head", "head_mismatch"]

# Names under which a model's nn.Linear classifier fed by global average pooling is looked for
# (the analytic last-layer gradient W[c] / (H W) of SharpenFocus and CAM).
HEAD_NAMES = ("fc", "head", "head.fc", "classifier", "linear")


# ----------------------------------------------------------------------------- layers and hooks

def unwrap(model: nn.Module) -> nn.Module:
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
    modules = dict(unwrap(model).named_modules())
    if name in modules:
        return modules[name]
    shown = [n for n in modules if n and n.count(".") <= 1]
    raise ValueError(f"model {type(unwrap(model)).__name__} has no layer named {name!r}; "
                     f"available: {', '.join(shown)}")


def _compiled(model: nn.Module) -> bool:
    """Whether ``model`` or a submodule runs through ``torch.compile``."""
    return any(getattr(m, "_compiled_call_impl", None) is not None
               or isinstance(getattr(m, "_orig_mod", None), nn.Module) for m in model.modules())


def refuse_compiled_double_backward(model, wrapper, double_backward):
    """Double backward through a compiled graph is not supported by PyTorch at all: refuse it
    up front with the way out."""
    if double_backward and _compiled(model):
        raise ValueError(f"{wrapper} with second_order=True differentiates through the model's "
                         "backward (double backward), which torch.compile'd models do not "
                         "support; pass second_order=False, or do not compile the model")


def check_attention(attention):
    """A ValueError unless ``attention`` names a kind of ``_schema.ATTENTION_KINDS``."""
    positive_weights(attention)


def describe(value) -> str:
    """What a layer gave, for error messages: "a tensor of shape (4, 10)", "a tuple of 2"."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def check_feature_map(name, module, output, user):
    """Refuse a layer whose output is not an N x K x H x W feature map, naming the layer, what
    it gave and what ``user`` (the wrapper) needs there."""
    if isinstance(output, torch.Tensor) and output.dim() == 4:
        return output
    raise ValueError(f"{user}: layer {name!r} ({type(module).__name__}) outputs "
                     f"{describe(output)}, but an N x K x H x W feature map is needed there: "
                     "name a convolutional layer or stage (e.g. the last one before global "
                     "average pooling), not the classifier or a layer returning a tuple")


class LayerTap:
    """Forward hooks that keep the latest output of named layers while capturing, each checked
    to be an N x K x H x W feature map (``user``, the wrapper, named in the message). Every name
    is resolved before any hook is registered. The hooks are opaque to ``torch.compile`` (a
    compiled model splits its graph at each captured tensor, so dY/dF stays computable).
    ``per_sample``: the forward under :meth:`capture` also records :class:`FixedBatchStatistics`
    (exact per-sample class-score gradients)."""

    def __init__(self, model, names=(), per_sample=False, user="attnfast"):
        self.store: dict = {}
        self.active = False
        layers = {n: resolve_layer(model, n) for n in dict.fromkeys(names)}
        self.user = user
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in layers.items()]
        self.fixed = FixedBatchStatistics(model) if per_sample else None

    def _hook(self, name):
        @compile_opaque
        def hook(module, args, output):
            if self.active:
                self.store[name] = check_feature_map(name, module, output, self.user)
                FixedBatchStatistics.arm(self.fixed)
        return hook

    @contextlib.contextmanager
    def capture(self):
        self.store.clear()
        self.active = True
        try:
            with FixedBatchStatistics.recording(self.fixed):
                yield self.store
        finally:
            self.active = False

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []
        if self.fixed is not None:
            self.fixed.remove()


# ----------------------------------------------------------------------------- attach and remove

# Layers whose output an attnfast wrapper changes (GGAM's module), and by what: at most one.
_CHANGED = weakref.WeakKeyDictionary()


class _Claim:
    """A layer's output claimed by one wrapper until :meth:`remove`."""

    def __init__(self, module, name, owner):
        holder = _CHANGED.get(module)
        if holder is not None:
            raise ValueError(f"layer {name!r} is already wrapped by {holder}, which changes its "
                             "output; call .remove() on that wrapper (or leave its with-block) "
                             "before wrapping the layer again")
        _CHANGED[module] = owner
        self.module = module

    def remove(self):
        if _CHANGED.get(self.module) is not None:
            del _CHANGED[self.module]


class Attached:
    """What every wrapper (SharpenFocus, GGAM, CAM, Guidance, ...) attaches to the user's model,
    in one place, and how it comes off.

    A subclass checks everything in ``__init__`` first and calls :meth:`_attach` LAST with every
    object it put on the model (a :class:`LayerTap`, hook handles, :class:`FixedBatchStatistics`,
    a :meth:`_claim_output` claim), so a constructor that raises leaves the model as it was.
    :meth:`remove` (idempotent) or the end of ``with Wrapper(model, ...) as w:`` takes them off:
    the bare model then computes what it did before. A wrapper that changes a layer's output
    claims it first: a second one on that layer is refused. A removed wrapper refuses calls
    (:meth:`_require_attached`, ``RuntimeError``)."""

    _attached = ()

    def _claim_output(self, module, name):
        """Claim the output of ``module`` (called ``name``) for this wrapper; raises ValueError
        when another wrapper already changes it."""
        return _Claim(module, name, f"a live {type(self).__name__}")

    def _attach(self, *parts):
        """Record ``parts`` (objects with ``remove()``) as attached; call it last in __init__."""
        self._attached = parts

    @property
    def attached(self) -> bool:
        """Whether the wrapper's hooks are on the model (False after :meth:`remove`)."""
        return bool(self._attached)

    def remove(self):
        """Take every hook (and claim) of this wrapper off the model; the model is then as it
        was before the wrapper was made. Safe to call twice."""
        parts, self._attached = self._attached, ()
        for part in reversed(parts):
            part.remove()

    def _require_attached(self):
        if not self._attached:
            raise RuntimeError(f"this {type(self).__name__} was removed from its model "
                               "(.remove() or the end of its with-block); make a new one")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


# ---------------------------------------------------------------------------- the GAP + linear head

def find_head(model, last_layer, head):
    """The ``nn.Linear`` head that global average pooling of ``last_layer`` may feed, as
    (module, name, required), or None. ``head``: "auto" looks for an ``nn.Linear`` named one of
    :data:`HEAD_NAMES` (not required: a head that fails :func:`head_mismatch` is then just not
    used); a name or a submodule requires it (ValueError here when it is not an ``nn.Linear``
    of the model); None: no head. Whether it really is fed by GAP of ``last_layer`` is known
    only from a forward: :func:`head_mismatch`."""
    if head is None:
        return None
    modules = dict(unwrap(model).named_modules())
    if isinstance(head, str) and head == "auto":
        for name in HEAD_NAMES:
            if isinstance(modules.get(name), nn.Linear):
                return modules[name], name, False
        return None
    if isinstance(head, nn.Module):
        names = [n for n, m in modules.items() if m is head]
        if not names:
            raise ValueError("head module is not a submodule of the model")
        name = names[0]
    else:
        name = head
    module = resolve_layer(model, name)
    if not isinstance(module, nn.Linear):
        raise ValueError(f"head {name!r} must be an nn.Linear fed by global average pooling of "
                         f"{last_layer!r}, got {type(module).__name__}; pass head=None")
    return module, name, True


def head_mismatch(features, head, logits):
    """None when logits = head(GAP(features)) here (so dY^c/dF = W[c] / (H W) at every pixel),
    else why not. Compared element by element in float32 within 1e-2 of the bound
    sum_k |W[c, k] GAP(F)[n, k]| + |b[c]| on the rounding of that sum (what low-precision runs
    need), plus 1e-5."""
    if features.dim() != 4 or features.shape[1] != head.in_features:
        return (f"it takes {head.in_features} features but the layer gives "
                f"{tuple(features.shape)}")
    if features.shape[0] != logits.shape[0] or logits.shape[1] != head.out_features:
        return "its output is not the model's N x C logits"
    with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
        gap = features.detach().float().mean(dim=(2, 3))
        w = head.weight.detach().float()
        b = None if head.bias is None else head.bias.detach().float()
        y = nnf.linear(gap, w, b)
        bound = gap.abs() @ w.abs().t() + (0 if b is None else b.abs())
        if not bool(((y - logits.detach().float()).abs() <= 1e-2 * bound + 1e-5).all()):
            return ("the logits are not head(GAP(features)): something other than global "
                    "average pooling lies between them, or the model changes the logits after it")
    return None


# ----------------------------------------------------------------------------- targets and scores

def check_targets(targets, logits, multilabel):
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


def classification_loss(logits, targets, multilabel):
    """Cross-entropy, or MultiLabelSoftMarginLoss for multi-hot targets (float32; float64 for
    float64 logits)."""
    if logits.dtype != torch.float64:
        logits = logits.float()
    if multilabel:
        return nnf.multilabel_soft_margin_loss(logits, targets.to(logits.dtype))
    return nnf.cross_entropy(logits, targets)


def class_scores(logits, classes):
    """s[n] = Y[n, c_n] for N indices, or sum_c T[n, c] Y[n, c] for an N x C multi-hot T."""
    if classes.dim() == 1:
        return logits.gather(1, classes[:, None])[:, 0]
    return (logits * classes.to(logits.dtype)).sum(1)


def confusers(logits, targets):
    """argmax over classes other than the target(s) of the detached logits (N indices)."""
    y = logits.detach().float()
    positive = targets > 0.5 if targets.dim() == 2 else nnf.one_hot(targets, y.shape[1]).bool()
    return y.masked_fill(positive, float("-inf")).argmax(1)


def score_grads(logits, classes, features, create_graph):
    """d(sum_n s_n)/dF for each F in ``features``, with an upstream gradient of ones; BatchNorm
    layers recorded by :class:`FixedBatchStatistics` hold their statistics fixed in this pass."""
    scores = class_scores(logits, classes)
    with _score_gradient_pass():
        return torch.autograd.grad(scores, features, grad_outputs=torch.ones_like(scores),
                                   retain_graph=True, create_graph=create_graph)


def layer_map(features, grads, kind):
    """Raw map of one class at one layer, of attention kind ``kind`` (``_schema.ATTENTION_KINDS``:
    pixel Eq. 5, channel Eq. 3-4, Grad-CAM); ``grads`` 4-D or N x K (the same at every pixel)."""
    positive = positive_weights(kind)
    if grads.dim() == 2:
        grads = grads[:, :, None, None].expand(-1, -1, *features.shape[-2:])
    if positive is None:
        return ops.pixel_attention(features, grads)
    return ops.channel_attention(features, grads, positive=positive)


def class_attention_maps(model, layer, images, classes, attention="pixel"):
    """Maps of several classes per image at ``layer`` of any model (e.g. a baseline).

    ``classes``: N x M class indices. Returns (logits, maps N x M x h x w float32), detached.
    """
    check_attention(attention)
    tap = LayerTap(model, [layer])
    try:
        with torch.enable_grad(), tap.capture() as store, donated_buffer_disabled():
            logits = model(images)
            feats = store[layer]
            maps = [layer_map(feats, score_grads(logits, classes[:, m], [feats], False)[0],
                              attention) for m in range(classes.shape[1])]
    finally:
        tap.remove()
    return logits.detach(), torch.stack(maps, 1).detach()


class SupervisedWrapper(Attached, nn.Module):
    """What the attention-supervising wrappers share: ``w(images, targets)`` -> the step (a
    NamedTuple whose ``loss`` to backpropagate), computed by the subclass's ``_step`` with
    gradients enabled; ``w(images)`` -> the model's logits. Called with gradients disabled (as in
    evaluation) the step's tensors come back detached; every call of the model runs with
    donated buffers off (see the module docstring). ``w.remove()`` / ``with`` take the
    wrapper's hooks off the model (:class:`Attached`)."""

    def forward(self, images, targets=None):
        """The step of ``images`` and ``targets``, or the logits when ``targets`` is None."""
        self._require_attached()
        if targets is None:
            with donated_buffer_disabled():
                return self.model(images)
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            step = self._step(images, targets, keep_graph)
        return step if keep_graph else detach_step(step)

    def _step(self, images, targets, keep_graph):
        raise NotImplementedError


def detach_step(step):
    """The step with every tensor (also inside tuples) detached."""
    def d(x):
        if isinstance(x, torch.Tensor):
            return x.detach()
        if isinstance(x, tuple):
            return type(x)(*map(d, x)) if hasattr(x, "_fields") else tuple(map(d, x))
        if isinstance(x, dict):
            return {k: d(v) for k, v in x.items()}
        return x
    return d(step)
