"""How tensors are handed to the kernels (the layout rules of ``attnfast._schema``).

Used by ``attnfast.ops`` (forward arguments) and ``attnfast._register`` (incoming gradients);
imports nothing of attnfast but the reference's dtype rule.
"""
from __future__ import annotations

import torch

from .reference import acc_dtype

__all__ = ["acc_dtype", "big", "small", "grad_like"]


def big(t: torch.Tensor) -> torch.Tensor:
    """Big N x K x H x W tensors go to the kernels in place when the H x W pixels share one stride
    (contiguous NCHW, channels_last, broadcast views); anything else is copied to contiguous.
    (The C++ CPU kernels still copy a G whose layout differs from F's into F's layout.)"""
    h, w = t.shape[-2:]
    if h == 1 or w == 1 or t.stride(2) == w * t.stride(3):
        return t
    return t.contiguous()


def small(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Maps, weights, per-sample values: contiguous, in the accumulation dtype ``dtype``."""
    return t.to(dtype).contiguous()


def grad_like(g, out: torch.Tensor) -> torch.Tensor:
    """The incoming gradient of output ``out`` as a backward kernel takes it: zeros when autograd
    gives none, in ``out``'s dtype, pixel-strided for a big output, contiguous for a small one."""
    if g is None:
        return torch.zeros_like(out)
    return big(g.to(out.dtype)) if out.dim() == 4 else small(g, out.dtype)
