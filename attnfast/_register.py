"""Autograd and fake-kernel registration of the compiled ops (``attnfast``, ``attnfast_triton``).

Every ``<op>_backward`` of the kernel interface (``attnfast._schema``) takes
``(*grads of the outputs, *tensor inputs of <op>, *saved outputs, *non-tensor inputs)`` and
returns the gradient of each tensor input; one generic rule ties each pair together with
``torch.library.register_autograd`` on both namespaces. Fake (meta) kernels let
``torch.compile`` trace the C++/CUDA ops; ``triton_op`` traces its own.
"""
from __future__ import annotations

import torch

from ._schema import FORWARD_OPS, SCHEMAS

# outputs the backward needs besides the inputs (by output index)
SAVED_OUTPUTS = {"weighted_attention": (0,), "pixel_attention": (0,),
                 "channel_spatial_attention": (1,)}
_done: set = set()


def _parse(name):
    return torch._C.parse_schema(f"attnfast::{name}{SCHEMAS[name]}")


def _is_tensor(arg):
    return isinstance(arg.type, torch._C.TensorType)


def _acc(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _grad_in(g, out):
    """Incoming gradient in the layout the kernels take: like its output, contiguous for
    small outputs, pixel-strided for big ones."""
    if g is None:
        return torch.zeros_like(out)
    if out.dim() == 4:
        from .ops import _big
        return _big(g.to(out.dtype))
    return g.to(out.dtype).contiguous()


def _autograd(ns: str, name: str):
    schema = _parse(name)
    tensor_idx = [i for i, a in enumerate(schema.arguments) if _is_tensor(a)]
    other_idx = [i for i, a in enumerate(schema.arguments) if not _is_tensor(a)]
    saved = SAVED_OUTPUTS.get(name, ())
    backward_op = getattr(getattr(torch.ops, ns), f"{name}_backward")

    def setup_context(ctx, inputs, output):
        outs = output if isinstance(output, tuple) else (output,)
        ctx.save_for_backward(*(inputs[i] for i in tensor_idx), *outs)
        ctx.options = [inputs[i] for i in other_idx]
        ctx.n_in = len(tensor_idx)

    def backward(ctx, *grads):
        tensors = ctx.saved_tensors
        ins, outs = tensors[:ctx.n_in], tensors[ctx.n_in:]
        grads_in = [_grad_in(g, o) for g, o in zip(grads, outs)]
        result = backward_op(*grads_in, *ins, *(outs[i] for i in saved), *ctx.options)
        result = result if isinstance(result, tuple) else (result,)
        it = iter(result)
        return tuple(next(it) if i in tensor_idx else None
                     for i in range(len(schema.arguments)))

    torch.library.register_autograd(f"{ns}::{name}", backward, setup_context=setup_context)


def _map_like(t):
    return t.new_empty((t.shape[0], *t.shape[2:]), dtype=_acc(t))


def _per_sample(t):
    return t.new_empty(t.shape[:1], dtype=_acc(t))


FORWARD_FAKES = {
    "channel_weights": lambda g, positive: g.new_empty(g.shape[:2], dtype=_acc(g)),
    "weighted_attention": lambda f, w: _map_like(f),
    "pixel_attention": lambda f, g: _map_like(f),
    "normalize_attention": lambda a, eps: torch.empty_like(a),
    "soft_mask": lambda a, sigma, omega, h, w, eps: a.new_empty((a.shape[0], h, w)),
    "soft_iou": lambda a, b, m, eps: _per_sample(a),
    "attention_consistency": lambda a, m, alpha, eps: _per_sample(a),
    "sharpen_focus_loss": lambda f, *rest: tuple(_per_sample(f) for _ in range(3)),
    "channel_spatial_attention": lambda f, s, eps: (torch.empty_like(f), _map_like(f)),
    "ggam_loss": lambda s, beta, eps: _per_sample(s),
}


def _backward_fake(name):
    """A backward returns one gradient like each tensor input of its forward."""
    n_out = len(_parse(name).returns)
    n_in = sum(map(_is_tensor, _parse(name).arguments))

    def fake(*args):
        grads = tuple(torch.empty_like(t) for t in args[n_out:n_out + n_in])
        return grads if len(grads) > 1 else grads[0]
    return fake


def register(ns: str, fakes: bool) -> None:
    """Register autograd (and, for C++-defined ops, fake kernels) for namespace ``ns`` once."""
    if ns in _done:
        return
    _done.add(ns)
    for name in FORWARD_OPS:
        if fakes:
            torch.library.register_fake(f"{ns}::{name}", FORWARD_FAKES[name])
            torch.library.register_fake(f"{ns}::{name}_backward", _backward_fake(name))
        _autograd(ns, name)
