"""soft_mask: M = sigmoid(omega * (R(A / den) - sigma)), den = max(max_p A, 0) + eps, R the
bilinear resize (align_corners=False, torch's source indices) to (out_h, out_w) -- Eq. 7.

Backward in two per-sample programs: (1) z-gradient on the output grid,
gz = g * omega * M (1 - M); (2) ``mask_source_grad``: dn = R^T gz (the resize's adjoint as a
gather, no atomics) and the normalization backward to dA. Step (2) is shared with
sharpen_focus_loss(mask_grad=True).
"""
import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ._common import launchable, map_block, register
from ._maps import (load_map, mask_at, max_count, norm_den, norm_grad, resize_adjoint,
                    resize_args, tie_fold)


@triton.jit
def _soft_mask_kernel(x_ptr, g_ptr, out_ptr, in_h, in_w, out_h, out_w, scale_h, scale_w,
                      sigma, omega, eps, RESIZE: tl.constexpr, GRAD: tl.constexpr,
                      BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr):
    """out = M on the output grid, or (GRAD) gz = g * omega * M * (1 - M)."""
    n = tl.program_id(0).to(tl.int64)
    hw_in = in_h * in_w
    hw_out = out_h * out_w
    offs = tl.arange(0, BLOCK_IN)
    mx = -float("inf")
    cnt = 0.0
    for start in range(0, hw_in, BLOCK_IN):
        x, valid = load_map(x_ptr, n, start, offs, hw_in)
        mx, cnt = max_count(x, valid, mx, cnt)
    den = norm_den(mx, eps)
    offs = tl.arange(0, BLOCK_OUT)
    for start in range(0, hw_out, BLOCK_OUT):
        p = start + offs
        valid = p < hw_out
        m = mask_at(x_ptr, n, p, valid, den, in_h, in_w, out_w, scale_h, scale_w, sigma, omega,
                    RESIZE)
        if GRAD:
            g = tl.load(g_ptr + n * hw_out + p, mask=valid, other=0.0)
            m = g * omega * m * (1.0 - m)
        tl.store(out_ptr + n * hw_out + p, m, mask=valid)


@triton.jit
def _source_grad(gza_ptr, gzb_ptr, n, p, valid, in_h, in_w, out_h, out_w, scale_h, scale_w,
                 inv_h, inv_w, taps_h, taps_w, RESIZE: tl.constexpr, HAS_B: tl.constexpr):
    """dL/d(A / den) at input pixels p: R^T gz_a (gz_a itself if not RESIZE) + gz_b."""
    if RESIZE:
        d = resize_adjoint(gza_ptr, n, p, valid, in_h, in_w, out_h, out_w, scale_h, scale_w,
                           inv_h, inv_w, taps_h, taps_w)
    else:
        d = tl.load(gza_ptr + n * (in_h * in_w) + p, mask=valid, other=0.0)
    if HAS_B:
        d += tl.load(gzb_ptr + n * (in_h * in_w) + p, mask=valid, other=0.0)
    return d


@triton.jit
def _mask_source_grad_kernel(gza_ptr, gzb_ptr, x_ptr, out_ptr, in_h, in_w, out_h, out_w,
                             scale_h, scale_w, inv_h, inv_w, taps_h, taps_w, eps,
                             RESIZE: tl.constexpr, HAS_B: tl.constexpr, ACCUMULATE: tl.constexpr,
                             BLOCK: tl.constexpr, ONE_TILE: tl.constexpr):
    """out (+)= dL/dA through the mask's normalization A / den, den = max(max A, 0) + eps."""
    n = tl.program_id(0).to(tl.int64)
    hw = in_h * in_w
    offs = tl.arange(0, BLOCK)
    if ONE_TILE:
        x_c, valid_c = load_map(x_ptr, n, 0, offs, hw)
        d_c = _source_grad(gza_ptr, gzb_ptr, n, offs, valid_c, in_h, in_w, out_h, out_w,
                           scale_h, scale_w, inv_h, inv_w, taps_h, taps_w, RESIZE, HAS_B)
    mx = -float("inf")
    cnt = 0.0
    g_tied = 0.0
    rest = 0.0
    for start in range(0, hw, BLOCK):
        if ONE_TILE:
            x, valid, d = x_c, valid_c, d_c
        else:
            x, valid = load_map(x_ptr, n, start, offs, hw)
            d = _source_grad(gza_ptr, gzb_ptr, n, start + offs, valid, in_h, in_w, out_h, out_w,
                             scale_h, scale_w, inv_h, inv_w, taps_h, taps_w, RESIZE, HAS_B)
        mx, cnt, g_tied, rest = tie_fold(d, x, valid, mx, cnt, g_tied, rest)
    for start in range(0, hw, BLOCK):
        if ONE_TILE:
            x, valid, d = x_c, valid_c, d_c
        else:
            x, valid = load_map(x_ptr, n, start, offs, hw)
            d = _source_grad(gza_ptr, gzb_ptr, n, start + offs, valid, in_h, in_w, out_h, out_w,
                             scale_h, scale_w, inv_h, inv_w, taps_h, taps_w, RESIZE, HAS_B)
        r = norm_grad(d, x, mx, cnt, g_tied, rest, eps)
        if ACCUMULATE:
            r += tl.load(out_ptr + n * hw + start + offs, mask=valid, other=0.0)
        tl.store(out_ptr + n * hw + start + offs, r, mask=valid)


def mask_source_grad(gz_a, gz_b, attn, out, accumulate, eps):
    """out (+)= dL/dattn given gz_a = dL/dz on z = R(attn / den) (any grid; identity R when it
    is attn's grid) and optionally gz_b = dL/dz on attn's own grid."""
    n, h, w = attn.shape
    oh, ow = gz_a.shape[-2:]
    if launchable(attn):
        block, one_tile, warps = map_block(h * w)
        wrap_triton(_mask_source_grad_kernel)[(n,)](
            gz_a, gz_a if gz_b is None else gz_b, attn, out, h, w, oh, ow,
            *resize_args(h, w, oh, ow), eps,
            RESIZE=(oh, ow) != (h, w), HAS_B=gz_b is not None, ACCUMULATE=accumulate,
            BLOCK=block, ONE_TILE=one_tile, num_warps=warps)
    return out


def _mask_launch(attn, grad, sigma, omega, out_h, out_w, eps):
    """M (grad None) or gz = grad * omega * M (1 - M), on the (out_h, out_w) grid."""
    n, h, w = attn.shape
    out = torch.empty(n, out_h, out_w, device=attn.device, dtype=attn.dtype)
    if launchable(attn, out):
        scale_h, scale_w = resize_args(h, w, out_h, out_w)[:2]
        block_in, _, _ = map_block(h * w)
        block_out, _, warps = map_block(out_h * out_w)
        wrap_triton(_soft_mask_kernel)[(n,)](
            attn, attn if grad is None else grad, out, h, w, out_h, out_w, scale_h, scale_w,
            sigma, omega, eps, RESIZE=(out_h, out_w) != (h, w), GRAD=grad is not None,
            BLOCK_IN=block_in, BLOCK_OUT=block_out, num_warps=warps)
    return out


@register
def soft_mask(attn: Tensor, sigma: float, omega: float, out_h: int, out_w: int,
              eps: float) -> Tensor:
    """sigmoid(omega * (R(normalize(A)) - sigma)) on the (out_h, out_w) grid."""
    return _mask_launch(attn, None, sigma, omega, out_h, out_w, eps)


@register
def soft_mask_backward(grad: Tensor, attn: Tensor, sigma: float, omega: float, out_h: int,
                       out_w: int, eps: float) -> Tensor:
    """dL/dA of soft_mask for grad = dL/dM (out_h x out_w)."""
    gz = _mask_launch(attn, grad, sigma, omega, out_h, out_w, eps)
    return mask_source_grad(gz, None, attn, torch.empty_like(attn), False, eps)
