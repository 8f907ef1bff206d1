"""Per-channel weights of a gradient, and the backward that spreads them back over pixels.

  channel_means:   w[n,k] = (1/HW) sum_p R(G[n,k,p]),  R = ReLU (positive) or identity (Grad-CAM)
  spread_weights:  dG[n,k,p] = c[n,k] * scale * R'(G[n,k,p]),  R' = [G > 0] or 1
(with c = dL/dw and scale = 1/HW, spread_weights is the backward of channel_means; the Grad-CAM
one never reads G). Programs own (sample, channel block) and walk pixels, split over programs
for small batches; channel_means adds the split partials in a fixed order.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import (acc_dtype, big_autotune, big_strides, launchable, num_splits,
                      shared_layout)
from ._reduce import (channel_block_program, load_tile, offsets_like, relu, sum_splits,
                      tile_offsets, workspace)


@big_autotune(key=["K", "HW", "g_sk", "g_sp", "POSITIVE"])
@triton.jit
def _channel_means_kernel(g_ptr, g_sn, g_sk, g_sp, out_ptr, K, HW, p_chunk, scale,
                          POSITIVE: tl.constexpr, PARTIAL: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    """out[n, s, k] = sum over split s's pixels of R(G) (PARTIAL), else out[n, k] = scale * sum."""
    n, k, kmask, p_lo, p_hi, s = channel_block_program(K, HW, p_chunk, BLOCK_K, BLOCK_P)
    acc = tl.zeros([BLOCK_K, BLOCK_P], tl.float32)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        g = load_tile(g_ptr, g_sn, g_sk, g_sp, n, k, kmask, p, p < p_hi)[2]
        if POSITIVE:
            g = relu(g)
        acc += g
    v = tl.sum(acc, axis=1)
    if not PARTIAL:
        v = v * scale
    tl.store(out_ptr + (n * tl.num_programs(1) + s) * K + k, v, mask=kmask)


def channel_means(grads, positive):
    """w[n,k] = mean_p ReLU(G) (positive) or mean_p G: N x K, float32 (float64 for float64)."""
    n, k, h, w = grads.shape
    hw = h * w
    out = torch.empty(n, k, device=grads.device, dtype=acc_dtype(grads))
    if not launchable(grads):
        return out.fill_(float("nan")) if hw == 0 else out  # mean over no pixel, as torch
    nsplit = num_splits(grads.device, n * triton.cdiv(k, 64), hw)
    dst = out if nsplit == 1 else workspace(n, nsplit, k, grads)
    grid = lambda meta: (n * triton.cdiv(k, meta["BLOCK_K"]), nsplit)  # noqa: E731
    wrap_triton(_channel_means_kernel)[grid](
        grads, *big_strides(grads), dst, k, hw, triton.cdiv(hw, nsplit), 1.0 / hw,
        POSITIVE=positive, PARTIAL=nsplit > 1)
    if nsplit > 1:
        sum_splits(dst, out, 1.0 / hw)
    return out


@big_autotune(key=["K", "HW", "g_sk", "g_sp", "POSITIVE"])
@triton.jit
def _spread_weights_kernel(c_ptr, g_ptr, g_sn, g_sk, g_sp, dg_ptr, dg_sn, dg_sk, dg_sp,
                           K, HW, p_chunk, scale, POSITIVE: tl.constexpr, SHARED: tl.constexpr,
                           BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    """dG[n,k,p] = c[n,k] * scale * ([G[n,k,p] > 0] if POSITIVE else 1) over split s's pixels."""
    n, k, kmask, p_lo, p_hi, s = channel_block_program(K, HW, p_chunk, BLOCK_K, BLOCK_P)
    c = tl.load(c_ptr + n * K + k, mask=kmask, other=0.0).to(tl.float32) * scale
    for p0 in range(p_lo, p_hi, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        mask = kmask[:, None] & (p < p_hi)[None, :]
        d = tl.zeros([BLOCK_K, BLOCK_P], tl.float32) + c[:, None]
        off = tile_offsets(dg_sn, dg_sk, dg_sp, n, k, p)
        if POSITIVE:
            g = tl.load(g_ptr + offsets_like(off, g_sn, g_sk, g_sp, n, k, p, SHARED), mask=mask,
                        other=0.0)
            d = tl.where(g.to(tl.float32) <= 0, 0.0, d)  # ReLU'(NaN) = 1, as torch
        tl.store(dg_ptr + off, d, mask=mask)


def spread_weights(coef, grads, positive, scale):
    """dG = coef[:, :, None, None] * scale * (G > 0 if positive): G's dtype and layout."""
    n, k, h, w = grads.shape
    hw = h * w
    dgrads = torch.empty_like(grads)
    if not launchable(grads, coef):
        return dgrads
    nsplit = num_splits(grads.device, n * triton.cdiv(k, 64), hw)
    grid = lambda meta: (n * triton.cdiv(k, meta["BLOCK_K"]), nsplit)  # noqa: E731
    wrap_triton(_spread_weights_kernel)[grid](
        coef, grads, *big_strides(grads), dgrads, *big_strides(dgrads),
        k, hw, triton.cdiv(hw, nsplit), scale, POSITIVE=positive,
        SHARED=shared_layout(grads, dgrads))
    return dgrads
