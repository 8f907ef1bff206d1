"""sharpen_focus_loss, fused: per-sample (inner_iou, last_iou, consistency) of Sharpen Focus Eq. 9.

With x_* the raw attention maps of the chosen kind (target t / confuser c, inner / last layer),
den(x) = max(max_p x, 0) + eps, a = x / den(x) if normalize else x:
  M_last  = sigmoid(omega (x_lt / den(x_lt) - sigma)),
  M_inner = sigmoid(omega (R(x_lt / den(x_lt)) - sigma)), R = bilinear resize to the inner size,
  inner_iou = 2 sum min(a_it, a_ic) M_inner / (sum (a_it + a_ic) + eps), last_iou likewise,
  consistency = alpha - sum a_it M_inner / (sum a_it + eps).
Forward: per layer one pass over F (and the MAP gradients) builds both maps
(_attention_pass; the channel kinds first take the channel means of G, _weights_pass), then one
program per sample does all the map math. Backward: the maps are rebuilt the same way, one
program per sample gives dL/dx for the four maps (and, with mask_grad, the mask's share, whose
resize adjoint and normalization a second per-sample program add to dL/dx_lt), then per layer
one pass over F writes dF, dG_t, dG_c. N x K gradients (constant over pixels) act through
weights g / K (pixel), ReLU(g) (channel), g (gradcam) and get an N x K gradient back.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from ._attention_pass import Side, attention_grads, attention_maps
from ._common import CHANNEL, MAP, PIXEL, RELU_VEC, VEC, launchable, map_block, register
from ._maps import (consistency_grads, iou_grads, load_map, mask_at, max_count, norm_den,
                    norm_grad, resize_args, sigmoid_mask, tie_sums)
from ._weights_pass import channel_means, spread_weights
from .soft_mask import mask_source_grad


@triton.jit
def _den(mx, eps, NORMALIZE: tl.constexpr):
    """Divisor of a map: max(mx, 0) + eps when normalizing, else 1."""
    if NORMALIZE:
        d = norm_den(mx, eps)
    else:
        d = 1.0
    return d


@triton.jit
def _inner_chunk(it_ptr, ic_ptr, lt_ptr, n, start, offs, HWi, wi, hl, wl, scale_h, scale_w,
                 den_m, sigma, omega, RESIZE: tl.constexpr):
    """(x_it, x_ic, M_inner, valid) at inner pixels start + offs (M gathered from x_lt)."""
    xt, valid = load_map(it_ptr, n, start, offs, HWi)
    xc = load_map(ic_ptr, n, start, offs, HWi)[0]
    m = mask_at(lt_ptr, n, start + offs, valid, den_m, hl, wl, wi, scale_h, scale_w, sigma, omega,
                RESIZE)
    return xt, xc, tl.where(valid, m, 0.0), valid


@triton.jit
def _last_chunk(lt_ptr, lc_ptr, n, start, offs, HWl, den_m, sigma, omega):
    """(x_lt, x_lc, M_last, valid) at last-layer pixels start + offs."""
    xt, valid = load_map(lt_ptr, n, start, offs, HWl)
    xc = load_map(lc_ptr, n, start, offs, HWl)[0]
    return xt, xc, tl.where(valid, sigmoid_mask(xt / den_m, sigma, omega), 0.0), valid


@triton.jit
def _pair_sums(a, b, m):
    """Chunk sums of one (target a, confuser b, mask M) pair: sum min(a,b) M, sum a, sum b,
    sum a M (consistency numerator)."""
    return (tl.sum(tl.minimum(a, b) * m, axis=0), tl.sum(a, axis=0), tl.sum(b, axis=0),
            tl.sum(a * m, axis=0))


@triton.jit
def _pair_grads(xt, xc, m, den_t, den_c, inter, d, g, g_cons, cons, e, omega,
                CONSISTENCY: tl.constexpr):
    """(dL/da, dL/db, dL/dz of the mask) of g * iou(a, b, M) [+ g_cons * consistency(a, M)]
    with a = x_t / den_t, b = x_c / den_c, M = sigmoid(z)."""
    a = xt / den_t
    b = xc / den_c
    ga, gb, gm = iou_grads(a, b, m, inter, d)
    ga = g * ga
    gb = g * gb
    gm = g * gm
    if CONSISTENCY:
        ca, cm = consistency_grads(a, m, cons, e)
        ga += g_cons * ca
        gm += g_cons * cm
    return ga, gb, gm * omega * m * (1.0 - m)


@triton.jit
def _sharpen_focus_maps_kernel(
        it_ptr, ic_ptr, lt_ptr, lc_ptr, gi_ptr, gl_ptr, gc_ptr, out_i, out_l, out_c,
        dit_ptr, dic_ptr, dlt_ptr, dlc_ptr, gzi_ptr, gzl_ptr,
        HWi, wi, HWl, hl, wl, scale_h, scale_w, sigma, omega, alpha, eps,
        NORMALIZE: tl.constexpr, RESIZE: tl.constexpr, GRAD: tl.constexpr,
        MASK_GRAD: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_L: tl.constexpr,
        ONE_TILE: tl.constexpr):
    """One sample's map math. Forward: out_i/out_l/out_c[n] = inner_iou, last_iou, consistency.
    GRAD: dL/dx of the four maps (and with MASK_GRAD dL/dz of M_inner and M_last) for upstream
    g_i, g_l, g_c. Pass 1: max and tie count of every map; pass 2: sums; with GRAD and NORMALIZE
    pass 3: per map, sum of dL/da at its max and of dL/da x below it (for norm_grad); last pass
    (GRAD): write."""
    n = tl.program_id(0).to(tl.int64)
    oi = tl.arange(0, BLOCK_I)
    ol = tl.arange(0, BLOCK_L)
    if ONE_TILE:
        it_c, vi_c = load_map(it_ptr, n, 0, oi, HWi)
        ic_c = load_map(ic_ptr, n, 0, oi, HWi)[0]
        lt_c, vl_c = load_map(lt_ptr, n, 0, ol, HWl)
        lc_c = load_map(lc_ptr, n, 0, ol, HWl)[0]
    mx_it = -float("inf")
    mx_ic = -float("inf")
    mx_lt = -float("inf")
    mx_lc = -float("inf")
    n_it = 0.0
    n_ic = 0.0
    n_lt = 0.0
    n_lc = 0.0
    for start in range(0, HWi, BLOCK_I):
        if ONE_TILE:
            xt, xc, valid = it_c, ic_c, vi_c
        else:
            xt, valid = load_map(it_ptr, n, start, oi, HWi)
            xc = load_map(ic_ptr, n, start, oi, HWi)[0]
        mx_it, n_it = max_count(xt, valid, mx_it, n_it)
        mx_ic, n_ic = max_count(xc, valid, mx_ic, n_ic)
    for start in range(0, HWl, BLOCK_L):
        if ONE_TILE:
            xt, xc, valid = lt_c, lc_c, vl_c
        else:
            xt, valid = load_map(lt_ptr, n, start, ol, HWl)
            xc = load_map(lc_ptr, n, start, ol, HWl)[0]
        mx_lt, n_lt = max_count(xt, valid, mx_lt, n_lt)
        mx_lc, n_lc = max_count(xc, valid, mx_lc, n_lc)
    den_m = norm_den(mx_lt, eps)
    den_it = _den(mx_it, eps, NORMALIZE)
    den_ic = _den(mx_ic, eps, NORMALIZE)
    den_lt = _den(mx_lt, eps, NORMALIZE)
    den_lc = _den(mx_lc, eps, NORMALIZE)
    if ONE_TILE:
        mi_c = mask_at(lt_ptr, n, oi, vi_c, den_m, hl, wl, wi, scale_h, scale_w, sigma, omega,
                       RESIZE)
        mi_c = tl.where(vi_c, mi_c, 0.0)
        ml_c = tl.where(vl_c, sigmoid_mask(lt_c / den_m, sigma, omega), 0.0)
    inter_i = 0.0
    sa_i = 0.0
    sb_i = 0.0
    cons = 0.0
    for start in range(0, HWi, BLOCK_I):
        if ONE_TILE:
            xt, xc, m = it_c, ic_c, mi_c
        else:
            xt, xc, m, valid = _inner_chunk(it_ptr, ic_ptr, lt_ptr, n, start, oi, HWi, wi, hl,
                                                wl, scale_h, scale_w, den_m, sigma, omega, RESIZE)
        s0, s1, s2, s3 = _pair_sums(xt / den_it, xc / den_ic, m)
        inter_i += s0
        sa_i += s1
        sb_i += s2
        cons += s3
    inter_l = 0.0
    sa_l = 0.0
    sb_l = 0.0
    for start in range(0, HWl, BLOCK_L):
        if ONE_TILE:
            xt, xc, m = lt_c, lc_c, ml_c
        else:
            xt, xc, m, valid = _last_chunk(lt_ptr, lc_ptr, n, start, ol, HWl, den_m, sigma, omega)
        s0, s1, s2, s3 = _pair_sums(xt / den_lt, xc / den_lc, m)
        inter_l += s0
        sa_l += s1
        sb_l += s2
    d_i = sa_i + sb_i + eps
    d_l = sa_l + sb_l + eps
    e = sa_i + eps
    if not GRAD:
        tl.store(out_i + n, 2.0 * inter_i / d_i)
        tl.store(out_l + n, 2.0 * inter_l / d_l)
        tl.store(out_c + n, alpha - cons / e)
    else:
        g_i = tl.load(gi_ptr + n)
        g_l = tl.load(gl_ptr + n)
        g_c = tl.load(gc_ptr + n)
        gt_it, r_it, gt_ic, r_ic, gt_lt, r_lt, gt_lc, r_lc = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        if NORMALIZE:
            for start in range(0, HWi, BLOCK_I):
                if ONE_TILE:
                    xt, xc, m, valid = it_c, ic_c, mi_c, vi_c
                else:
                    xt, xc, m, valid = _inner_chunk(it_ptr, ic_ptr, lt_ptr, n, start, oi, HWi, wi,
                                                    hl, wl, scale_h, scale_w, den_m, sigma, omega,
                                                    RESIZE)
                dt, dc, gz = _pair_grads(xt, xc, m, den_it, den_ic, inter_i, d_i, g_i, g_c, cons,
                                         e, omega, True)
                s0, s1 = tie_sums(dt, xt, valid, mx_it)
                s2, s3 = tie_sums(dc, xc, valid, mx_ic)
                gt_it, r_it, gt_ic, r_ic = gt_it + s0, r_it + s1, gt_ic + s2, r_ic + s3
            for start in range(0, HWl, BLOCK_L):
                if ONE_TILE:
                    xt, xc, m, valid = lt_c, lc_c, ml_c, vl_c
                else:
                    xt, xc, m, valid = _last_chunk(lt_ptr, lc_ptr, n, start, ol, HWl, den_m,
                                                   sigma, omega)
                dt, dc, gz = _pair_grads(xt, xc, m, den_lt, den_lc, inter_l, d_l, g_l, g_c, cons,
                                         e, omega, False)
                s0, s1 = tie_sums(dt, xt, valid, mx_lt)
                s2, s3 = tie_sums(dc, xc, valid, mx_lc)
                gt_lt, r_lt, gt_lc, r_lc = gt_lt + s0, r_lt + s1, gt_lc + s2, r_lc + s3
        for start in range(0, HWi, BLOCK_I):
            if ONE_TILE:
                xt, xc, m, valid = it_c, ic_c, mi_c, vi_c
            else:
                xt, xc, m, valid = _inner_chunk(it_ptr, ic_ptr, lt_ptr, n, start, oi, HWi, wi, hl,
                                                wl, scale_h, scale_w, den_m, sigma, omega, RESIZE)
            dt, dc, gz = _pair_grads(xt, xc, m, den_it, den_ic, inter_i, d_i, g_i, g_c, cons, e,
                                     omega, True)
            if NORMALIZE:
                dt = norm_grad(dt, xt, mx_it, n_it, gt_it, r_it, eps)
                dc = norm_grad(dc, xc, mx_ic, n_ic, gt_ic, r_ic, eps)
            p = n * HWi + start + oi
            tl.store(dit_ptr + p, dt, mask=valid)
            tl.store(dic_ptr + p, dc, mask=valid)
            if MASK_GRAD:
                tl.store(gzi_ptr + p, gz, mask=valid)
        for start in range(0, HWl, BLOCK_L):
            if ONE_TILE:
                xt, xc, m, valid = lt_c, lc_c, ml_c, vl_c
            else:
                xt, xc, m, valid = _last_chunk(lt_ptr, lc_ptr, n, start, ol, HWl, den_m, sigma,
                                               omega)
            dt, dc, gz = _pair_grads(xt, xc, m, den_lt, den_lc, inter_l, d_l, g_l, g_c, cons, e,
                                     omega, False)
            if NORMALIZE:
                dt = norm_grad(dt, xt, mx_lt, n_lt, gt_lt, r_lt, eps)
                dc = norm_grad(dc, xc, mx_lc, n_lc, gt_lc, r_lc, eps)
            p = n * HWl + start + ol
            tl.store(dlt_ptr + p, dt, mask=valid)
            tl.store(dlc_ptr + p, dc, mask=valid)
            if MASK_GRAD:
                tl.store(gzl_ptr + p, gz, mask=valid)


def _map_math(inner, last, sigma, omega, alpha, normalize, eps, upstream=None, mask_grad=False):
    """Launch the per-sample map program on the raw maps inner = (x_it, x_ic), last = (x_lt,
    x_lc). Forward (upstream None): the three per-sample parts. Backward: dL/dx of the four
    maps for upstream = (g_inner_iou, g_last_iou, g_consistency), mask share included."""
    n, hi, wi = inner[0].shape
    _, hl, wl = last[0].shape
    grad = upstream is not None
    outs = ([torch.empty(n, device=inner[0].device, dtype=inner[0].dtype) for _ in range(3)]
            if not grad else [torch.empty_like(x) for x in (*inner, *last)])
    if not launchable(inner[0], last[0]):
        return outs
    gz = [torch.empty_like(inner[0]), torch.empty_like(last[0])] if grad and mask_grad else None
    block_i, one_i, warps_i = map_block(hi * wi)
    block_l, one_l, warps_l = map_block(hl * wl)
    ph = inner[0]  # placeholder for the pointers this launch does not use
    wrap_triton(_sharpen_focus_maps_kernel)[(n,)](
        *inner, *last, *(upstream if grad else [ph] * 3), *([ph] * 3 if grad else outs),
        *(outs if grad else [ph] * 4), *(gz if gz else [ph] * 2),
        hi * wi, wi, hl * wl, hl, wl, *resize_args(hl, wl, hi, wi)[:2], sigma, omega, alpha, eps,
        NORMALIZE=normalize, RESIZE=(hi, wi) != (hl, wl), GRAD=grad, MASK_GRAD=gz is not None,
        BLOCK_I=block_i, BLOCK_L=block_l, ONE_TILE=one_i and one_l,
        num_warps=max(warps_i, warps_l))
    if gz is not None:
        mask_source_grad(gz[0], gz[1], last[0], outs[2], True, eps)
    return outs


def _side(features, grads, kind):
    """The side of the pass over F that makes the attention map of ``grads`` (4-D or N x K)."""
    if kind == PIXEL:
        return Side(grads, MAP if grads.dim() == 4 else VEC, 1.0 / max(features.shape[1], 1))
    if grads.dim() == 4:
        return Side(channel_means(grads, kind == CHANNEL), VEC)
    return Side(grads, RELU_VEC if kind == CHANNEL else VEC)


def _layer_maps(features, grads_t, grads_c, kind):
    """(sides, [x_t, x_c]): both raw attention maps of a layer in one pass over F."""
    sides = [_side(features, g, kind) for g in (grads_t, grads_c)]
    return sides, attention_maps(features, sides)


def _layer_grads(features, grads_t, grads_c, kind, sides, maps, dmaps):
    """(dF, dG_t, dG_c) of a layer from dL/dx_t, dL/dx_c, in one pass over F."""
    dfeat, dsides = attention_grads(features, sides, dmaps, maps)
    hw = features.shape[2] * features.shape[3]
    dgrads = [d if kind == PIXEL or g.dim() == 2 else
              spread_weights(d, g, kind == CHANNEL, 1.0 / max(hw, 1))
              for g, d in zip((grads_t, grads_c), dsides)]
    return dfeat, *dgrads


@register
def sharpen_focus_loss(inner_features: Tensor, inner_grads_target: Tensor,
                       inner_grads_confuser: Tensor, last_features: Tensor,
                       last_grads_target: Tensor, last_grads_confuser: Tensor, kind: int,
                       sigma: float, omega: float, alpha: float, normalize: bool, mask_grad: bool,
                       eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample (inner_iou, last_iou, consistency), float32 N each."""
    _, inner = _layer_maps(inner_features, inner_grads_target, inner_grads_confuser, kind)
    _, last = _layer_maps(last_features, last_grads_target, last_grads_confuser, kind)
    return tuple(_map_math(inner, last, sigma, omega, alpha, normalize, eps))


@register
def sharpen_focus_loss_backward(
        grad_inner_iou: Tensor, grad_last_iou: Tensor, grad_consistency: Tensor,
        inner_features: Tensor, inner_grads_target: Tensor, inner_grads_confuser: Tensor,
        last_features: Tensor, last_grads_target: Tensor, last_grads_confuser: Tensor,
        kind: int, sigma: float, omega: float, alpha: float, normalize: bool, mask_grad: bool,
        eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the six tensor inputs (each in its input's dtype, layout and shape)."""
    layers = ((inner_features, inner_grads_target, inner_grads_confuser),
              (last_features, last_grads_target, last_grads_confuser))
    built = [_layer_maps(*layer, kind) for layer in layers]
    dmaps = _map_math(built[0][1], built[1][1], sigma, omega, alpha, normalize, eps,
                      (grad_inner_iou, grad_last_iou, grad_consistency), mask_grad)
    grads = []
    for layer, (sides, maps), dlayer in zip(layers, built, (dmaps[:2], dmaps[2:])):
        grads += _layer_grads(*layer, kind, sides, maps, dlayer)
    return tuple(grads)
