"""Autograd and fake-kernel registration of the compiled ops (``attnfast``, ``attnfast_triton``).

Every ``<op>_backward`` of the kernel interface (``attnfast._schema``) takes
``(*grads of the visible outputs, *tensor inputs of <op>, *saved outputs, *non-tensor inputs)``
and returns the gradient of each tensor input; one generic rule ties each pair together with
``torch.library.register_autograd`` on both namespaces (``hidden`` outputs are marked
non-differentiable; their incoming gradients are dropped). Fake (meta) kernels, taken from each
op's record in ``attnfast._schema``, let ``torch.compile`` trace the C++/CUDA ops;
``triton_op`` traces its own. (The eager ``torch`` backend needs neither: it is plain autograd.)
"""
from __future__ import annotations

import torch

from ._layout import grad_like
from ._schema import OPS

_done: set = set()


def _autograd(ns: str, name: str):
    op = OPS[name]
    n_args = len(op.arguments)
    tensor_idx = [i for i, (type_, _) in enumerate(op.arguments) if type_ == "Tensor"]
    other_idx = [i for i in range(n_args) if i not in tensor_idx]
    grad_idx = [i for i, (_, name) in enumerate(op.arguments) if name in op.differentiable]
    backward_op = getattr(getattr(torch.ops, ns), f"{name}_backward")
    n_visible = len(op.visible)

    def setup_context(ctx, inputs, output):
        outs = output if isinstance(output, tuple) else (output,)
        if op.hidden:
            ctx.mark_non_differentiable(*outs[n_visible:])
        ctx.save_for_backward(*(inputs[i] for i in tensor_idx), *outs)
        ctx.options = [inputs[i] for i in other_idx]
        ctx.n_in = len(tensor_idx)

    def backward(ctx, *grads):
        tensors = ctx.saved_tensors
        ins, outs = tensors[:ctx.n_in], tensors[ctx.n_in:]
        grads_in = [grad_like(g, o) for g, o in zip(grads[:n_visible], outs)]
        result = backward_op(*grads_in, *ins, *(outs[i] for i in op.saved_index), *ctx.options)
        result = result if isinstance(result, tuple) else (result,)
        it = iter(result)
        return tuple(next(it) if i in grad_idx else None for i in range(n_args))

    torch.library.register_autograd(f"{ns}::{name}", backward, setup_context=setup_context)


def _backward_fake(name):
    """A backward returns one gradient like each differentiable tensor input of its forward."""
    op = OPS[name]
    n_grad = len(op.grad_names)
    diff = [i for i, n in enumerate(op.tensor_inputs) if n in op.differentiable]

    def fake(*args):
        grads = tuple(torch.empty_like(args[n_grad + i]) for i in diff)
        return grads if len(grads) > 1 else grads[0]
    return fake


def register(ns: str, fakes: bool) -> None:
    """Register autograd (and, for C++-defined ops, fake kernels) for namespace ``ns`` once."""
    if ns in _done:
        return
    _done.add(ns)
    for name, op in OPS.items():
        if fakes:
            torch.library.register_fake(f"{ns}::{name}", op.fake)
            torch.library.register_fake(f"{ns}::{name}_backward", _backward_fake(name))
        _autograd(ns, name)
