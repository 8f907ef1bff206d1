"""guidance_loss, fused: per-row guidance of a layer's class maps by boxes (Rao et al., ICCV 2023).

Row r = (image rows[r], class): A[r] = the map of kind ``kind`` from F[rows[r]] and G[r]
(attnfast._schema KIND_CODES; ixg is signed, the others post-ReLU), cov[r] = the share of each
cell inside the union of the row's boxes (given, or computed in-kernel from the boxes:
_coverage), A+ = ReLU(A), Â = A+ / (max(max_p A+, 0) + eps), t = the cells' weights in the
energy's total (given: the bilinear option, docs/SPEC.md decision 24; else 1); per row (LOSS_CODES):
  energy  1 - sum(A+ cov) / sum(A+ t)  (1 when sum(A+ t) < eps)  l1    mean_p |Â - cov|
  ppce    -sum(cov log(Â + eps)) / sum(cov)  (0 when no coverage)  rrr   sum((1 - cov) A^2)
Forward: one pass over F (and G[r] of the pixel-wise kinds) reading F[rows[r]] in place builds
the R maps (_attention_pass with a row gather; the channel kinds first take the channel means of
G, _weights_pass), then one program per row does the loss from the map and the coverage. The maps
and the channel kinds' weights are the hidden outputs. Backward: one program per row turns the
upstream gradient into e[r, p] = dL/d(pre-activation sum) (the loss's backward, normalization
ties split evenly as torch.amax, ReLU'(0) = 0, the map's scale), then one pass over F grouped by
image (_rows_pass, no atomics) writes dF and dG (or the channel weights' gradient, spread back
over the pixels by _weights_pass). Arithmetic is written as eager autograd of
attnfast.reference does it, so that NaN and Inf land where they land there (docs/SPEC.md
decision 15).
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from attnfast._schema import KIND_NAMES, LOSS_CODES, map_form

from ._attention_pass import attention_maps, kind_side
from ._common import MAP, VEC, launch_per_sample, launchable, register
from ._coverage import box_cover, cover_blocks
from ._maps import load_map, map_chunk, map_tile, max_count, norm_den, norm_grad, tie_sums
from ._reduce import relu
from ._rows_pass import rows_grads
from ._weights_pass import spread_weights

_ENERGY: tl.constexpr = tl.constexpr(LOSS_CODES["energy"])
_L1: tl.constexpr = tl.constexpr(LOSS_CODES["l1"])
_PPCE: tl.constexpr = tl.constexpr(LOSS_CODES["ppce"])
_RRR: tl.constexpr = tl.constexpr(LOSS_CODES["rrr"])


def _form(kind):
    """The kind table's second column (attnfast._schema.map_form) of kind code ``kind``."""
    return map_form(KIND_NAMES[kind])


@triton.jit
def _row_values(src, start, offs, BLOCK_B: tl.constexpr, BLOCK_W: tl.constexpr):
    """Loader (see _maps.map_chunk) of row r, src = (maps, coverage, boxes, r, HW, W, B,
    image_h, image_w, ch, cw, cell weights, has_t): (A, A+, cov, valid, t) at pixels start +
    offs, cov read from the coverage or, when BLOCK_B > 0, computed from the boxes; t read from
    the cell weights when has_t, else 1."""
    a_ptr, cov_ptr, box_ptr, r, HW, W, B, image_h, image_w, ch, cw, t_ptr, has_t = src
    a, valid = load_map(a_ptr, r, start, offs, HW)
    t = tl.load(t_ptr + start + offs, mask=valid & (offs * 0 + has_t != 0), other=1.0)
    if BLOCK_B > 0:
        cov = box_cover(box_ptr, r, B, start + offs, valid, W, image_h, image_w, ch, cw,
                        BLOCK_B, BLOCK_W)
    else:
        cov = tl.load(cov_ptr + r * HW + start + offs, mask=valid, other=0.0)
    return a, relu(a), cov, valid, t


@triton.jit
def _row_stats(tile, src, offs, HW, BLOCK: tl.constexpr, ONE_TILE: tl.constexpr,
               BLOCK_B: tl.constexpr, BLOCK_W: tl.constexpr):
    """One pass over row r: (max of A+ (NaN if any), pixels at it, sum A+ t, sum A+ cov,
    sum cov, sum (1 - cov) A^2)."""
    mx = -float("inf")
    cnt = 0.0
    s = 0.0
    inside = 0.0
    c = 0.0
    q = 0.0
    for start in range(0, HW, BLOCK):
        a, ap, cov, valid, t = map_chunk(tile, _row_values, src, start, offs, ONE_TILE, BLOCK_B,
                                         BLOCK_W)
        mx, cnt = max_count(ap, valid, mx, cnt)
        s += tl.sum(ap * t, axis=0)
        inside += tl.sum(ap * cov, axis=0)
        c += tl.sum(cov, axis=0)
        q += tl.sum((1.0 - cov) * a * a, axis=0)
    return mx, cnt, s, inside, c, q


@triton.jit
def _norm_term(ap, cov, valid, den, eps, LOSS: tl.constexpr):
    """The per-pixel term of l1 (|Â - cov|) or ppce (cov log(Â + eps)), 0 where not valid."""
    x = ap / den
    if LOSS == _L1:
        t = tl.abs(x - cov)
    else:
        t = cov * tl.log(x + eps)
    return tl.where(valid, t, 0.0)


@triton.jit
def _norm_upstream(ap, cov, valid, den, c, g, HW, eps, LOSS: tl.constexpr):
    """dL/dÂ of l1 or ppce for upstream g, as autograd of the reference has it: l1
    g / HW * sign(Â - cov) (0 at 0 and at NaN); ppce -g' / C' cov / (Â + eps) with g' = g,
    C' = C where C = sum cov > 0, else g' = 0, C' = 1. 0 where not valid."""
    x = ap / den
    if LOSS == _L1:
        diff = x - cov
        d = (g / HW) * tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
    else:
        boxed = c > 0
        d = (-tl.where(boxed, g, 0.0) / tl.where(boxed, c, 1.0)) * cov / (x + eps)
    return tl.where(valid, d, 0.0)


@triton.jit
def _row_loss(tile, src, offs, HW, stats, den, eps, LOSS: tl.constexpr, BLOCK: tl.constexpr,
              ONE_TILE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_W: tl.constexpr):
    """The loss of row r from its _row_stats (l1 and ppce: one more pass, over Â)."""
    mx, cnt, s, inside, c, q = stats
    if LOSS == _ENERGY:
        low = s < eps
        loss = tl.where(low, 1.0, 1.0 - inside / tl.where(low, 1.0, s))
    elif LOSS == _RRR:
        loss = q
    else:
        u = 0.0
        for start in range(0, HW, BLOCK):
            a, ap, cov, valid, t = map_chunk(tile, _row_values, src, start, offs, ONE_TILE,
                                             BLOCK_B, BLOCK_W)
            u += tl.sum(_norm_term(ap, cov, valid, den, eps, LOSS), axis=0)
        if LOSS == _L1:
            loss = u / HW
        else:
            boxed = c > 0
            loss = tl.where(boxed, -u / tl.where(boxed, c, 1.0), 0.0)
    return loss


@triton.jit
def _pixel_grad(a, ap, cov, valid, t, g, stats, den, ties, HW, eps, LOSS: tl.constexpr):
    """dL/dA+ at pixels for upstream g (energy, t the cells' weights in its total; l1 and ppce
    through the normalization, ties =
    (sum of dL/dÂ at the max, of dL/dÂ Â below it)), or dL/dA for rrr: 2 g (1 - cov) A. The
    ReLU of A+ (the factor [A > 0]) is the kernel's MASK."""
    mx, cnt, s, inside, c, q = stats
    if LOSS == _RRR:
        d = 2.0 * g * (1.0 - cov) * a
    else:
        if LOSS == _ENERGY:
            low = s < eps
            gl = tl.where(low, 0.0, g)
            sp = tl.where(low, 1.0, s)
            d = (-gl / sp) * cov + tl.where(low, 0.0, gl * inside / (sp * sp)) * t
        else:
            up = _norm_upstream(ap, cov, valid, den, c, g, HW, eps, LOSS)
            d = norm_grad(up, ap, mx, cnt, ties[0], ties[1], eps)
    return d


@triton.jit
def _guidance_rows_kernel(a_ptr, cov_ptr, box_ptr, t_ptr, g_ptr, out_ptr, HW, W, B, image_h,
                          image_w, ch, cw, has_t, scale, eps, LOSS: tl.constexpr,
                          GRAD: tl.constexpr, MASK: tl.constexpr, BLOCK_B: tl.constexpr,
                          BLOCK_W: tl.constexpr, BLOCK: tl.constexpr, ONE_TILE: tl.constexpr):
    """One program per row r. Forward: out[r] = the loss. GRAD: out[r, p] = scale * dL/dA[r, p]
    for upstream g[r], MASK applying [A > 0] (ReLU'(0) = 0, NaN passes, as torch): the ReLU of
    the map (pixel, channel, gradcam) or of A+ in the loss (energy, l1, ppce). Pass 1: _row_stats;
    l1 / ppce: a pass for the loss (forward) or for the normalization's tie sums (GRAD); GRAD:
    a pass that writes."""
    r = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    src = (a_ptr, cov_ptr, box_ptr, r, HW, W, B, image_h, image_w, ch, cw, t_ptr, has_t)
    tile = map_tile(_row_values, src, offs, ONE_TILE, BLOCK_B, BLOCK_W)
    stats = _row_stats(tile, src, offs, HW, BLOCK, ONE_TILE, BLOCK_B, BLOCK_W)
    den = norm_den(stats[0], eps)
    if not GRAD:
        tl.store(out_ptr + r, _row_loss(tile, src, offs, HW, stats, den, eps, LOSS, BLOCK,
                                        ONE_TILE, BLOCK_B, BLOCK_W))
    else:
        g = tl.load(g_ptr + r)
        g_tied = 0.0
        rest = 0.0
        if LOSS == _L1 or LOSS == _PPCE:
            for start in range(0, HW, BLOCK):
                a, ap, cov, valid, t = map_chunk(tile, _row_values, src, start, offs, ONE_TILE,
                                                 BLOCK_B, BLOCK_W)
                up = _norm_upstream(ap, cov, valid, den, stats[4], g, HW, eps, LOSS)
                t0, t1 = tie_sums(up, ap, valid, stats[0])
                g_tied += t0
                rest += t1
        for start in range(0, HW, BLOCK):
            a, ap, cov, valid, t = map_chunk(tile, _row_values, src, start, offs, ONE_TILE,
                                             BLOCK_B, BLOCK_W)
            d = _pixel_grad(a, ap, cov, valid, t, g, stats, den, (g_tied, rest), HW, eps, LOSS)
            if MASK:
                d = tl.where(a <= 0, 0.0, d)
            tl.store(out_ptr + r * HW + start + offs, d * scale, mask=valid)


def _row_math(maps, coverage, cell_weights, boxes, loss, image_h, image_w, eps, scale=1.0,
              mask=False, grad=None):
    """Launch the per-row program. Forward (grad None): the R losses. Backward: R x H x W,
    scale * dL/dA (times [A > 0] when ``mask``) for upstream ``grad`` (R)."""
    r, h, w = maps.shape
    out = torch.empty(r, device=maps.device, dtype=maps.dtype) if grad is None else \
        torch.empty_like(maps)
    if not launchable(maps):
        return out
    from_boxes = coverage.numel() == 0
    n_boxes = boxes.shape[1]
    block_b, block_w = cover_blocks(n_boxes, w) if from_boxes else (0, 0)
    ph = maps  # placeholder for a pointer this launch does not read
    launch_per_sample(
        _guidance_rows_kernel, r, h * w, maps, ph if from_boxes else coverage,
        boxes if from_boxes and n_boxes else ph, cell_weights if cell_weights.numel() else ph,
        ph if grad is None else grad, out, h * w, w, n_boxes, image_h, image_w, image_h / h,
        image_w / w, int(cell_weights.numel() > 0), scale, eps, LOSS=loss,
        GRAD=grad is not None, MASK=mask, BLOCK_B=block_b, BLOCK_W=block_w)
    return out


@register
def guidance_loss(features: Tensor, grads: Tensor, boxes: Tensor, rows: Tensor,
                  coverage: Tensor, cell_weights: Tensor, kind: int, loss: int, image_h: float,
                  image_w: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row losses (R, float32), then the hidden maps (R x h x w) and the channel kinds'
    weights (R x K; R x 0 for pixel and ixg)."""
    side = kind_side(features, grads, kind)
    maps = attention_maps(features, [side], relu=_form(kind) != "sum", rows=rows)[0]
    out = _row_math(maps, coverage, cell_weights, boxes, loss, image_h, image_w, eps)
    weights = side.weights(maps.dtype) if _form(kind) in ("positive", "signed") else \
        maps.new_empty((maps.shape[0], 0))
    return out, maps, weights


@register
def guidance_loss_backward(grad: Tensor, features: Tensor, grads: Tensor, boxes: Tensor,
                           rows: Tensor, coverage: Tensor, cell_weights: Tensor, maps: Tensor,
                           weights: Tensor, kind: int, loss: int, image_h: float,
                           image_w: float, eps: float) -> tuple[Tensor, Tensor]:
    """(d_features like features, d_grads like grads) from the saved maps and weights."""
    k, hw = features.shape[1], features.shape[2] * features.shape[3]
    scale = 1.0 / max(k, 1) if _form(kind) is None else 1.0
    mask = _form(kind) != "sum" or loss != LOSS_CODES["rrr"]  # rrr of the signed ixg map: no ReLU
    e = _row_math(maps, coverage, cell_weights, boxes, loss, image_h, image_w, eps, scale, mask,
                  grad)
    e = e.view(maps.shape[0], hw)
    if _form(kind) not in ("positive", "signed"):  # the map is sum_k w G F or, for R x K grads, sum_k g F
        return rows_grads(features, rows, e, grads, MAP if grads.dim() == 4 else VEC)
    if grads.dim() == 2:  # w = ReLU(g) (channel) or g (gradcam)
        return rows_grads(features, rows, e, weights, VEC, grads if _form(kind) == "positive" else None)
    dfeat, coef = rows_grads(features, rows, e, weights, VEC)
    return dfeat, spread_weights(coef, grads, _form(kind) == "positive", 1.0 / hw)
