"""The public ops: argument checks, backend choice, and the glue to the compiled kernels.

Each public function validates its inputs, picks the backend (``attnfast.backend``) and calls
either the eager reference (``attnfast.reference``) or ``torch.ops.<ns>.<op>`` of the C++/CUDA
(``attnfast``) or Triton (``attnfast_triton``) kernels. Autograd and fake (meta) kernels of the
compiled ops are registered in ``attnfast._register``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import reference
from ._schema import KIND_CODES
from .backend import namespace, resolve
from .reference import EPS, acc_dtype

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


def _positive(value, name):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _mask_options(sigma, omega, eps):
    if not (isinstance(sigma, (int, float)) and 0.0 <= sigma <= 1.0):
        raise ValueError(f"sigma must be in [0, 1] (it thresholds a max-normalized map), "
                         f"got {sigma!r}")
    _positive(omega, "omega")
    _positive(eps, "eps")


def _ns(t):
    """Kernel namespace for tensors like ``t`` (None: the eager reference)."""
    name = resolve(t.device)
    if t.dtype == torch.float64 and name not in ("torch", "cpu"):
        raise TypeError(f"float64 is accepted on the 'torch' and 'cpu' backends only, not on "
                        f"{name!r}")
    return namespace(name)


# ------------------------------------------------------------------ layout for the kernels
def _big(t):
    """Big N x K x H x W tensors go to the kernels in place when the H x W pixels share one stride
    (contiguous NCHW, channels_last, broadcast views); anything else is copied to contiguous.
    (The C++ CPU kernels still copy a G whose layout differs from F's into F's layout.)"""
    h, w = t.shape[-2:]
    if h == 1 or w == 1 or t.stride(2) == w * t.stride(3):
        return t
    return t.contiguous()


def _small(t, dt):
    """Maps, weights, per-sample values: contiguous, in the accumulation dtype."""
    return t.to(dt).contiguous()


# ------------------------------------------------------------------------------- the ops
def channel_weights(grads, positive=True):
    """w[n,k] = mean_ij ReLU(G[n,k,i,j]) (positive) or mean_ij G[n,k,i,j] (Grad-CAM); N x K."""
    _tensor(grads, "grads", (4,))
    ns = _ns(grads)
    if ns is None:
        return reference.channel_weights(grads, positive)
    return ns.channel_weights(_big(grads), bool(positive))


def weighted_attention(features, weights):
    """A[n,i,j] = ReLU(sum_k w[n,k] F[n,k,i,j]) (CAM form); float32 map."""
    _tensor(features, "features", (4,))
    _tensor(weights, "weights", (2,))
    _same(features, "features", weights, "weights", shape=False, dtype=False)
    if weights.shape != features.shape[:2]:
        raise ValueError(f"weights must be N x K = {tuple(features.shape[:2])}, "
                         f"got {tuple(weights.shape)}")
    ns = _ns(features)
    if ns is None:
        return reference.weighted_attention(features, weights)
    return ns.weighted_attention(_big(features), _small(weights, acc_dtype(features)))


def channel_attention(features, grads, positive=True):
    """A_ch = weighted_attention(F, channel_weights(G, positive)) -- Sharpen Focus Eq. 3-4;
    ``positive=False`` is Grad-CAM."""
    _pair(features, grads)
    return weighted_attention(features, channel_weights(grads, positive))


def _pair(features, grads):
    _tensor(features, "features", (4,))
    _tensor(grads, "grads", (4,))
    _same(features, "features", grads, "grads")


def pixel_attention(features, grads):
    """A_px[n,i,j] = ReLU((1/K) sum_k G[n,k,i,j] F[n,k,i,j]) -- Sharpen Focus Eq. 5."""
    _pair(features, grads)
    ns = _ns(features)
    if ns is None:
        return reference.pixel_attention(features, grads)
    return ns.pixel_attention(_big(features), _big(grads))


def normalize_attention(attn, eps=EPS):
    """A[n] / (max(max_ij A[n], 0) + eps): per-sample max-normalization (all-zero stays zero)."""
    _tensor(attn, "attn", (3,))
    _positive(eps, "eps")
    ns = _ns(attn)
    if ns is None:
        return reference.normalize_attention(attn, eps)
    return ns.normalize_attention(_small(attn, acc_dtype(attn)), float(eps))


def soft_mask(attn_last, sigma=0.55, omega=100.0, size=None, eps=EPS):
    """M = sigmoid(omega * (R(normalize(A)) - sigma)) -- Sharpen Focus Eq. 7; R is a bilinear
    resize (align_corners=False) to ``size`` when given and different, else identity."""
    _tensor(attn_last, "attn_last", (3,))
    _mask_options(sigma, omega, eps)
    out_h, out_w = attn_last.shape[-2:] if size is None else _size(size)
    ns = _ns(attn_last)
    if ns is None:
        return reference.soft_mask(attn_last, sigma, omega, (out_h, out_w), eps)
    return ns.soft_mask(_small(attn_last, acc_dtype(attn_last)), float(sigma), float(omega),
                        out_h, out_w, float(eps))


def _size(size):
    try:
        out_h, out_w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be a pair (H, W) of positive ints, got {size!r}") from None
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be a pair (H, W) of positive ints, got {size!r}")
    return out_h, out_w


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
    _positive(eps, "eps")
    ns = _ns(attn_a)
    if ns is None:
        return reference.soft_iou(attn_a, attn_b, mask, eps)
    m = torch.ones_like(attn_a, dtype=dt) if mask is None else _small(mask, dt)
    return ns.soft_iou(_small(attn_a, dt), _small(attn_b, dt), m, float(eps))


def attention_consistency(attn_inner, mask, alpha=1.0, eps=EPS):
    """L_ac = alpha - sum_ij A M / (sum_ij A + eps) per sample -- Sharpen Focus Eq. 8."""
    dt = _maps(("attn_inner", attn_inner), ("mask", mask))
    _positive(eps, "eps")
    ns = _ns(attn_inner)
    if ns is None:
        return reference.attention_consistency(attn_inner, mask, alpha, eps)
    return ns.attention_consistency(_small(attn_inner, dt), _small(mask, dt), float(alpha),
                                    float(eps))


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
    max-normalized first when ``normalize``; the masks are detached unless ``mask_grad``.
    A layer's grads may be N x K (a gradient equal at every pixel, e.g. W[c] / (H W) of a GAP +
    linear head): no N x K x H x W gradient is then built for it. Returns the reduced ``loss``
    and the per-sample parts (float32).
    """
    if attention not in KIND_CODES:
        raise ValueError(f"attention must be one of {tuple(KIND_CODES)}, got {attention!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    _mask_options(sigma, omega, eps)
    _layer("inner", inner_features, inner_grads_target, inner_grads_confuser)
    _layer("last", last_features, last_grads_target, last_grads_confuser)
    _same(inner_features, "inner_features", last_features, "last_features", shape=False)
    if inner_features.shape[0] != last_features.shape[0]:
        raise ValueError(f"inner_features has N = {inner_features.shape[0]} but last_features has "
                         f"N = {last_features.shape[0]}")
    tensors = (inner_features, inner_grads_target, inner_grads_confuser,
               last_features, last_grads_target, last_grads_confuser)
    options = dict(sigma=float(sigma), omega=float(omega), alpha=float(alpha),
                   normalize=bool(normalize), mask_grad=bool(mask_grad), eps=float(eps))
    ns = _ns(inner_features)
    if ns is None:
        parts = reference.sharpen_focus_parts(*tensors, attention=attention, **options)
    else:
        dt = acc_dtype(inner_features)
        args = [_big(t) if t.dim() == 4 else _small(t, dt) for t in tensors]
        parts = ns.sharpen_focus_loss(*args, KIND_CODES[attention], *options.values())
    inner, last, cons = parts
    return SharpenFocusOutput(reference.reduce(inner + last + cons, reduction), inner, last, cons)


def channel_spatial_attention(features, channel_weights, eps=EPS):
    """GGAM Eq. 1-3: B = A * S; T[n,i,j] = sum_c B / (sum_{c,i,j} B + eps); D = A * T.

    ``features`` A is N x C x H x W, ``channel_weights`` S is N x C. Returns (D in the input
    dtype and layout, T: float32 map).
    """
    _tensor(features, "features", (4,))
    _tensor(channel_weights, "channel_weights", (2,))
    _same(features, "features", channel_weights, "channel_weights", shape=False, dtype=False)
    if channel_weights.shape != features.shape[:2]:
        raise ValueError(f"channel_weights must be N x C = {tuple(features.shape[:2])}, "
                         f"got {tuple(channel_weights.shape)}")
    _positive(eps, "eps")
    ns = _ns(features)
    if ns is None:
        return reference.channel_spatial_attention(features, channel_weights, eps)
    d, t = ns.channel_spatial_attention(_big(features),
                                        _small(channel_weights, acc_dtype(features)), float(eps))
    return d, t


def ggam_loss(channel_weights, gradcam_weights, eps=EPS):
    """0.5 (KL(p||q) + KL(q||p)) per sample -- GGAM Eq. 5, p = S (``channel_weights``),
    q = sigmoid(beta) / sum_k sigmoid(beta) (``gradcam_weights`` beta), both clamped at eps."""
    _tensor(channel_weights, "channel_weights", (2,))
    _tensor(gradcam_weights, "gradcam_weights", (2,))
    _same(channel_weights, "channel_weights", gradcam_weights, "gradcam_weights", dtype=False)
    _positive(eps, "eps")
    ns = _ns(channel_weights)
    if ns is None:
        return reference.ggam_loss(channel_weights, gradcam_weights, eps)
    dt = acc_dtype(channel_weights, gradcam_weights)
    return ns.ggam_loss(_small(channel_weights, dt), _small(gradcam_weights, dt), float(eps))
