"""attention_consistency: L[n] = alpha - sum_p A M / (sum_p A + eps) -- Sharpen Focus Eq. 8.

Backward, C = sum A M, E = sum A + eps: dA = g (C / E^2 - M / E), dM = -g A / E.
One program per sample; the maps stay in registers up to MAP_TILE pixels.
"""
import triton
import triton.language as tl
from torch import Tensor

from ._common import per_sample_loss, register
from ._maps import consistency_grads, load_map, map_chunk, map_tile


@triton.jit
def _pair(src, start, offs, OPT1: tl.constexpr, OPT2: tl.constexpr):
    """Loader (see _maps.map_chunk): (A, M, valid) at pixels start + offs of sample n."""
    a_ptr, m_ptr, n, HW = src
    a, valid = load_map(a_ptr, n, start, offs, HW)
    return a, load_map(m_ptr, n, start, offs, HW)[0], valid


@triton.jit
def _consistency_kernel(a_ptr, m_ptr, g_ptr, out_ptr, da_ptr, dm_ptr, HW, alpha, eps,
                        GRAD: tl.constexpr, BLOCK: tl.constexpr, ONE_TILE: tl.constexpr):
    """out[n] = L (forward) or (GRAD) dA, dM of it for upstream g[n]."""
    n = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    src = (a_ptr, m_ptr, n, HW)
    tile = map_tile(_pair, src, offs, ONE_TILE)
    num = 0.0
    total = 0.0
    for start in range(0, HW, BLOCK):
        a, m, valid = map_chunk(tile, _pair, src, start, offs, ONE_TILE)
        num += tl.sum(a * m, axis=0)
        total += tl.sum(a, axis=0)
    den = total + eps
    if GRAD:
        g = tl.load(g_ptr + n)
        for start in range(0, HW, BLOCK):
            a, m, valid = map_chunk(tile, _pair, src, start, offs, ONE_TILE)
            ga, gm = consistency_grads(a, m, num, den)
            tl.store(da_ptr + n * HW + start + offs, g * ga, mask=valid)
            tl.store(dm_ptr + n * HW + start + offs, g * gm, mask=valid)
    else:
        tl.store(out_ptr + n, alpha - num / den)


def _launch(attn, mask, alpha, eps, grad):
    """attention_consistency (grad None) or its two input gradients."""
    n, h, w = attn.shape
    return per_sample_loss(_consistency_kernel, (attn, mask), grad, h * w, alpha, eps)


@register
def attention_consistency(attn: Tensor, mask: Tensor, alpha: float, eps: float) -> Tensor:
    """alpha - sum A M / (sum A + eps) per sample."""
    return _launch(attn, mask, alpha, eps, None)


@register
def attention_consistency_backward(grad: Tensor, attn: Tensor, mask: Tensor, alpha: float,
                                   eps: float) -> tuple[Tensor, Tensor]:
    """(d attn, d mask) of attention_consistency for grad = dL/dL_ac (N)."""
    return _launch(attn, mask, alpha, eps, grad)
