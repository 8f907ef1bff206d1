"""soft_iou: s[n] = 2 sum_p min(a, b) M / (sum_p (a + b) + eps) -- Sharpen Focus Eq. 6.

Backward, D = sum (a + b) + eps, I = sum min(a, b) M, share = d min / d first argument
(1, 1/2 at ties, 0): da = g (2 share(a, b) M / D - 2 I / D^2), db likewise, dM = 2 g min(a, b) / D.
An empty mask tensor (numel 0) means M = 1 (its gradient is then empty too).
One program per sample; the maps stay in registers up to MAP_TILE pixels.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import per_sample_loss, register
from ._maps import iou_grads, load_map, map_chunk, map_tile, nan_min


@triton.jit
def _pair(src, start, offs, HAS_MASK: tl.constexpr, OPT2: tl.constexpr):
    """Loader (see _maps.map_chunk): (a, b, M, valid) at pixels start + offs of sample n;
    M = 1 without a mask."""
    a_ptr, b_ptr, m_ptr, n, HW = src
    a, valid = load_map(a_ptr, n, start, offs, HW)
    b = load_map(b_ptr, n, start, offs, HW)[0]
    if HAS_MASK:
        m = load_map(m_ptr, n, start, offs, HW)[0]
    else:
        m = tl.where(valid, 1.0, 0.0)
    return a, b, m, valid


@triton.jit
def _soft_iou_kernel(a_ptr, b_ptr, m_ptr, g_ptr, out_ptr, da_ptr, db_ptr, dm_ptr, HW, eps,
                     HAS_MASK: tl.constexpr, GRAD: tl.constexpr,
                     BLOCK: tl.constexpr, ONE_TILE: tl.constexpr):
    """out[n] = soft-IoU (forward) or (GRAD) da, db, dM of it for upstream g[n]."""
    n = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    src = (a_ptr, b_ptr, m_ptr, n, HW)
    tile = map_tile(_pair, src, offs, ONE_TILE, HAS_MASK)
    inter = 0.0
    total = 0.0
    for start in range(0, HW, BLOCK):
        a, b, m, valid = map_chunk(tile, _pair, src, start, offs, ONE_TILE, HAS_MASK)
        inter += tl.sum(nan_min(a, b) * m, axis=0)
        total += tl.sum(a + b, axis=0)
    den = total + eps
    if GRAD:
        g = tl.load(g_ptr + n)
        for start in range(0, HW, BLOCK):
            a, b, m, valid = map_chunk(tile, _pair, src, start, offs, ONE_TILE, HAS_MASK)
            ga, gb, gm = iou_grads(a, b, m, inter, den)
            p = n * HW + start + offs
            tl.store(da_ptr + p, g * ga, mask=valid)
            tl.store(db_ptr + p, g * gb, mask=valid)
            if HAS_MASK:
                tl.store(dm_ptr + p, g * gm, mask=valid)
    else:
        tl.store(out_ptr + n, 2.0 * inter / den)


def _launch(attn_a, attn_b, mask, eps, grad):
    """soft_iou (grad None) or its three input gradients."""
    n, h, w = attn_a.shape
    has_mask = mask.numel() != 0
    res = per_sample_loss(_soft_iou_kernel, (attn_a, attn_b, mask if has_mask else None), grad,
                          h * w, eps, HAS_MASK=has_mask)
    return res if grad is None or has_mask else (*res[:2], torch.empty_like(mask))


@register
def soft_iou(attn_a: Tensor, attn_b: Tensor, mask: Tensor, eps: float) -> Tensor:
    """2 sum min(a, b) M / (sum (a + b) + eps) per sample."""
    return _launch(attn_a, attn_b, mask, eps, None)


@register
def soft_iou_backward(grad: Tensor, attn_a: Tensor, attn_b: Tensor, mask: Tensor,
                      eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(d attn_a, d attn_b, d mask) of soft_iou for grad = dL/ds (N)."""
    return _launch(attn_a, attn_b, mask, eps, grad)
