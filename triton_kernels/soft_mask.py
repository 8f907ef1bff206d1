"""soft_mask: M = sigmoid(omega * (R(A / den) - sigma)), den = max(max_p A, 0) + eps, R the
bilinear resize (align_corners=False, torch's source indices) to (out_h, out_w) -- Eq. 7.

Backward in two per-sample programs: (1) z-gradient on the output grid,
gz = g * omega * M (1 - M); (2) ``normalize_attention.normalize_grad``: dn = R^T gz (the resize's
adjoint as a gather, no atomics) and the normalization backward to dA (as for
sharpen_focus_loss(mask_grad=True)).
"""
import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ._common import launchable, map_block, register
from ._maps import mask_at, map_max, norm_den, resize_args
from .normalize_attention import normalize_grad


@triton.jit
def _soft_mask_kernel(x_ptr, g_ptr, out_ptr, in_h, in_w, out_h, out_w, scale_h, scale_w,
                      sigma, omega, eps, RESIZE: tl.constexpr, GRAD: tl.constexpr,
                      BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr):
    """out = M on the output grid, or (GRAD) gz = g * omega * M * (1 - M)."""
    n = tl.program_id(0).to(tl.int64)
    hw_in = in_h * in_w
    hw_out = out_h * out_w
    mx = map_max(0, (x_ptr, n, hw_in), tl.arange(0, BLOCK_IN), BLOCK_IN, False)[0]
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
    return normalize_grad(gz, None, attn, torch.empty_like(attn), False, eps)
