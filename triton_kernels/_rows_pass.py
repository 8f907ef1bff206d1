"""Backward pass over features F for maps built from rows: map r from F[rows[r]] (guidance_loss).

For upstream e[r, p] = dL/d(sum_k F[rows[r], k, p] X[r, k, p]) (the map's activation and scale
already applied), with X[r] either G[r] (MAP: N x K x H x W, its own strides) or per-channel
weights w[r, k] (VEC: R x K):
  dF[n, k, p] = sum over the rows r of image n of e[r, p] X[r, k, p]   (0 for an image without rows)
  MAP: dX[r, k, p] = e[r, p] F[rows[r], k, p];   VEC: dw[r, k] = sum_p e[r, p] F[rows[r], k, p].
No atomics (the result is bitwise reproducible): program (image n, channel block) x pixel split s
owns dF[n] on its pixels and walks the rows of image n in a fixed order (rows sorted by image,
stably, with torch ops in the launcher). The first row writes dF, every further row reads it back
and adds its share (after a barrier, so that the whole program sees the previous row's stores):
one read of F and one write of dF per image when it has one row (single-label batches); a
multi-label image costs one more read of F and a read-modify-write of dF per extra row.
VEC partial sums go to part[r, s, k], summed over the splits in order by sum_splits.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import MAP, big_autotune, big_strides, launchable, num_splits, vec_strides
from ._reduce import (channel_block_program, load_tile, load_weights, sum_splits, tile_offsets,
                      workspace)

_MAP: tl.constexpr = tl.constexpr(MAP)


@big_autotune(key=["K", "HW", "f_sk", "f_sp", "x_sk", "x_sp", "MODE"])
@triton.jit
def _rows_grads_kernel(f_ptr, f_sn, f_sk, f_sp, df_ptr, order_ptr, bounds_ptr, e_ptr,
                       x_ptr, x_sn, x_sk, x_sp, dx_ptr, dx_sn, dx_sk, dx_sp, part_ptr,
                       K, HW, p_chunk, MODE: tl.constexpr,
                       BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    """dF of image n (same strides as F), dX (MAP) or the partial dw (VEC) of its rows, on the
    pixels [p_lo, p_hi) of split s and channels k."""
    n, k, kmask, p_lo, p_hi, s = channel_block_program(K, HW, p_chunk, BLOCK_K, BLOCK_P)
    j0 = tl.load(bounds_ptr + n)
    j1 = tl.load(bounds_ptr + n + 1)
    nsplit = tl.num_programs(1)
    if j1 == j0:  # no row uses this image
        for p0 in range(p_lo, p_hi, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            mask = kmask[:, None] & (p < p_hi)[None, :]
            tl.store(df_ptr + tile_offsets(f_sn, f_sk, f_sp, n, k, p),
                     tl.zeros([BLOCK_K, BLOCK_P], tl.float32), mask=mask)
    for j in range(j0, j1):
        r = tl.load(order_ptr + j)
        w = load_weights(x_ptr, x_sn, x_sk, r, k, kmask, False)  # VEC only (MAP: never used)
        dw = tl.zeros([BLOCK_K, BLOCK_P], tl.float32)
        for p0 in range(p_lo, p_hi, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            pmask = p < p_hi
            mask, off, f = load_tile(f_ptr, f_sn, f_sk, f_sp, n, k, kmask, p, pmask)
            e = tl.load(e_ptr + r * HW + p, mask=pmask, other=0.0)
            if MODE == _MAP:
                x = tl.load(x_ptr + tile_offsets(x_sn, x_sk, x_sp, r, k, p), mask=mask, other=0.0)
                df = e[None, :] * x.to(tl.float32)
                tl.store(dx_ptr + tile_offsets(dx_sn, dx_sk, dx_sp, r, k, p), e[None, :] * f,
                         mask=mask)
            else:
                df = e[None, :] * w[:, None]
                dw += e[None, :] * f
            if j > j0:
                df += tl.load(df_ptr + off, mask=mask, other=0.0).to(tl.float32)
            tl.store(df_ptr + off, df, mask=mask)
        if MODE != _MAP:
            tl.store(part_ptr + (r * nsplit + s) * K + k, tl.sum(dw, axis=1), mask=kmask)
        tl.debug_barrier()  # the next row reads back this row's dF


def row_order(rows, n):
    """(order, bounds): the rows of image i are order[bounds[i]:bounds[i + 1]], ascending."""
    ordered, order = torch.sort(rows, stable=True)
    bounds = torch.searchsorted(ordered, torch.arange(n + 1, device=rows.device, dtype=rows.dtype))
    return order, bounds


def rows_grads(features, rows, e, x, mode, gate=None):
    """Backward of the row maps for e (R x H*W, float32): (dF like F, dX) with dX like X (MAP)
    or dw (VEC, R x K float32; times [gate > 0] when ``gate`` is given: the chain rule of
    w = ReLU(gate))."""
    n, k, h, w = features.shape
    hw, r = h * w, rows.shape[0]
    dfeat = torch.empty_like(features)
    dx = torch.empty_like(x) if mode == MAP else torch.empty(r, k, device=x.device, dtype=e.dtype)
    if not launchable(features, e):
        return (dfeat if r else dfeat.zero_()), dx.zero_()
    order, bounds = row_order(rows, n)
    nsplit = num_splits(features.device, n * triton.cdiv(k, 64), hw)
    part = workspace(r, nsplit, k, features) if mode != MAP else e  # e: placeholder, not written
    x_strides = big_strides(x) if mode == MAP else vec_strides(x)
    grid = lambda meta: (n * triton.cdiv(k, meta["BLOCK_K"]), nsplit)  # noqa: E731
    wrap_triton(_rows_grads_kernel)[grid](
        features, *big_strides(features), dfeat, order, bounds, e,
        x, *x_strides, dx if mode == MAP else x, *(x_strides if mode != MAP else big_strides(dx)),
        part, k, hw, triton.cdiv(hw, nsplit), MODE=mode)
    if mode != MAP:
        sum_splits(part, dx, 1.0, 0 if gate is None else 2, gate)
    return dfeat, dx
