"""Every private PyTorch API attnfast relies on, in one place.

PyTorch may rename or drop any of these between releases; each entry says what it wraps and the
torch versions it was checked on, so that a new release means reading this one file. Nothing
else in attnfast (the package, its Triton kernels, its tests) is meant to call ``torch._C``,
``torch._library``, ``torch._subclasses`` or ``torch._functorch`` directly.

Checked here on torch 2.13.0 (CPU build); the GPU lane runs torch 2.11.
"""
from __future__ import annotations

import contextlib
import functools

import torch


def compile_opaque(fn):
    """``fn`` run eagerly under ``torch.compile`` (``torch.compiler.disable``), with
    ``torch._dynamo`` imported on the first call instead of when ``fn`` is defined: importing it
    takes about 1.6 s, and ``import attnfast`` must not pay that (checked: torch 2.13). A call
    traced by the compiler before the first eager call runs the ``disable`` eagerly at a graph
    break, then the disabled ``fn``."""
    disabled = []

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)
    return call


def parse_schema(text: str):
    """``torch._C.parse_schema``: a ``FunctionSchema`` from ``"ns::name(args) -> returns"``
    (checked: torch 2.13)."""
    return torch._C.parse_schema(text)


def is_tensor_arg(argument) -> bool:
    """True when a ``FunctionSchema`` argument is a plain ``Tensor`` (``torch._C.TensorType``;
    checked: torch 2.13)."""
    return isinstance(argument.type, torch._C.TensorType)


def has_kernel(qualname: str, dispatch_key: str) -> bool:
    """True when the operator ``qualname`` ("ns::op") has a kernel registered for
    ``dispatch_key`` ("CPU", "CUDA", ...): ``torch._C._dispatch_has_kernel_for_dispatch_key``
    (checked: torch 2.13)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, dispatch_key)


def is_fake(t) -> bool:
    """True for a FakeTensor (shape propagation, ``torch.compile`` tracing):
    ``torch._subclasses.fake_tensor.is_fake`` (checked: torch 2.13)."""
    from torch._subclasses.fake_tensor import is_fake as _is_fake
    return _is_fake(t)


@contextlib.contextmanager
def int_schema_for_triton_op():
    """While the block runs, ``torch.library.triton_op`` infers ``int`` (not ``SymInt``) for an
    ``int`` annotation, as the kernel interface (``attnfast._schema``) says.

    ``triton_op`` ignores its ``schema=`` argument and always calls
    ``torch._library.triton.infer_schema``; the block swaps that module attribute for a wrapper
    that rewrites ``SymInt`` to ``int`` (checked: torch 2.13)."""
    from torch._library import triton as torch_triton
    original = torch_triton.infer_schema
    torch_triton.infer_schema = lambda fn, **kw: original(fn, **kw).replace("SymInt ", "int ")
    try:
        yield
    finally:
        torch_triton.infer_schema = original


@contextlib.contextmanager
def donated_buffer_disabled():
    """AOTAutograd's donated buffers off while the block runs (checked: torch 2.11, 2.13).

    The wrappers backpropagate through a compiled model's graph more than once
    (``retain_graph=True``), which donated buffers forbid; the flag is read when the compiled
    graph is first built, i.e. during the first forward through the compiled model."""
    import torch._functorch.config as functorch_config
    with functorch_config.patch(donated_buffer=False):
        yield


def fake_tensor_mode():
    """A fresh ``torch._subclasses.fake_tensor.FakeTensorMode``: inside it, factory functions
    give FakeTensors (metadata only, any device, no memory), e.g. CUDA tensors on a machine
    without a GPU when torch is a CUDA build (checked: torch 2.13)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    return FakeTensorMode()
