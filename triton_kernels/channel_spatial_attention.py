"""channel_spatial_attention (GGAM Eq. 1-3): u[n,p] = sum_c A[n,c,p] S[n,c],
T[n,p] = u / (sum_p u + eps), D[n,c,p] = A[n,c,p] T[n,p].

Forward: one read of A for u (a VEC side of _attention_pass, no ReLU), a per-sample program for
T, one read of A to write D. Backward for (dD, dT), U = sum_p u:
  r[n,p] = sum_c dD A  and u again, in one read of A and dD (a MAP and a VEC side),
  du[n,p] = (dT + r - sum_q (dT + r) T) / (U + eps)     (per-sample program),
  dA = dD T + du S,  dS[n,c] = sum_p du A               (one read of A and dD).
"""
import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ._attention_pass import Side, attention_grads, attention_maps
from ._common import (MAP, VEC, big_autotune, big_strides, launch_per_sample, launchable,
                      num_splits, register, shared_layout)
from ._maps import load_map, map_chunk, map_tile
from ._reduce import channel_block_program, load_tile, offsets_like


@triton.jit
def _spatial_chunk(src, start, offs, GRAD: tl.constexpr, OPT2: tl.constexpr):
    """Loader (see _maps.map_chunk): (u, valid, h = dT + r, T) at pixels start + offs (GRAD;
    the forward reads u only and returns it in place of h and T)."""
    u_ptr, dt_ptr, r_ptr, t_ptr, n, HW = src
    u, valid = load_map(u_ptr, n, start, offs, HW)
    h = u
    t = u
    if GRAD:
        h = load_map(dt_ptr, n, start, offs, HW)[0] + load_map(r_ptr, n, start, offs, HW)[0]
        t = load_map(t_ptr, n, start, offs, HW)[0]
    return u, valid, h, t


@triton.jit
def _spatial_kernel(u_ptr, dt_ptr, r_ptr, t_ptr, out_ptr, HW, eps, GRAD: tl.constexpr,
                    BLOCK: tl.constexpr, ONE_TILE: tl.constexpr):
    """out = T = u / (sum u + eps) (forward), or (GRAD) du from h = dT + r and the forward T."""
    n = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    src = (u_ptr, dt_ptr, r_ptr, t_ptr, n, HW)
    tile = map_tile(_spatial_chunk, src, offs, ONE_TILE, GRAD)
    total = 0.0
    sum_ht = 0.0
    for start in range(0, HW, BLOCK):
        u, valid, h, t = map_chunk(tile, _spatial_chunk, src, start, offs, ONE_TILE, GRAD)
        total += tl.sum(u, axis=0)
        if GRAD:
            sum_ht += tl.sum(h * t, axis=0)
    den = total + eps
    for start in range(0, HW, BLOCK):
        u, valid, h, t = map_chunk(tile, _spatial_chunk, src, start, offs, ONE_TILE, GRAD)
        if GRAD:
            v = (h - sum_ht) / den
        else:
            v = u / den
        tl.store(out_ptr + n * HW + start + offs, v, mask=valid)


def _spatial(u, eps, grad_spatial=None, r=None, spatial=None):
    out = torch.empty_like(u)
    n, h, w = u.shape
    if launchable(u):
        grad = grad_spatial is not None
        launch_per_sample(
            _spatial_kernel, n, h * w, u, grad_spatial if grad else u, r if grad else u,
            spatial if grad else u, out, h * w, eps, GRAD=grad)
    return out


@big_autotune(key=["K", "HW", "a_sk", "a_sp"])
@triton.jit
def _scale_pixels_kernel(a_ptr, a_sn, a_sk, a_sp, t_ptr, d_ptr, d_sn, d_sk, d_sp, K, HW, p_chunk,
                         SHARED: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    """D[n,c,p] = A[n,c,p] * T[n,p] over split s's pixels, stored in D's dtype."""
    n, k, kmask, p_lo, p_hi, s = channel_block_program(K, HW, p_chunk, BLOCK_K, BLOCK_P)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        pmask = p < p_hi
        mask, off, a = load_tile(a_ptr, a_sn, a_sk, a_sp, n, k, kmask, p, pmask)
        t = tl.load(t_ptr + n * HW + p, mask=pmask, other=0.0)
        tl.store(d_ptr + offsets_like(off, d_sn, d_sk, d_sp, n, k, p, SHARED), a * t[None, :],
                 mask=mask)


@register
def channel_spatial_attention(features: Tensor, channel_weights: Tensor,
                              eps: float) -> tuple[Tensor, Tensor]:
    """(D in the features' dtype and layout, T float32 N x H x W)."""
    n, k, h, w = features.shape
    u = attention_maps(features, [Side(channel_weights, VEC)], relu=False)[0]
    spatial = _spatial(u, eps)
    out = torch.empty_like(features)
    if launchable(features):
        nsplit = num_splits(features.device, n * triton.cdiv(k, 64), h * w)
        grid = lambda meta: (n * triton.cdiv(k, meta["BLOCK_K"]), nsplit)  # noqa: E731
        wrap_triton(_scale_pixels_kernel)[grid](
            features, *big_strides(features), spatial, out, *big_strides(out), k, h * w,
            triton.cdiv(h * w, nsplit), SHARED=shared_layout(features, out))
    return out, spatial


@register
def channel_spatial_attention_backward(grad_out: Tensor, grad_spatial: Tensor, features: Tensor,
                                       channel_weights: Tensor, spatial: Tensor,
                                       eps: float) -> tuple[Tensor, Tensor]:
    """(dL/dA, dL/dS) for grad_out = dL/dD and grad_spatial = dL/dT."""
    r, u = attention_maps(features, [Side(grad_out, MAP), Side(channel_weights, VEC)], relu=False)
    du = _spatial(u, eps, grad_spatial, r, spatial)
    dfeat, (_, dweights) = attention_grads(
        features, [Side(grad_out, MAP), Side(channel_weights, VEC)], [spatial, du], [spatial, du],
        relu=False, write_dx=False)
    return dfeat, dweights
