"""normalize_attention: y = A / (max(max_p A, 0) + eps) per sample, and its backward.

Backward (den = max(max A, 0) + eps, ties at the max share evenly, clamp passes where max >= 0):
  dA = g / den - [A == max] [max >= 0] / count * sum_p g A / den^2, evaluated at the ties in the
  cancellation-free form of _maps.norm_grad (running sums of g at the max, g A below it).
``normalize_grad`` takes the upstream g = dL/dy as R^T g_a (+ g_b): g_a on any grid, R the
bilinear resize from A's grid to it (its adjoint a gather; identity on A's own grid), g_b on A's
grid -- the backward of soft_mask and of the fused loss's mask (mask_grad) end in it.
One program per sample; the map stays in registers up to MAP_TILE pixels.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import launch_per_sample, launchable, register
from ._maps import (load_map, map_chunk, map_max, map_tile, map_values, norm_den, norm_grad,
                    resize_adjoint, resize_args, tie_fold)


@triton.jit
def _normalize_kernel(x_ptr, out_ptr, HW, eps, BLOCK: tl.constexpr, ONE_TILE: tl.constexpr):
    """out = x / den."""
    n = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    src = (x_ptr, n, HW)
    tile = map_tile(map_values, src, offs, ONE_TILE)
    den = norm_den(map_max(tile, src, offs, BLOCK, ONE_TILE)[0], eps)
    for start in range(0, HW, BLOCK):
        x, valid = map_chunk(tile, map_values, src, start, offs, ONE_TILE)
        tl.store(out_ptr + n * HW + start + offs, x / den, mask=valid)


@triton.jit
def _upstream(src, start, offs, RESIZE: tl.constexpr, HAS_B: tl.constexpr):
    """Loader (see _maps.map_chunk): (x, valid, g) at input pixels start + offs, with
    g = R^T g_a (g_a itself unless RESIZE) + g_b (if HAS_B)."""
    ga_ptr, gb_ptr, x_ptr, n, in_h, in_w, out_h, out_w, scale_h, scale_w, inv_h, inv_w, \
        taps_h, taps_w = src
    hw = in_h * in_w
    x, valid = load_map(x_ptr, n, start, offs, hw)
    p = start + offs
    if RESIZE:
        g = resize_adjoint(ga_ptr, n, p, valid, in_h, in_w, out_h, out_w, scale_h, scale_w,
                           inv_h, inv_w, taps_h, taps_w)
    else:
        g = tl.load(ga_ptr + n * hw + p, mask=valid, other=0.0)
    if HAS_B:
        g += tl.load(gb_ptr + n * hw + p, mask=valid, other=0.0)
    return x, valid, g


@triton.jit
def _normalize_grad_kernel(ga_ptr, gb_ptr, x_ptr, out_ptr, in_h, in_w, out_h, out_w,
                           scale_h, scale_w, inv_h, inv_w, taps_h, taps_w, eps,
                           RESIZE: tl.constexpr, HAS_B: tl.constexpr, ACCUMULATE: tl.constexpr,
                           BLOCK: tl.constexpr, ONE_TILE: tl.constexpr):
    """out (+)= dL/dx of y = x / den for dL/dy = R^T g_a (+ g_b): a pass of tie_fold, then
    norm_grad."""
    n = tl.program_id(0).to(tl.int64)
    hw = in_h * in_w
    offs = tl.arange(0, BLOCK)
    src = (ga_ptr, gb_ptr, x_ptr, n, in_h, in_w, out_h, out_w, scale_h, scale_w, inv_h, inv_w,
           taps_h, taps_w)
    tile = map_tile(_upstream, src, offs, ONE_TILE, RESIZE, HAS_B)
    mx = -float("inf")
    cnt = 0.0
    g_tied = 0.0
    rest = 0.0
    for start in range(0, hw, BLOCK):
        x, valid, g = map_chunk(tile, _upstream, src, start, offs, ONE_TILE, RESIZE, HAS_B)
        mx, cnt, g_tied, rest = tie_fold(g, x, valid, mx, cnt, g_tied, rest)
    for start in range(0, hw, BLOCK):
        x, valid, g = map_chunk(tile, _upstream, src, start, offs, ONE_TILE, RESIZE, HAS_B)
        r = norm_grad(g, x, mx, cnt, g_tied, rest, eps)
        if ACCUMULATE:
            r += tl.load(out_ptr + n * hw + start + offs, mask=valid, other=0.0)
        tl.store(out_ptr + n * hw + start + offs, r, mask=valid)


def normalize_grad(grad_a, grad_b, attn, out, accumulate, eps):
    """out (+)= dL/dattn of y = normalize(attn) for dL/dy = R^T grad_a (+ grad_b): grad_a on
    any grid (R the bilinear resize from attn's grid; identity when it is attn's grid),
    grad_b (optional) on attn's grid."""
    n, h, w = attn.shape
    oh, ow = grad_a.shape[-2:]
    if launchable(attn):
        launch_per_sample(
            _normalize_grad_kernel, n, h * w, grad_a, grad_a if grad_b is None else grad_b,
            attn, out, h, w, oh, ow, *resize_args(h, w, oh, ow), eps,
            RESIZE=(oh, ow) != (h, w), HAS_B=grad_b is not None, ACCUMULATE=accumulate)
    return out


@register
def normalize_attention(attn: Tensor, eps: float) -> Tensor:
    """A / (max(max_p A, 0) + eps) per sample."""
    out = torch.empty_like(attn)
    n, h, w = attn.shape
    if launchable(attn):
        launch_per_sample(_normalize_kernel, n, h * w, attn, out, h * w, eps)
    return out


@register
def normalize_attention_backward(grad: Tensor, attn: Tensor, eps: float) -> Tensor:
    """dL/dA of normalize_attention for grad = dL/dy."""
    return normalize_grad(grad, None, attn, torch.empty_like(attn), False, eps)
