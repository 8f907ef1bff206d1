"""sharpen_focus_loss, fused: per-sample (inner_iou, last_iou, consistency) of Sharpen Focus Eq. 9.

With x_* the raw attention maps of the chosen kind (target t / confuser c, inner / last layer),
den(x) = max(max_p x, 0) + eps, a = x / den(x) if normalize else x:
  M_last  = sigmoid(omega (x_lt / den(x_lt) - sigma)),
  M_inner = sigmoid(omega (R(x_lt / den(x_lt)) - sigma)), R = bilinear resize to the inner size,
  inner_iou = 2 sum min(a_it, a_ic) M_inner / (sum (a_it + a_ic) + eps), last_iou likewise,
  consistency = alpha - sum a_it M_inner / (sum a_it + eps).
Forward: per layer one pass over F (and the MAP gradients) builds both maps
(_attention_pass; the channel kinds first take the channel means of G, _weights_pass), then one
program per sample does all the map math; the raw maps (2 x N x H x W) and the channel means
(2 x N x K, channel kinds) of each layer are returned as the hidden outputs of attnfast._schema.
Backward, from those saved maps and weights (nothing is rebuilt): one program per sample gives
dL/dx for the four maps (and, with mask_grad, the mask's share, whose resize adjoint and
normalization a second per-sample program add to dL/dx_lt), then per layer one pass over F
writes dF, dG_t, dG_c. N x K gradients (constant over pixels) act through
weights g / K (pixel), ReLU(g) (channel), g (gradcam) and get an N x K gradient back.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from attnfast._schema import KIND_NAMES, positive_weights

from ._attention_pass import attention_grads, attention_maps, kind_side
from ._common import launchable, map_block, register
from ._maps import (consistency_grads, iou_grads, load_map, map_chunk, map_tile, mask_at,
                    max_count, nan_min, norm_den, norm_grad, resize_args, sigmoid_mask, tie_sums)
from ._weights_pass import spread_weights
from .normalize_attention import normalize_grad


@triton.jit
def _den(mx, eps, NORMALIZE: tl.constexpr):
    """Divisor of a map: max(mx, 0) + eps when normalizing, else 1."""
    if NORMALIZE:
        d = norm_den(mx, eps)
    else:
        d = 1.0
    return d


@triton.jit
def _pair(src, start, offs, OPT1: tl.constexpr, OPT2: tl.constexpr):
    """Loader (see _maps.map_chunk) of a layer's two maps, src = (x_t ptr, x_c ptr, n, HW):
    (x_t, x_c, valid) at pixels start + offs."""
    t_ptr, c_ptr, n, HW = src
    xt, valid = load_map(t_ptr, n, start, offs, HW)
    return xt, load_map(c_ptr, n, start, offs, HW)[0], valid


@triton.jit
def _layer_max(tile, src, offs, BLOCK: tl.constexpr, ONE_TILE: tl.constexpr):
    """(max, count at the max) of x_t and of x_c of a layer, src as in _pair, in one pass;
    tile: map_tile(_pair, src, offs, ONE_TILE)."""
    mx_t = -float("inf")
    n_t = 0.0
    mx_c = -float("inf")
    n_c = 0.0
    for start in range(0, src[3], BLOCK):
        xt, xc, valid = map_chunk(tile, _pair, src, start, offs, ONE_TILE)
        mx_t, n_t = max_count(xt, valid, mx_t, n_t)
        mx_c, n_c = max_count(xc, valid, mx_c, n_c)
    return mx_t, n_t, mx_c, n_c


@triton.jit
def _inner_chunk(src, start, offs, ONE_TILE: tl.constexpr, RESIZE: tl.constexpr):
    """Loader of the inner layer: (x_it, x_ic, M_inner, valid) at inner pixels start + offs;
    src = (the pair's tile, its _pair src, x_lt ptr, inner width, last height and width, the
    resize scales, den of x_lt, sigma, omega); M gathered from x_lt."""
    tile, pair, lt_ptr, wi, hl, wl, scale_h, scale_w, den_m, sigma, omega = src
    xt, xc, valid = map_chunk(tile, _pair, pair, start, offs, ONE_TILE)
    m = mask_at(lt_ptr, pair[2], start + offs, valid, den_m, hl, wl, wi, scale_h, scale_w, sigma,
                omega, RESIZE)
    return xt, xc, tl.where(valid, m, 0.0), valid


@triton.jit
def _last_chunk(src, start, offs, ONE_TILE: tl.constexpr, OPT2: tl.constexpr):
    """Loader of the last layer: (x_lt, x_lc, M_last, valid) at last-layer pixels start + offs;
    src = (the pair's tile, its _pair src, den of x_lt, sigma, omega)."""
    tile, pair, den_m, sigma, omega = src
    xt, xc, valid = map_chunk(tile, _pair, pair, start, offs, ONE_TILE)
    return xt, xc, tl.where(valid, sigmoid_mask(xt / den_m, sigma, omega), 0.0), valid


@triton.jit
def _pair_grads(xt, xc, m, coef, CONSISTENCY: tl.constexpr):
    """(dL/da, dL/db, dL/dz of the mask) of g * iou(a, b, M) [+ g_cons * consistency(a, M)]
    with a = x_t / den_t, b = x_c / den_c, M = sigmoid(z); coef = (den_t, den_c, the IoU's
    sum min(a, b) M and denominator, g, g_cons, the consistency's sum a M and denominator,
    omega)."""
    den_t, den_c, inter, d, g, g_cons, cons, e, omega = coef
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
def _layer_sums(tile, LOAD: tl.constexpr, src, offs, HW, den_t, den_c, BLOCK: tl.constexpr,
                ONE_TILE: tl.constexpr, RESIZE: tl.constexpr):
    """Sums over one layer's pair a = x_t / den_t, b = x_c / den_c and its mask M (LOAD:
    _inner_chunk or _last_chunk): (sum min(a, b) M, sum a, sum b, sum a M)."""
    inter = 0.0
    sa = 0.0
    sb = 0.0
    sam = 0.0
    for start in range(0, HW, BLOCK):
        xt, xc, m, valid = map_chunk(tile, LOAD, src, start, offs, ONE_TILE, ONE_TILE, RESIZE)
        a = xt / den_t
        b = xc / den_c
        inter += tl.sum(nan_min(a, b) * m, axis=0)
        sa += tl.sum(a, axis=0)
        sb += tl.sum(b, axis=0)
        sam += tl.sum(a * m, axis=0)
    return inter, sa, sb, sam


@triton.jit
def _layer_ties(tile, LOAD: tl.constexpr, src, offs, HW, coef, mx_t, mx_c, BLOCK: tl.constexpr,
                ONE_TILE: tl.constexpr, RESIZE: tl.constexpr, CONSISTENCY: tl.constexpr):
    """Per map of a layer's pair, the sums norm_grad needs (tie_sums of dL/da over a pass):
    (sum at the max of x_t, sum of dL/da x below it, the same two for x_c)."""
    gt_t = 0.0
    r_t = 0.0
    gt_c = 0.0
    r_c = 0.0
    for start in range(0, HW, BLOCK):
        xt, xc, m, valid = map_chunk(tile, LOAD, src, start, offs, ONE_TILE, ONE_TILE, RESIZE)
        dt, dc, gz = _pair_grads(xt, xc, m, coef, CONSISTENCY)
        s0, s1 = tie_sums(dt, xt, valid, mx_t)
        s2, s3 = tie_sums(dc, xc, valid, mx_c)
        gt_t, r_t, gt_c, r_c = gt_t + s0, r_t + s1, gt_c + s2, r_c + s3
    return gt_t, r_t, gt_c, r_c


@triton.jit
def _layer_write(tile, LOAD: tl.constexpr, src, offs, HW, coef, maxima, ties, eps, n,
                 dt_ptr, dc_ptr, gz_ptr, BLOCK: tl.constexpr, ONE_TILE: tl.constexpr,
                 RESIZE: tl.constexpr, CONSISTENCY: tl.constexpr, NORMALIZE: tl.constexpr,
                 MASK_GRAD: tl.constexpr):
    """Write dL/dx_t, dL/dx_c of a layer (through the normalization when NORMALIZE, from
    maxima = (max, count) of x_t and of x_c and their _layer_ties) and, with MASK_GRAD, dL/dz
    of its mask."""
    mx_t, n_t, mx_c, n_c = maxima
    gt_t, r_t, gt_c, r_c = ties
    for start in range(0, HW, BLOCK):
        xt, xc, m, valid = map_chunk(tile, LOAD, src, start, offs, ONE_TILE, ONE_TILE, RESIZE)
        dt, dc, gz = _pair_grads(xt, xc, m, coef, CONSISTENCY)
        if NORMALIZE:
            dt = norm_grad(dt, xt, mx_t, n_t, gt_t, r_t, eps)
            dc = norm_grad(dc, xc, mx_c, n_c, gt_c, r_c, eps)
        p = n * HW + start + offs
        tl.store(dt_ptr + p, dt, mask=valid)
        tl.store(dc_ptr + p, dc, mask=valid)
        if MASK_GRAD:
            tl.store(gz_ptr + p, gz, mask=valid)


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
    (GRAD): write. ONE_TILE: both layers fit one tile; the four maps and the masks are then
    read or gathered once, before the passes."""
    n = tl.program_id(0).to(tl.int64)
    oi = tl.arange(0, BLOCK_I)
    ol = tl.arange(0, BLOCK_L)
    pair_i = (it_ptr, ic_ptr, n, HWi)
    pair_l = (lt_ptr, lc_ptr, n, HWl)
    raw_i = map_tile(_pair, pair_i, oi, ONE_TILE)
    raw_l = map_tile(_pair, pair_l, ol, ONE_TILE)
    mx_it, n_it, mx_ic, n_ic = _layer_max(raw_i, pair_i, oi, BLOCK_I, ONE_TILE)
    mx_lt, n_lt, mx_lc, n_lc = _layer_max(raw_l, pair_l, ol, BLOCK_L, ONE_TILE)
    den_m = norm_den(mx_lt, eps)
    den_it = _den(mx_it, eps, NORMALIZE)
    den_ic = _den(mx_ic, eps, NORMALIZE)
    den_lt = _den(mx_lt, eps, NORMALIZE)
    den_lc = _den(mx_lc, eps, NORMALIZE)
    src_i = (raw_i, pair_i, lt_ptr, wi, hl, wl, scale_h, scale_w, den_m, sigma, omega)
    src_l = (raw_l, pair_l, den_m, sigma, omega)
    tile_i = map_tile(_inner_chunk, src_i, oi, ONE_TILE, ONE_TILE, RESIZE)
    tile_l = map_tile(_last_chunk, src_l, ol, ONE_TILE, ONE_TILE)
    inter_i, sa_i, sb_i, cons = _layer_sums(tile_i, _inner_chunk, src_i, oi, HWi, den_it, den_ic,
                                            BLOCK_I, ONE_TILE, RESIZE)
    inter_l, sa_l, sb_l, _ = _layer_sums(tile_l, _last_chunk, src_l, ol, HWl, den_lt, den_lc,
                                         BLOCK_L, ONE_TILE, False)
    d_i = sa_i + sb_i + eps
    d_l = sa_l + sb_l + eps
    e = sa_i + eps
    if not GRAD:
        tl.store(out_i + n, 2.0 * inter_i / d_i)
        tl.store(out_l + n, 2.0 * inter_l / d_l)
        tl.store(out_c + n, alpha - cons / e)
    else:
        g_c = tl.load(gc_ptr + n)
        coef_i = (den_it, den_ic, inter_i, d_i, tl.load(gi_ptr + n), g_c, cons, e, omega)
        coef_l = (den_lt, den_lc, inter_l, d_l, tl.load(gl_ptr + n), g_c, cons, e, omega)
        ties_i = (0.0, 0.0, 0.0, 0.0)
        ties_l = (0.0, 0.0, 0.0, 0.0)
        if NORMALIZE:
            ties_i = _layer_ties(tile_i, _inner_chunk, src_i, oi, HWi, coef_i, mx_it, mx_ic,
                                 BLOCK_I, ONE_TILE, RESIZE, True)
            ties_l = _layer_ties(tile_l, _last_chunk, src_l, ol, HWl, coef_l, mx_lt, mx_lc,
                                 BLOCK_L, ONE_TILE, False, False)
        _layer_write(tile_i, _inner_chunk, src_i, oi, HWi, coef_i, (mx_it, n_it, mx_ic, n_ic),
                     ties_i, eps, n, dit_ptr, dic_ptr, gzi_ptr, BLOCK_I, ONE_TILE, RESIZE, True,
                     NORMALIZE, MASK_GRAD)
        _layer_write(tile_l, _last_chunk, src_l, ol, HWl, coef_l, (mx_lt, n_lt, mx_lc, n_lc),
                     ties_l, eps, n, dlt_ptr, dlc_ptr, gzl_ptr, BLOCK_L, ONE_TILE, False, False,
                     NORMALIZE, MASK_GRAD)


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
        normalize_grad(gz[0], gz[1], last[0], outs[2], True, eps)
    return outs


def _positive(kind):
    """How the maps of kind code ``kind`` are built (``attnfast._schema.positive_weights``)."""
    return positive_weights(KIND_NAMES[kind])


def _layer_maps(features, grads_t, grads_c, kind):
    """(maps 2 x N x H x W, weights 2 x N x K (2 x N x 0 for the pixel kind)) of a layer: both
    raw attention maps in one pass over F, and the channel weights they were built from."""
    sides = [kind_side(features, g, kind) for g in (grads_t, grads_c)]
    maps = torch.stack(attention_maps(features, sides))
    if _positive(kind) is None:
        return maps, maps.new_empty((2, features.shape[0], 0))
    return maps, torch.stack([sd.weights(maps.dtype) for sd in sides])


def _layer_grads(features, grads_t, grads_c, kind, maps, weights, dmaps):
    """(dF, dG_t, dG_c) of a layer from its saved maps and weights and dL/dx_t, dL/dx_c, in one
    pass over F."""
    sides = [kind_side(features, g, kind, w) for g, w in zip((grads_t, grads_c), weights)]
    dfeat, dsides = attention_grads(features, sides, dmaps, maps)
    hw = features.shape[2] * features.shape[3]
    positive = _positive(kind)
    dgrads = [d if positive is None or g.dim() == 2 else
              spread_weights(d, g, positive, 1.0 / max(hw, 1))
              for g, d in zip((grads_t, grads_c), dsides)]
    return dfeat, *dgrads


@register
def sharpen_focus_loss(inner_features: Tensor, inner_grads_target: Tensor,
                       inner_grads_confuser: Tensor, last_features: Tensor,
                       last_grads_target: Tensor, last_grads_confuser: Tensor, kind: int,
                       sigma: float, omega: float, alpha: float, normalize: bool, mask_grad: bool,
                       eps: float
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-sample (inner_iou, last_iou, consistency), float32 N each, then the hidden inner and
    last maps and weights."""
    inner, w_inner = _layer_maps(inner_features, inner_grads_target, inner_grads_confuser, kind)
    last, w_last = _layer_maps(last_features, last_grads_target, last_grads_confuser, kind)
    parts = _map_math(inner, last, sigma, omega, alpha, normalize, eps)
    return (*parts, inner, last, w_inner, w_last)


@register
def sharpen_focus_loss_backward(
        grad_inner_iou: Tensor, grad_last_iou: Tensor, grad_consistency: Tensor,
        inner_features: Tensor, inner_grads_target: Tensor, inner_grads_confuser: Tensor,
        last_features: Tensor, last_grads_target: Tensor, last_grads_confuser: Tensor,
        inner_maps: Tensor, last_maps: Tensor, inner_weights: Tensor, last_weights: Tensor,
        kind: int, sigma: float, omega: float, alpha: float, normalize: bool, mask_grad: bool,
        eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the six tensor inputs (each in its input's dtype, layout and shape)."""
    layers = ((inner_features, inner_grads_target, inner_grads_confuser),
              (last_features, last_grads_target, last_grads_confuser))
    maps, weights = (inner_maps, last_maps), (inner_weights, last_weights)
    dmaps = _map_math(inner_maps, last_maps, sigma, omega, alpha, normalize, eps,
                      (grad_inner_iou, grad_last_iou, grad_consistency), mask_grad)
    grads = []
    for layer, m, w, dlayer in zip(layers, maps, weights, (dmaps[:2], dmaps[2:])):
        grads += _layer_grads(*layer, kind, m, w, dlayer)
    return tuple(grads)
