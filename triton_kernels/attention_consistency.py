"""attention_consistency: L[n] = alpha - sum_p A M / (sum_p A + eps) -- Sharpen Focus Eq. 8.

Backward, C = sum A M, E = sum A + eps: dA = g (C / E^2 - M / E), dM = -g A / E.
One program per sample; the maps stay in registers up to MAP_TILE pixels.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ._common import launchable, map_block, register
from ._maps import consistency_grads, load_map


@triton.jit
def _consistency_kernel(a_ptr, m_ptr, g_ptr, out_ptr, da_ptr, dm_ptr, HW, alpha, eps,
                        GRAD: tl.constexpr, BLOCK: tl.constexpr, ONE_TILE: tl.constexpr):
    """out[n] = L (forward) or (GRAD) dA, dM of it for upstream g[n]."""
    n = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    if ONE_TILE:
        a_c, valid_c = load_map(a_ptr, n, 0, offs, HW)
        m_c = load_map(m_ptr, n, 0, offs, HW)[0]
    num = 0.0
    total = 0.0
    for start in range(0, HW, BLOCK):
        if ONE_TILE:
            a, m = a_c, m_c
        else:
            a = load_map(a_ptr, n, start, offs, HW)[0]
            m = load_map(m_ptr, n, start, offs, HW)[0]
        num += tl.sum(a * m, axis=0)
        total += tl.sum(a, axis=0)
    den = total + eps
    if GRAD:
        g = tl.load(g_ptr + n)
        for start in range(0, HW, BLOCK):
            if ONE_TILE:
                a, m, valid = a_c, m_c, valid_c
            else:
                a, valid = load_map(a_ptr, n, start, offs, HW)
                m = load_map(m_ptr, n, start, offs, HW)[0]
            ga, gm = consistency_grads(a, m, num, den)
            tl.store(da_ptr + n * HW + start + offs, g * ga, mask=valid)
            tl.store(dm_ptr + n * HW + start + offs, g * gm, mask=valid)
    else:
        tl.store(out_ptr + n, alpha - num / den)


def _launch(attn, mask, alpha, eps, grad):
    """attention_consistency (grad None) or its two input gradients."""
    n, h, w = attn.shape
    out = torch.empty(n, device=attn.device, dtype=attn.dtype)
    grads = [] if grad is None else [torch.empty_like(attn), torch.empty_like(mask)]
    if launchable(attn, mask):
        block, one_tile, warps = map_block(h * w)
        dst = [attn, attn] if grad is None else grads
        wrap_triton(_consistency_kernel)[(n,)](
            attn, mask, out if grad is None else grad, out, *dst, h * w, alpha, eps,
            GRAD=grad is not None, BLOCK=block, ONE_TILE=one_tile, num_warps=warps)
    return out if grad is None else tuple(grads)


@register
def attention_consistency(attn: Tensor, mask: Tensor, alpha: float, eps: float) -> Tensor:
    """alpha - sum A M / (sum A + eps) per sample."""
    return _launch(attn, mask, alpha, eps, None)


@register
def attention_consistency_backward(grad: Tensor, attn: Tensor, mask: Tensor, alpha: float,
                                   eps: float) -> tuple[Tensor, Tensor]:
    """(d attn, d mask) of attention_consistency for grad = dL/dL_ac (N)."""
    return _launch(attn, mask, alpha, eps, grad)
