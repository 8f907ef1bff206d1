"""The public ops: argument checks, backend choice, and the call into the chosen backend.

Each public function validates its inputs (a ``ValueError``/``TypeError`` naming the argument),
picks the backend (``attnfast.backend``), hands the tensors over as the kernel interface says
(``attnfast._schema``, ``attnfast._layout``) and calls ``ns.<op>(...)`` of that backend: the
C++/CUDA kernels (``torch.ops.attnfast``), the Triton kernels (``torch.ops.attnfast_triton``) or
the eager reference behind the same signatures (``attnfast._eager``). Autograd and fake (meta)
kernels of the compiled ops are registered in ``attnfast._register``; the eager backend is plain
autograd. The math is ``attnfast.reference`` and docs/SPEC.md.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import reference
from ._args import flag, real, size_pair
from ._layout import acc_dtype, big, small
from ._schema import GUIDANCE_KINDS, KIND_CODES, LOSS_CODES, map_form, positive_weights
from .backend import BACKENDS, namespace, resolve
from .reference import EPS

__all__ = ["SharpenFocusOutput", "attention_consistency", "channel_attention",
           "channel_spatial_attention", "channel_weights", "ggam_loss", "guidance_loss",
           "normalize_attention", "pixel_attention", "sharpen_focus_loss", "soft_iou", "soft_mask",
           "weighted_attention"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class SharpenFocusOutput(NamedTuple):
    """``loss`` reduced by ``reduction``; the per-sample float32 parts that sum to it."""
    loss: torch.Tensor
    inner_iou: torch.Tensor
    last_iou: torch.Tensor
    consistency: torch.Tensor


# ----------------------------------------------------------------------------- argument checks
def _tensor(t, name, dims):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a floating tensor (float16, bfloat16, float32 or "
                        f"float64), got {t.dtype}")
    if t.dim() not in dims:
        shape = {4: "N x K x H x W", 3: "N x H x W (a map)", 2: "N x K", 1: "N"}
        want = " or ".join(f"{d}-D {shape[d]}" for d in dims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(t.shape)}")
    if t.dim() >= 3 and 0 in t.shape[-2:]:
        raise ValueError(f"{name} has an empty H x W map (shape {tuple(t.shape)}); H and W "
                         "must be >= 1 (docs/SPEC.md decision 17)")
    return t


def _same(ref, ref_name, t, name, shape=True, dtype=True):
    """``t`` must match ``ref`` in device (always), shape and dtype (when asked)."""
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if shape and t.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but {ref_name} has shape "
                         f"{tuple(ref.shape)}; they must match")
    if dtype and t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}; "
                        "they must match")


_REDUCTIONS = ("mean", "sum", "none")


def _choice(value, name, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def _eps(eps):
    return real(eps, "eps", positive=True)


def _mask_options(sigma, omega, eps):
    """(sigma, omega, eps) as floats: sigma in [0, 1] (it thresholds a max-normalized map)."""
    return real(sigma, "sigma", lo=0.0, hi=1.0), real(omega, "omega", positive=True), _eps(eps)


def _channels(features, name, what):
    """K >= 1 where the op's value needs it (a mean over the channels)."""
    if features.shape[1] == 0:
        raise ValueError(f"{name} has K = 0 channels; {what} needs K >= 1 (docs/SPEC.md "
                         "decision 17)")


def _big(t, dt):
    """A big tensor for the kernels: float64 is computed in float32 when mixed with lower
    precision (docs/SPEC.md decision 16)."""
    return big(t.to(dt) if t.dtype == torch.float64 != dt else t)


def _features_and_weights(features, weights, name, dims):
    """4-D ``features`` and its per-channel ``weights`` (``dims`` = "N x K"), same device."""
    _tensor(features, "features", (4,))
    _tensor(weights, name, (2,))
    _same(features, "features", weights, name, shape=False, dtype=False)
    if weights.shape != features.shape[:2]:
        raise ValueError(f"{name} must be {dims} = {tuple(features.shape[:2])}, "
                         f"got {tuple(weights.shape)}")


def _ns(t):
    """Kernel namespace of the backend chosen for tensors like ``t``."""
    name = resolve(t.device)
    if t.dtype == torch.float64 and not BACKENDS[name].float64:
        takes = " and ".join(repr(b.name) for b in BACKENDS.values() if b.float64)
        raise TypeError(f"float64 is accepted on the {takes} backends only, not on {name!r}")
    return namespace(name)


# ------------------------------------------------------------------------------- the ops
def channel_weights(grads, positive=True):
    """w[n,k] = mean_ij ReLU(G[n,k,i,j]) (positive) or mean_ij G[n,k,i,j] (Grad-CAM); N x K."""
    _tensor(grads, "grads", (4,))
    return _ns(grads).channel_weights(big(grads), flag(positive, "positive"))


def weighted_attention(features, weights):
    """A[n,i,j] = ReLU(sum_k w[n,k] F[n,k,i,j]) (CAM form); float32 map."""
    _features_and_weights(features, weights, "weights", "N x K")
    dt = acc_dtype(features, weights)
    f = _big(features, dt)
    return _ns(f).weighted_attention(f, small(weights, dt))


def channel_attention(features, grads, positive=True):
    """A_ch = weighted_attention(F, channel_weights(G, positive)) -- Sharpen Focus Eq. 3-4;
    ``positive=False`` is Grad-CAM."""
    _pair(features, grads)
    flag(positive, "positive")
    return weighted_attention(features, channel_weights(grads, positive))


def _pair(features, grads):
    _tensor(features, "features", (4,))
    _tensor(grads, "grads", (4,))
    _same(features, "features", grads, "grads")


def pixel_attention(features, grads):
    """A_px[n,i,j] = ReLU((1/K) sum_k G[n,k,i,j] F[n,k,i,j]) -- Sharpen Focus Eq. 5."""
    _pair(features, grads)
    _channels(features, "features", "pixel_attention (a mean over the channels)")
    return _ns(features).pixel_attention(big(features), big(grads))


def normalize_attention(attn, eps=EPS):
    """A[n] / (max(max_ij A[n], 0) + eps): per-sample max-normalization; an all-zero map stays
    zero (docs/SPEC.md decisions 7, 12)."""
    _tensor(attn, "attn", (3,))
    return _ns(attn).normalize_attention(small(attn, acc_dtype(attn)), _eps(eps))


def soft_mask(attn_last, sigma=0.55, omega=100.0, size=None, eps=EPS):
    """M = sigmoid(omega * (R(normalize(A)) - sigma)) -- Sharpen Focus Eq. 7; R is a bilinear
    resize (align_corners=False) to ``size`` when given and different, else identity."""
    _tensor(attn_last, "attn_last", (3,))
    sigma, omega, eps = _mask_options(sigma, omega, eps)
    out_h, out_w = attn_last.shape[-2:] if size is None else size_pair(size)
    return _ns(attn_last).soft_mask(small(attn_last, acc_dtype(attn_last)), sigma, omega,
                                    out_h, out_w, eps)


def _maps(*named):
    """Check maps (name, tensor or None) against the first one; return the accumulation dtype."""
    (ref_name, ref), *rest = named
    _tensor(ref, ref_name, (3,))
    for name, t in rest:
        if t is not None:
            _tensor(t, name, (3,))
            _same(ref, ref_name, t, name, dtype=False)
    return acc_dtype(*(t for _, t in named if t is not None))


def soft_iou(attn_a, attn_b, mask=None, eps=EPS):
    """2 sum_ij min(a, b) M / (sum_ij (a + b) + eps) per sample -- Sharpen Focus Eq. 6
    (M = 1 without a mask)."""
    dt = _maps(("attn_a", attn_a), ("attn_b", attn_b), ("mask", mask))
    eps = _eps(eps)
    a = small(attn_a, dt)
    m = torch.ones_like(a) if mask is None else small(mask, dt)
    return _ns(a).soft_iou(a, small(attn_b, dt), m, eps)


def attention_consistency(attn_inner, mask, alpha=1.0, eps=EPS):
    """L_ac = alpha - sum_ij A M / (sum_ij A + eps) per sample -- Sharpen Focus Eq. 8."""
    dt = _maps(("attn_inner", attn_inner), ("mask", mask))
    alpha, eps = real(alpha, "alpha"), _eps(eps)
    a = small(attn_inner, dt)
    return _ns(a).attention_consistency(a, small(mask, dt), alpha, eps)


def _layer(prefix, features, g_target, g_confuser):
    """One layer's (F, G_target, G_confuser): G is N x K x H x W like F, or N x K."""
    _tensor(features, f"{prefix}_features", (4,))
    for name, g in ((f"{prefix}_grads_target", g_target), (f"{prefix}_grads_confuser", g_confuser)):
        _tensor(g, name, (4, 2))
        if g.dim() == 4:
            _same(features, f"{prefix}_features", g, name)
        else:
            _same(features, f"{prefix}_features", g, name, shape=False, dtype=False)
            if g.shape != features.shape[:2]:
                raise ValueError(f"{name} given per channel must be N x K = "
                                 f"{tuple(features.shape[:2])}, got {tuple(g.shape)}")


def sharpen_focus_loss(inner_features, inner_grads_target, inner_grads_confuser,
                       last_features, last_grads_target, last_grads_confuser, *,
                       attention="pixel", sigma=0.55, omega=100.0, alpha=1.0, normalize=True,
                       mask_grad=False, reduction="mean", eps=EPS) -> SharpenFocusOutput:
    """The attention part of Sharpen Focus Eq. 9, fused, per sample n:

        M_last = soft_mask(A_last_t), M_inner = soft_mask(A_last_t, size=inner H x W)
        loss = sIoU(A_inner_t, A_inner_c, M_inner) + sIoU(A_last_t, A_last_c, M_last)
               + L_ac(A_inner_t, M_inner)

    with A the maps of kind ``attention`` ("pixel" Eq. 5, "channel" Eq. 3-4, "gradcam"),
    max-normalized first when ``normalize``; the masks are detached unless ``mask_grad``
    (docs/SPEC.md decisions 1-4 and 10).
    A layer's grads may be N x K (a gradient equal at every pixel, e.g. W[c] / (H W) of a GAP +
    linear head): no N x K x H x W gradient is then built for it. Returns the reduced ``loss``
    and the per-sample parts (float32).
    """
    pixelwise = positive_weights(attention) is None  # a ValueError for an unknown kind
    _choice(reduction, "reduction", _REDUCTIONS)
    sigma, omega, eps = _mask_options(sigma, omega, eps)
    alpha = real(alpha, "alpha")
    normalize, mask_grad = flag(normalize, "normalize"), flag(mask_grad, "mask_grad")
    _layer("inner", inner_features, inner_grads_target, inner_grads_confuser)
    _layer("last", last_features, last_grads_target, last_grads_confuser)
    _same(inner_features, "inner_features", last_features, "last_features", shape=False)
    if inner_features.shape[0] != last_features.shape[0]:
        raise ValueError(f"inner_features has N = {inner_features.shape[0]} but last_features has "
                         f"N = {last_features.shape[0]}")
    if pixelwise:
        _channels(inner_features, "inner_features", 'attention="pixel"')
        _channels(last_features, "last_features", 'attention="pixel"')
    tensors = (inner_features, inner_grads_target, inner_grads_confuser,
               last_features, last_grads_target, last_grads_confuser)
    dt = acc_dtype(*tensors)
    tensors = [_big(t, dt) if t.dim() == 4 else small(t, dt) for t in tensors]
    # _hidden: the maps and weights the backward takes again (attnfast._schema), not public
    inner, last, cons, *_hidden = _ns(tensors[0]).sharpen_focus_loss(
        *tensors, KIND_CODES[attention], sigma, omega, alpha, normalize, mask_grad, eps)
    return SharpenFocusOutput(reference.reduce(inner + last + cons, reduction), inner, last, cons)


def channel_spatial_attention(features, channel_weights, eps=EPS):
    """GGAM Eq. 1-3: B = A * S; T[n,i,j] = sum_c B / (sum_{c,i,j} B + eps); D = A * T.

    ``features`` A is N x C x H x W, ``channel_weights`` S is N x C. Returns (D in the input
    dtype and layout, T: float32 map).
    """
    _features_and_weights(features, channel_weights, "channel_weights", "N x C")
    eps, dt = _eps(eps), acc_dtype(features, channel_weights)
    f = _big(features, dt)
    d, t = _ns(f).channel_spatial_attention(f, small(channel_weights, dt), eps)
    return d.to(features.dtype), t


def ggam_loss(channel_weights, gradcam_weights, eps=EPS):
    """0.5 (KL(p||q) + KL(q||p)) per sample -- GGAM Eq. 5, p = S (``channel_weights``),
    q = sigmoid(beta) / sum_k sigmoid(beta) (``gradcam_weights`` beta), both clamped at eps
    (docs/SPEC.md decisions 5, 11)."""
    _tensor(channel_weights, "channel_weights", (2,))
    _tensor(gradcam_weights, "gradcam_weights", (2,))
    _same(channel_weights, "channel_weights", gradcam_weights, "gradcam_weights", dtype=False)
    eps, dt = _eps(eps), acc_dtype(channel_weights, gradcam_weights)
    s = small(channel_weights, dt)
    return _ns(s).ggam_loss(s, small(gradcam_weights, dt), eps)


# ------------------------------------------------------------------- guidance from boxes
def _rows(rows, n, r, device):
    """Row -> image index: an integer tensor of R values in [0, N) (None: row r is image r)."""
    if rows is None:
        if r != n:
            raise ValueError(f"rows is needed when grads has R = {r} rows for N = {n} images")
        return torch.arange(n, device=device)
    if not isinstance(rows, torch.Tensor):
        raise TypeError(f"rows must be a torch.Tensor of image indices, got {type(rows).__name__}")
    if rows.dtype.is_floating_point or rows.dtype.is_complex or rows.dtype == torch.bool:
        raise TypeError(f"rows must be an integer tensor of image indices, got {rows.dtype}")
    if rows.shape != (r,):
        raise ValueError(f"rows must be 1-D with one image index per row of grads (R = {r}), "
                         f"got shape {tuple(rows.shape)}")
    if rows.device != device:
        raise ValueError(f"rows is on {rows.device} but features is on {device}")
    if r and (int(rows.min()) < 0 or int(rows.max()) >= n):
        raise ValueError(f"rows must index images in [0, {n}) (features has N = {n}), got "
                         f"values in [{int(rows.min())}, {int(rows.max())}]")
    return rows.long().contiguous()


def _boxes(boxes, r, dt, device):
    """R x B x 4 boxes (y0, x0, y1, x1) in image pixels: real, finite, not inverted."""
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be a torch.Tensor R x B x 4, got {type(boxes).__name__}")
    if boxes.dtype.is_complex or boxes.dtype == torch.bool:
        raise TypeError(f"boxes must be a real (floating or integer) tensor, got {boxes.dtype}")
    if boxes.dim() != 3 or boxes.shape[0] != r or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be R x B x 4 (y0, x0, y1, x1) with R = {r} rows, got shape "
                         f"{tuple(boxes.shape)}")
    if boxes.device != device:
        raise ValueError(f"boxes is on {boxes.device} but features is on {device}")
    b = boxes.to(dt).contiguous()
    if not bool(torch.isfinite(b).all()):
        raise ValueError("boxes must be finite (pad missing boxes with empty ones, e.g. zeros)")
    bad = (b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1])
    if bool(bad.any()):
        r0, b0 = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"boxes[{r0}, {b0}] = {b[r0, b0].tolist()} is inverted: boxes are "
                         "(y0, x0, y1, x1) with y1 >= y0 and x1 >= x0 (docs/SPEC.md decision 20)")
    return b


def _mask(mask, r, dt, device):
    """A dense R x H x W mask with values in [0, 1]."""
    _tensor(mask, "mask", (3,))
    if mask.shape[0] != r:
        raise ValueError(f"mask must be R x H x W with R = {r} rows, got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device} but features is on {device}")
    m = mask.to(dt)
    if not bool(((m >= 0) & (m <= 1)).all()):
        raise ValueError("mask values must lie in [0, 1]")
    return m


def guidance_loss(features, grads, boxes=None, rows=None, *, image_size=None, mask=None,
                  attention="gradcam", loss="energy", reduction="mean", upsample="area", eps=EPS):
    """Guidance of a layer's class maps by boxes (Rao et al., ICCV 2023), fused, per row r =
    (image ``rows[r]``, class): A = the map of kind ``attention`` ("gradcam", "ixg", "pixel",
    "channel") of F[rows[r]] and G[r]; cov = share of each layer cell inside the union of the
    row's boxes; A+ = max(A, 0), Â = A+ / (max A+ + eps):

        energy = 1 - sum(A+ cov) / sum(A+)  (1 when sum(A+) < eps);  l1 = mean |Â - cov|;
        ppce = -sum(cov log(Â + eps)) / sum(cov)  (0 without coverage);  rrr = sum((1 - cov) A^2)

    ``features`` N x K x h x w; ``grads`` R x K x h x w (G[r] = dY[rows[r], c_r] / dF) or R x K
    (a gradient equal at every pixel: GAP + linear head); ``boxes`` R x B x 4 (y0, x0, y1, x1)
    in pixels of an image of ``image_size`` = (H, W), half-open, clipped to the image, padded
    with empty boxes; or instead ``mask`` R x H' x W' in [0, 1], area-averaged to h x w.
    ``rows`` (R integers in [0, N); default: row r is image r). ``reduction``: "mean" over the
    rows (0 for no rows), "sum", or "none" (R float32 values). Gradients reach F and G (second
    order), never the boxes. With gradients off, 1 - energy is the energy pointing game (EPG).
    ``upsample="bilinear"`` (energy only): the paper code's energy of A+
    upsampled bilinearly (align_corners=False) to the image, summed over the pixels whose centres
    lie in the boxes (or weighted by the image-resolution ``mask``), exactly, at the layer:
    1 - sum(A+ cov_up) / sum(A+ t) with cov_up = U_y^T mask U_x and t = the column sums of U_y
    and U_x. docs/SPEC.md decisions 19-24.
    """
    _choice(attention, "attention", tuple(GUIDANCE_KINDS))
    _choice(loss, "loss", tuple(LOSS_CODES))
    _choice(reduction, "reduction", _REDUCTIONS)
    _choice(upsample, "upsample", ("area", "bilinear"))
    if upsample == "bilinear" and loss != "energy":
        raise ValueError(f'upsample="bilinear" is defined for loss="energy" only, got loss={loss!r}')
    eps = _eps(eps)
    _tensor(features, "features", (4,))
    _tensor(grads, "grads", (4, 2))
    n, k, h, w = features.shape
    r = grads.shape[0]
    if grads.dim() == 4:
        _same(features, "features", grads, "grads", shape=False)
        if grads.shape[1:] != features.shape[1:]:
            raise ValueError(f"grads must be R x K x h x w with K x h x w = {tuple(features.shape[1:])}"
                             f" as features, got {tuple(grads.shape)}")
    else:
        _same(features, "features", grads, "grads", shape=False, dtype=False)
        if grads.shape[1] != k:
            raise ValueError(f"grads given per channel must be R x K with K = {k}, got "
                             f"{tuple(grads.shape)}")
    if map_form(attention) is None:
        _channels(features, "features", 'attention="pixel" (a mean over the channels)')
    if (boxes is None) == (mask is None):
        raise ValueError("give exactly one of boxes (R x B x 4, with image_size) or mask")
    dt = acc_dtype(features, grads) if grads.dim() == 4 else acc_dtype(features)
    rows = _rows(rows, n, r, features.device)
    if boxes is not None:
        if image_size is None:
            raise ValueError("image_size = (H, W) of the images the boxes are given in is needed")
        img_h, img_w = size_pair(image_size, "image_size")
        b, coverage = _boxes(boxes, r, dt, features.device), features.new_empty((0,), dtype=dt)
        if upsample == "bilinear":
            coverage = reference.box_coverage(b, (img_h, img_w), (h, w), upsample).contiguous()
    else:
        img_h, img_w = mask.shape[-2:]
        b = features.new_empty((r, 0, 4), dtype=dt)
        coverage = reference.mask_coverage(_mask(mask, r, dt, features.device), (h, w),
                                           upsample).contiguous()
    weights = features.new_empty((0,), dtype=dt)
    if upsample == "bilinear":
        weights = reference.cell_weights((img_h, img_w), (h, w), dt, features.device).contiguous()
    f = _big(features, dt)
    g = _big(grads, dt) if grads.dim() == 4 else small(grads, dt)
    out, *_hidden = _ns(f).guidance_loss(f, g, b, rows, coverage, weights, KIND_CODES[attention],
                                         LOSS_CODES[loss], float(img_h), float(img_w), eps)
    if reduction == "mean":
        return out.sum() / max(r, 1)
    return reference.reduce(out, reduction)
