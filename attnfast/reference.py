"""Eager PyTorch reference of every attnfast op: the specification in code.

Every function here is plain differentiable PyTorch; autograd of it *is* the reference backward
that the C++ CPU, CUDA and Triton backends reproduce by hand. Accumulation is float32 (float64 for
float64 inputs), maps and losses come back in that accumulation dtype.

Notation (docs/SPEC.md): F, G are N x K x H x W; a map is N x H x W; p runs over the H*W pixels.
Subgradient rules (docs/SPEC.md decisions 6 and 11), all inherited from the autograd of the ops
used here: ReLU'(0) = 0 (``torch.relu``), ties of min(a, b) split 1/2-1/2 (``torch.minimum``),
ties at a map's max split evenly (``torch.amax``), clamp passes the gradient where x >= bound
(``torch.clamp_min``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as nnf

from ._schema import map_form, positive_weights

EPS = 1e-6


def acc_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if every input is float64, else float32: the accumulation and result dtype
    (docs/SPEC.md decision 16; a float64 input mixed with lower precision is computed in
    float32)."""
    return torch.float64 if all(t.dtype == torch.float64 for t in tensors) else torch.float32


def _acc(*tensors):
    dt = acc_dtype(*tensors)
    return [t.to(dt) for t in tensors]


def channel_weights(grads, positive=True):
    """w[n,k] = mean_p ReLU(G[n,k,p]) if positive, else mean_p G[n,k,p] (Grad-CAM)."""
    (g,) = _acc(grads)
    if positive:
        g = torch.relu(g)
    return g.mean(dim=(2, 3))


def weighted_attention(features, weights):
    """A[n,p] = ReLU(sum_k w[n,k] F[n,k,p]) (CAM form)."""
    f, w = _acc(features, weights)
    return torch.relu(torch.einsum("nkhw,nk->nhw", f, w))


def channel_attention(features, grads, positive=True):
    """A_ch = weighted_attention(F, channel_weights(G, positive)) -- Sharpen Focus Eq. 3-4."""
    return weighted_attention(features, channel_weights(grads, positive))


def pixel_attention(features, grads):
    """A_px[n,p] = ReLU((1/K) sum_k G[n,k,p] F[n,k,p]) -- Sharpen Focus Eq. 5."""
    f, g = _acc(features, grads)
    return torch.relu((f * g).mean(dim=1))


def normalize_attention(attn, eps=EPS):
    """A[n] / (max(max_p A[n], 0) + eps).

    The max is clamped at 0 so that a map with no positive value cannot divide by ~0
    (docs/SPEC.md decision 12; an all-zero map stays zero, decision 7); attention maps are
    non-negative, for them this is exactly A / (max A + eps).
    """
    (a,) = _acc(attn)
    m = torch.clamp_min(torch.amax(a, dim=(1, 2), keepdim=True), 0.0)
    return a / (m + eps)


def resize(attn, size):
    """Bilinear resize (align_corners=False) of N x h x w maps to ``size``; identity if same."""
    if size is None or tuple(size) == tuple(attn.shape[-2:]):
        return attn
    return nnf.interpolate(attn[:, None], size=tuple(size), mode="bilinear",
                           align_corners=False)[:, 0]


def soft_mask(attn_last, sigma=0.55, omega=100.0, size=None, eps=EPS):
    """M = sigmoid(omega * (R(normalize(A)) - sigma)) -- Sharpen Focus Eq. 7."""
    return torch.sigmoid(omega * (resize(normalize_attention(attn_last, eps), size) - sigma))


def soft_iou(attn_a, attn_b, mask=None, eps=EPS):
    """2 sum_p min(a,b) M / (sum_p (a + b) + eps), per sample -- Sharpen Focus Eq. 6."""
    a, b, *m = _acc(attn_a, attn_b, *(() if mask is None else (mask,)))
    inter = torch.minimum(a, b)
    if m:
        inter = inter * m[0]
    return 2.0 * inter.sum(dim=(1, 2)) / ((a + b).sum(dim=(1, 2)) + eps)


def attention_consistency(attn_inner, mask, alpha=1.0, eps=EPS):
    """L_ac = alpha - sum_p A M / (sum_p A + eps), per sample -- Sharpen Focus Eq. 8."""
    a, m = _acc(attn_inner, mask)
    return alpha - (a * m).sum(dim=(1, 2)) / (a.sum(dim=(1, 2)) + eps)


def layer_attention(features, grads, kind, weights=False):
    """The attention map of one layer for one class, of the given kind.

    ``grads`` is either N x K x H x W or N x K per-channel weights standing for a gradient that
    is the same at every pixel (GAP + linear head); the latter is exactly the former broadcast.
    ``weights=True`` returns (map, w) with w the N x K channel weights of the channel kinds
    (A = ReLU(sum_k w[k] F[k])), None for the pixel kind.
    """
    positive = positive_weights(kind)
    if grads.dim() == 2:
        grads = grads[:, :, None, None].expand(-1, -1, *features.shape[-2:])
    if positive is None:
        a, w = pixel_attention(features, grads), None
    else:
        w = channel_weights(grads, positive=positive)
        a = weighted_attention(features, w)
    return (a, w) if weights else a


def sharpen_focus_parts(inner_features, inner_grads_target, inner_grads_confuser,
                        last_features, last_grads_target, last_grads_confuser, *,
                        attention="pixel", sigma=0.55, omega=100.0, alpha=1.0,
                        normalize=True, mask_grad=False, eps=EPS):
    """Per-sample (inner_iou, last_iou, consistency) of Sharpen Focus Eq. 9.

    M_last = soft_mask(A_last_t), M_inner = soft_mask(A_last_t, size=inner size) (docs/SPEC.md
    decisions 1 and 4), detached unless ``mask_grad`` (decision 2); the four maps are
    max-normalized first when ``normalize`` (decision 3) and L_ac is taken on the same inner
    target map the soft-IoU sees (decision 10).
    """
    return sharpen_focus_from_maps(
        layer_attention(inner_features, inner_grads_target, attention),
        layer_attention(inner_features, inner_grads_confuser, attention),
        layer_attention(last_features, last_grads_target, attention),
        layer_attention(last_features, last_grads_confuser, attention),
        sigma=sigma, omega=omega, alpha=alpha, normalize=normalize, mask_grad=mask_grad, eps=eps)


def sharpen_focus_from_maps(a_it, a_ic, a_lt, a_lc, *, sigma=0.55, omega=100.0, alpha=1.0,
                            normalize=True, mask_grad=False, eps=EPS):
    """``sharpen_focus_parts`` from the four raw maps (inner/last x target/confuser)."""
    src = a_lt if mask_grad else a_lt.detach()
    m_last = soft_mask(src, sigma, omega, None, eps)
    m_inner = soft_mask(src, sigma, omega, a_it.shape[-2:], eps)
    if normalize:
        a_it, a_ic, a_lt, a_lc = (normalize_attention(a, eps) for a in (a_it, a_ic, a_lt, a_lc))
    return (soft_iou(a_it, a_ic, m_inner, eps), soft_iou(a_lt, a_lc, m_last, eps),
            attention_consistency(a_it, m_inner, alpha, eps))


def reduce(x, reduction):
    """'mean' | 'sum' | 'none' over the batch."""
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def sharpen_focus_loss(*tensors, reduction="mean", **options):
    """loss = reduce(inner_iou + last_iou + consistency); returns (loss, inner, last, consistency)."""
    inner, last, cons = sharpen_focus_parts(*tensors, **options)
    return reduce(inner + last + cons, reduction), inner, last, cons


def channel_spatial_attention(features, channel_weights, eps=EPS):
    """GGAM Eq. 1-3: B = A * S; T[n,p] = sum_c B / (sum_{c,p} B + eps); D = A * T.

    Returns (D in the input dtype, T in the accumulation dtype).
    """
    a, s = _acc(features, channel_weights)
    colsum = (a * s[:, :, None, None]).sum(dim=1)
    t = colsum / (colsum.sum(dim=(1, 2), keepdim=True) + eps)
    return (a * t[:, None]).to(features.dtype), t


def ggam_loss(channel_weights, gradcam_weights, eps=EPS):
    """0.5 (KL(p||q) + KL(q||p)), p = S, q = sigmoid(beta) / sum_k sigmoid(beta) -- GGAM Eq. 5.

    KL(x||y) = sum_k x' log(x'/y') with x' = max(x, eps), y' = max(y, eps).
    """
    p, beta = _acc(channel_weights, gradcam_weights)
    s = torch.sigmoid(beta)
    q = s / s.sum(dim=1, keepdim=True)
    p, q = torch.clamp_min(p, eps), torch.clamp_min(q, eps)
    lp, lq = torch.log(p), torch.log(q)
    return 0.5 * ((p * (lp - lq)).sum(dim=1) + (q * (lq - lp)).sum(dim=1))


# ----------------------------------------------------------------------- guidance from boxes
# Rao, Boehle, Parchami-Araghi, Schiele, ICCV 2023 (docs/SPEC.md "guidance_loss", decisions 19-23).
GUIDANCE_LOSSES = ("energy", "l1", "ppce", "rrr")


def guidance_map(features, grads, rows, kind, weights=False):
    """A[r] (R x h x w), the map of row r = (image rows[r], its class) from F[rows[r]] and G[r]:
    ``ixg`` sum_k G_k F_k (no ReLU), ``gradcam`` ReLU(sum_k mean_p(G_k) F_k), ``channel``
    ReLU(sum_k mean_p(ReLU G_k) F_k), ``pixel`` ReLU((1/K) sum_k G_k F_k). ``grads`` R x K stands
    for a gradient equal at every pixel (GAP + linear head). ``weights=True``: (A, w) as
    ``layer_attention`` (w None for ixg)."""
    f = features[rows.long()]
    if map_form(kind) != "sum":
        return layer_attention(f, grads, kind, weights)
    f, g = _acc(f, grads)
    a = torch.einsum("rkhw,rk->rhw", f, g) if g.dim() == 2 else (f * g).sum(dim=1)
    return (a, None) if weights else a


def cell_overlap(lo, hi, cells, extent):
    """Length of [lo, hi) inside each of ``cells`` equal cells tiling [0, extent), divided by the
    cell length: lo, hi (...) -> (..., cells). Intervals are clipped to [0, extent)."""
    step = extent / cells
    edges = torch.arange(cells + 1, dtype=lo.dtype, device=lo.device) * step
    top = torch.minimum(hi[..., None], edges[1:])
    bottom = torch.maximum(lo[..., None], edges[:-1])
    return torch.clamp_min(top - bottom, 0.0) / step


def bilinear_overlap(lo, hi, cells, extent):
    """Sum of the bilinear upsampling weights (align_corners=False, as F.interpolate) that the
    pixels of [lo, hi) give each of ``cells`` source cells, when ``cells`` are upsampled to
    ``extent`` (an integer) pixels; a pixel p belongs to [lo, hi) when its centre p + 1/2 does:
    lo, hi (...) -> (..., cells). Summed over all pixels, each cell's weight is its share of the
    upsampled image (not uniform when extent / cells is not an integer)."""
    up = upsample_matrix(cells, int(extent), lo.dtype, lo.device)           # extent x cells
    cum = torch.cat([up.new_zeros(1, cells), up.cumsum(0)])                 # (extent + 1) x cells
    first = torch.ceil(lo - 0.5).clamp(0, extent).long()                   # first pixel inside
    end = torch.ceil(hi - 0.5).clamp(0, extent).long()
    return torch.clamp_min(cum[end] - cum[first], 0.0)


def upsample_matrix(cells, pixels, dtype=torch.float64, device=None):
    """U (pixels x cells): bilinear (1-D linear) upsampling, align_corners=False, so that
    F.interpolate(x, size=pixels, mode="linear") = U x along the last dimension."""
    eye = torch.eye(cells, dtype=dtype, device=device)[None]
    return torch.nn.functional.interpolate(eye, size=pixels, mode="linear", align_corners=False)[0].T


def box_coverage(boxes, image_size, size, upsample="area"):
    """cov[r, i, j]: the share of layer cell (i, j)'s image area (a cell spans H_img/h x W_img/w
    pixels) inside the union of row r's boxes (R x B x 4, image pixels, half-open y0, x0, y1, x1;
    clipped to the image; empty boxes cover nothing). Exact: the sorted box edges cut the image into
    elementary rectangles, each inside the union or not (docs/SPEC.md decision 20).
    ``upsample="bilinear"`` (decision 24): instead the weight the map's bilinear upsampling to the
    image gives cell (i, j) inside the union's pixels, sum_{p in union} U_y[p_y, i] U_x[p_x, j]."""
    (b,) = _acc(boxes)
    (img_h, img_w), (h, w) = image_size, size
    y0, x0 = b[..., 0].clamp(0, img_h), b[..., 1].clamp(0, img_w)
    y1, x1 = b[..., 2].clamp(0, img_h), b[..., 3].clamp(0, img_w)
    zero = b.new_zeros(b.shape[:1] + (1,))
    ys = torch.cat([zero, zero + img_h, y0, y1], dim=1).sort(dim=1).values     # R x (2B + 2)
    xs = torch.cat([zero, zero + img_w, x0, x1], dim=1).sort(dim=1).values
    cy, cx = (ys[:, 1:] + ys[:, :-1]) / 2, (xs[:, 1:] + xs[:, :-1]) / 2      # band centres
    inside_y = (y0[:, None] <= cy[..., None]) & (cy[..., None] < y1[:, None])  # R x bands x B
    inside_x = (x0[:, None] <= cx[..., None]) & (cx[..., None] < x1[:, None])
    covered = torch.einsum("rab,rcb->rac", inside_y.to(b.dtype), inside_x.to(b.dtype)) > 0
    overlap = {"area": cell_overlap, "bilinear": bilinear_overlap}[upsample]
    oy = overlap(ys[:, :-1], ys[:, 1:], h, float(img_h))  # R x bands x h
    ox = overlap(xs[:, :-1], xs[:, 1:], w, float(img_w))
    return torch.einsum("rai,rac,rcj->rij", oy, covered.to(b.dtype), ox)


def mask_coverage(mask, size, upsample="area"):
    """A dense R x H x W mask (values in [0, 1], spanning the image) area-averaged to ``size``
    = (h, w): cov[r, i, j] = mean of the mask over the image area of cell (i, j) (decision 20).
    ``upsample="bilinear"``: sum_p mask[p] U_y[p_y, i] U_x[p_x, j] (decision 24)."""
    (m,) = _acc(mask)
    (hm, wm), (h, w) = m.shape[-2:], size
    if upsample == "bilinear":
        ay, ax = upsample_matrix(h, hm, m.dtype, m.device), upsample_matrix(w, wm, m.dtype, m.device)
    else:
        idx_h = torch.arange(hm, dtype=m.dtype, device=m.device)
        idx_w = torch.arange(wm, dtype=m.dtype, device=m.device)
        ay = cell_overlap(idx_h, idx_h + 1, h, float(hm))   # Hm x h: each cell's shares sum to 1
        ax = cell_overlap(idx_w, idx_w + 1, w, float(wm))
    return torch.einsum("yi,ryx,xj->rij", ay, m, ax)


def cell_weights(image_size, size, dtype=torch.float64, device=None):
    """h x w: the weight of each layer cell in the sum of the map's bilinear upsampling to the
    image, sum_p U_y[p_y, i] U_x[p_x, j] (the denominator of the bilinear energy, decision 24)."""
    (img_h, img_w), (h, w) = image_size, size
    uy = upsample_matrix(h, int(img_h), dtype, device).sum(0)
    ux = upsample_matrix(w, int(img_w), dtype, device).sum(0)
    return uy[:, None] * ux[None, :]


def guidance_from_maps(attn, coverage, loss="energy", eps=EPS, weights=None):
    """Per-row guidance loss of maps A (R x h x w) against box coverage (R x h x w), A+ = max(A, 0),
    Â = normalize_attention(A+) (docs/SPEC.md decisions 21-22):

        energy  1 - sum(A+ cov) / sum(A+ t)     (1 when sum(A+ t) < eps; t = ``weights``, h x w,
                                                 or 1: the bilinear option, decision 24)
        l1      mean |Â - cov|
        ppce    -sum(cov log(Â + eps)) / sum(cov)   (0 when sum(cov) = 0)
        rrr     sum((1 - cov) A^2)
    """
    a, cov = _acc(attn, coverage)
    ap = torch.relu(a)
    if loss == "energy":
        s = (ap if weights is None else ap * weights.to(ap.dtype)).sum(dim=(1, 2))
        low = s < eps
        inside = (ap * cov).sum(dim=(1, 2))
        return torch.where(low, torch.ones_like(s), 1 - inside / torch.where(low, torch.ones_like(s), s))
    if loss == "l1":
        return (normalize_attention(ap, eps) - cov).abs().mean(dim=(1, 2))
    if loss == "ppce":
        c = cov.sum(dim=(1, 2))
        boxed = c > 0
        log = (cov * torch.log(normalize_attention(ap, eps) + eps)).sum(dim=(1, 2))
        return torch.where(boxed, -log / torch.where(boxed, c, torch.ones_like(c)), torch.zeros_like(c))
    if loss == "rrr":
        return ((1 - cov) * a * a).sum(dim=(1, 2))
    raise ValueError(f"loss must be one of {GUIDANCE_LOSSES}, got {loss!r}")


def guidance_loss(features, grads, rows, coverage, attention="gradcam", loss="energy", eps=EPS,
                  weights=None):
    """Per-row loss of ``guidance_from_maps(guidance_map(F, G, rows, attention), coverage)``;
    coverage from ``box_coverage`` or ``mask_coverage`` (it carries no gradient), ``weights``
    from ``cell_weights`` for the bilinear option."""
    return guidance_from_maps(guidance_map(features, grads, rows, attention), coverage.detach(),
                              loss, eps, weights)
