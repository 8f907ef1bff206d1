"""normalize_attention: y = A / (max(max_p A, 0) + eps) per sample, and its backward.

Backward (den = max(max A, 0) + eps, ties at the max share evenly, clamp passes where max >= 0):
  dA = g / den - [A == max] [max >= 0] / count * sum_p g A / den^2, evaluated at the ties in the
  cancellation-free form of _maps.norm_grad (running sums of g at the max, g A below it).
One program per sample; the map stays in registers up to MAP_TILE pixels.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ._common import launchable, map_block, register
from ._maps import load_map, max_count, norm_den, norm_grad, tie_fold


@triton.jit
def _normalize_kernel(x_ptr, g_ptr, out_ptr, HW, eps, GRAD: tl.constexpr,
                      BLOCK: tl.constexpr, ONE_TILE: tl.constexpr):
    """out = x / den (forward), or out = dL/dx from g = dL/dy (GRAD)."""
    n = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    if ONE_TILE:
        x_c, valid_c = load_map(x_ptr, n, 0, offs, HW)
        if GRAD:
            g_c = load_map(g_ptr, n, 0, offs, HW)[0]
    mx = -float("inf")
    cnt = 0.0
    g_tied = 0.0
    rest = 0.0
    for start in range(0, HW, BLOCK):
        if ONE_TILE:
            x, valid = x_c, valid_c
        else:
            x, valid = load_map(x_ptr, n, start, offs, HW)
        if GRAD:
            if ONE_TILE:
                g = g_c
            else:
                g = load_map(g_ptr, n, start, offs, HW)[0]
            mx, cnt, g_tied, rest = tie_fold(g, x, valid, mx, cnt, g_tied, rest)
        else:
            mx, cnt = max_count(x, valid, mx, cnt)
    den = norm_den(mx, eps)
    for start in range(0, HW, BLOCK):
        if ONE_TILE:
            x, valid = x_c, valid_c
        else:
            x, valid = load_map(x_ptr, n, start, offs, HW)
        if GRAD:
            if ONE_TILE:
                g = g_c
            else:
                g = load_map(g_ptr, n, start, offs, HW)[0]
            y = norm_grad(g, x, mx, cnt, g_tied, rest, eps)
        else:
            y = x / den
        tl.store(out_ptr + n * HW + start + offs, y, mask=valid)


def _launch(attn, grad, eps):
    out = torch.empty_like(attn)
    n, h, w = attn.shape
    if launchable(attn):
        block, one_tile, warps = map_block(h * w)
        wrap_triton(_normalize_kernel)[(n,)](
            attn, attn if grad is None else grad, out, h * w, eps, GRAD=grad is not None,
            BLOCK=block, ONE_TILE=one_tile, num_warps=warps)
    return out


@register
def normalize_attention(attn: Tensor, eps: float) -> Tensor:
    """A / (max(max_p A, 0) + eps) per sample."""
    return _launch(attn, None, eps)


@register
def normalize_attention_backward(grad: Tensor, attn: Tensor, eps: float) -> Tensor:
    """dL/dA of normalize_attention for grad = dL/dy."""
    return _launch(attn, grad, eps)
