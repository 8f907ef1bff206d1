"""The two passes over features F that build attention maps, and their backward.

A *side* is one map computed from F: m[n,p] = act(scale * sum_k F[n,k,p] * X), where X is
  MAP      X[n,k,p], a second N x K x H x W tensor (pixel attention: X = G, scale = 1/K),
  VEC      w[n,k], per-channel weights (CAM / Grad-CAM; a gradient constant over pixels),
  RELU_VEC ReLU(w[n,k]) (positive channel weights of a gradient constant over pixels),
and act is ReLU or the identity. One or two sides share a single read of F (target and confuser
maps of a layer). Forward: ``attention_maps``. Backward, for upstream dm[n,p] and
e[n,p] = scale * dm * [m > 0] (ReLU) or scale * dm (identity):
  dF[n,k,p] = sum_sides e[n,p] * X,   dX[n,k,p] = e[n,p] * F[n,k,p] (MAP),
  dw[n,k] = sum_p e[n,p] * F[n,k,p] (VEC; for RELU_VEC times [w > 0], the gradient of w),
all in one read of F (and of each MAP operand): ``attention_grads``.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from attnfast._schema import KIND_NAMES, map_form

from ._common import (MAP, NONE, RELU_VEC, VEC, acc_dtype, big_autotune, big_strides, launchable,
                      num_splits, shared_layout, vec_strides)
from ._reduce import (channel_block_program, load_tile, load_weights, offsets_like, relu,
                      sum_splits, workspace)
from ._weights_pass import channel_means

_MAP: tl.constexpr = tl.constexpr(MAP)
_NONE: tl.constexpr = tl.constexpr(NONE)
_RELU_VEC: tl.constexpr = tl.constexpr(RELU_VEC)


class Side(NamedTuple):
    """One map of a pass over F: operand X (N x K x H x W for MAP, N x K otherwise), mode, scale."""
    x: Tensor
    mode: int
    scale: float = 1.0

    def strides(self):
        return big_strides(self.x) if self.mode == MAP else vec_strides(self.x)

    def weights(self, dtype):
        """The per-channel weights w of a (RELU_)VEC side (ReLU applied for RELU_VEC), a new
        tensor (an op's output must not alias its input)."""
        return self.x.to(dtype).relu() if self.mode == RELU_VEC else self.x.to(dtype, copy=True)


def kind_side(features, grads, kind, weights=None):
    """The side that makes the attention map of ``kind`` (attnfast._schema.KIND_CODES) from
    ``grads`` (4-D, or N x K constant over pixels): pixel (1/K) sum_k G F, ixg sum_k G F, channel
    sum_k mean_p(ReLU G) F, gradcam sum_k mean_p(G) F (activation not included). ``weights``:
    the channel means of a 4-D ``grads`` when already known (a backward)."""
    form = map_form(KIND_NAMES[kind])  # the kind table's second column
    if form in (None, "sum"):
        scale = 1.0 / max(features.shape[1], 1) if form is None else 1.0
        return Side(grads, MAP if grads.dim() == 4 else VEC, scale)
    positive = form == "positive"
    if grads.dim() == 4:
        return Side(channel_means(grads, positive) if weights is None else weights, VEC)
    return Side(grads, RELU_VEC if positive else VEC)


@triton.jit
def _times_side(f, off, x_ptr, x_sn, x_sk, x_sp, n, k, p, mask, kmask, MODE: tl.constexpr,
                SHARED: tl.constexpr):
    """F * X on a [BLOCK_K, BLOCK_P] tile for one side (MODE MAP, VEC or RELU_VEC); off: F's
    offsets, X's too when SHARED."""
    if MODE == _MAP:
        x_off = offsets_like(off, x_sn, x_sk, x_sp, n, k, p, SHARED)
        x = tl.load(x_ptr + x_off, mask=mask, other=0.0)
        prod = f * x.to(tl.float32)
    else:
        prod = f * load_weights(x_ptr, x_sn, x_sk, n, k, kmask, MODE == _RELU_VEC)[:, None]
    return prod


@triton.jit
def _store_map(acc, out_ptr, scale, n, s, nsplit, p, pmask, HW,
               RELU: tl.constexpr, PARTIAL: tl.constexpr):
    """Sum the tile over channels; store act(scale * sum) to out[n, p], or the raw partial sum
    to out[n, s, p] when PARTIAL (a later sum_splits applies scale and act)."""
    v = tl.sum(acc, axis=0)
    if not PARTIAL:
        v = v * scale
        if RELU:
            v = relu(v)
    tl.store(out_ptr + (n * nsplit + s) * HW + p, v, mask=pmask)


@big_autotune(key=["K", "HW", "f_sk", "f_sp", "T_MODE", "C_MODE"])
@triton.jit
def _attention_maps_kernel(f_ptr, f_sn, f_sk, f_sp, f_rows,
                           t_ptr, t_sn, t_sk, t_sp, t_scale, t_out,
                           c_ptr, c_sn, c_sk, c_sp, c_scale, c_out,
                           K, HW, k_chunk,
                           T_MODE: tl.constexpr, C_MODE: tl.constexpr, RELU: tl.constexpr,
                           PARTIAL: tl.constexpr, SHARED: tl.constexpr, GATHER: tl.constexpr,
                           BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    """Maps of one or two sides (C_MODE NONE: one): program (n, pixel block) x channel split s
    sums channels [s * k_chunk, (s + 1) * k_chunk) of F * X_side, float32 accumulation.
    GATHER: map n reads F[f_rows[n]] (and X[n]); else F[n]."""
    pid = tl.program_id(0)
    s = tl.program_id(1)
    num_pblk = tl.cdiv(HW, BLOCK_P)
    n = (pid // num_pblk).to(tl.int64)
    nf = n
    if GATHER:
        nf = tl.load(f_rows + n)
    p = (pid % num_pblk) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < HW
    k_lo = s * k_chunk
    k_hi = tl.minimum(k_lo + k_chunk, K)
    acc_t = tl.zeros([BLOCK_K, BLOCK_P], tl.float32)
    acc_c = tl.zeros([BLOCK_K, BLOCK_P], tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < k_hi
        mask, off, f = load_tile(f_ptr, f_sn, f_sk, f_sp, nf, k, kmask, p, pmask)
        acc_t += _times_side(f, off, t_ptr, t_sn, t_sk, t_sp, n, k, p, mask, kmask, T_MODE, SHARED)
        if C_MODE != _NONE:
            acc_c += _times_side(f, off, c_ptr, c_sn, c_sk, c_sp, n, k, p, mask, kmask, C_MODE,
                                 SHARED)
    nsplit = tl.num_programs(1)
    _store_map(acc_t, t_out, t_scale, n, s, nsplit, p, pmask, HW, RELU, PARTIAL)
    if C_MODE != _NONE:
        _store_map(acc_c, c_out, c_scale, n, s, nsplit, p, pmask, HW, RELU, PARTIAL)


def attention_maps(features, sides, relu=True, rows=None):
    """One N x H x W map (float32; float64 for float64 F) per side, in one read of F.

    m[n,p] = act(scale * sum_k F[n,k,p] X_side), act = ReLU if ``relu`` else identity.
    ``rows`` (R int64 image indices, optional): R maps, map r from F[rows[r]] and X_side[r].
    Small batches split the channel sum over programs (deterministic second step).
    """
    _, k, h, w = features.shape
    n = features.shape[0] if rows is None else rows.shape[0]
    hw = h * w
    maps = [torch.empty(n, h, w, device=features.device, dtype=acc_dtype(features))
            for _ in sides]
    if not launchable(features, *[sd.x for sd in sides]):
        return [m.zero_() for m in maps]  # an empty channel sum is 0
    nsplit = num_splits(features.device, n * triton.cdiv(hw, 64), k)
    outs = maps if nsplit == 1 else [workspace(n, nsplit, hw, features) for _ in sides]
    t = sides[0]
    c = sides[1] if len(sides) > 1 else Side(t.x, NONE)
    grid = lambda meta: (n * triton.cdiv(hw, meta["BLOCK_P"]), nsplit)  # noqa: E731
    wrap_triton(_attention_maps_kernel)[grid](
        features, *big_strides(features), features if rows is None else rows,
        t.x, *t.strides(), t.scale, outs[0],
        c.x, *c.strides(), c.scale, outs[-1],
        k, hw, triton.cdiv(k, nsplit),
        T_MODE=t.mode, C_MODE=c.mode, RELU=relu, PARTIAL=nsplit > 1,
        SHARED=rows is None and shared_layout(features, *[sd.x for sd in sides if sd.mode == MAP]),
        GATHER=rows is not None)
    if nsplit > 1:
        for part, side, out in zip(outs, sides, maps):
            sum_splits(part, out.view(n, hw), side.scale, 1 if relu else 0)
    return maps


@triton.jit
def _map_grad(dm_ptr, m_ptr, scale, n, p, pmask, HW, RELU: tl.constexpr):
    """e[n,p] = scale * dm[n,p] * [m[n,p] > 0] (ReLU) or scale * dm[n,p]."""
    e = tl.load(dm_ptr + n * HW + p, mask=pmask, other=0.0).to(tl.float32) * scale
    if RELU:
        m = tl.load(m_ptr + n * HW + p, mask=pmask, other=0.0)
        e = tl.where(m <= 0, 0.0, e)  # ReLU' = 0 at m <= 0 (1 at NaN, as torch)
    return e


@triton.jit
def _side_weights(x_ptr, x_sn, x_sk, n, k, kmask, MODE: tl.constexpr, BLOCK_K: tl.constexpr):
    """The weights of a (RELU_)VEC side (ReLU applied for RELU_VEC); zeros for MAP / NONE."""
    w = tl.zeros([BLOCK_K], tl.float32)
    if MODE != _MAP and MODE != _NONE:
        w = load_weights(x_ptr, x_sn, x_sk, n, k, kmask, MODE == _RELU_VEC)
    return w


@triton.jit
def _grad_side(f, off, e, w, x_ptr, x_sn, x_sk, x_sp, dx_ptr, dx_sn, dx_sk, dx_sp,
               n, k, p, mask, MODE: tl.constexpr, WRITE_DX: tl.constexpr, SHARED: tl.constexpr):
    """This side's share of dF on a tile: e * X (MAP) or e * w (VEC); stores dX = e * F (MAP).
    off: F's offsets, X's and dX's too when SHARED."""
    if MODE == _MAP:
        x_off = offsets_like(off, x_sn, x_sk, x_sp, n, k, p, SHARED)
        x = tl.load(x_ptr + x_off, mask=mask, other=0.0)
        df = e[None, :] * x.to(tl.float32)
        if WRITE_DX:
            dx_off = offsets_like(off, dx_sn, dx_sk, dx_sp, n, k, p, SHARED)
            tl.store(dx_ptr + dx_off, e[None, :] * f, mask=mask)
    else:
        df = e[None, :] * w[:, None]
    return df


@big_autotune(key=["K", "HW", "f_sk", "f_sp", "T_MODE", "C_MODE"])
@triton.jit
def _attention_grads_kernel(f_ptr, f_sn, f_sk, f_sp, df_ptr, df_sn, df_sk, df_sp,
                            t_ptr, t_sn, t_sk, t_sp, t_scale, t_dm, t_m,
                            t_dx, t_dx_sn, t_dx_sk, t_dx_sp, t_part,
                            c_ptr, c_sn, c_sk, c_sp, c_scale, c_dm, c_m,
                            c_dx, c_dx_sn, c_dx_sk, c_dx_sp, c_part,
                            K, HW, p_chunk,
                            T_MODE: tl.constexpr, C_MODE: tl.constexpr, RELU: tl.constexpr,
                            WRITE_DX: tl.constexpr, SHARED: tl.constexpr,
                            BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    """Backward of _attention_maps_kernel: program (n, channel block) x pixel split s walks
    pixels [p_lo, p_hi) once, writing dF (and dX of MAP sides) and the partial
    sum_p e * F of VEC sides to part[n, s, k]."""
    n, k, kmask, p_lo, p_hi, s = channel_block_program(K, HW, p_chunk, BLOCK_K, BLOCK_P)
    w_t = _side_weights(t_ptr, t_sn, t_sk, n, k, kmask, T_MODE, BLOCK_K)
    w_c = _side_weights(c_ptr, c_sn, c_sk, n, k, kmask, C_MODE, BLOCK_K)
    dw_t = tl.zeros([BLOCK_K, BLOCK_P], tl.float32)
    dw_c = tl.zeros([BLOCK_K, BLOCK_P], tl.float32)
    for p0 in range(p_lo, p_hi, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        pmask = p < p_hi
        mask, off, f = load_tile(f_ptr, f_sn, f_sk, f_sp, n, k, kmask, p, pmask)
        e_t = _map_grad(t_dm, t_m, t_scale, n, p, pmask, HW, RELU)
        df = _grad_side(f, off, e_t, w_t, t_ptr, t_sn, t_sk, t_sp, t_dx, t_dx_sn, t_dx_sk,
                        t_dx_sp, n, k, p, mask, T_MODE, WRITE_DX, SHARED)
        if T_MODE != _MAP:
            dw_t += e_t[None, :] * f
        if C_MODE != _NONE:
            e_c = _map_grad(c_dm, c_m, c_scale, n, p, pmask, HW, RELU)
            df += _grad_side(f, off, e_c, w_c, c_ptr, c_sn, c_sk, c_sp, c_dx, c_dx_sn, c_dx_sk,
                             c_dx_sp, n, k, p, mask, C_MODE, WRITE_DX, SHARED)
            if C_MODE != _MAP:
                dw_c += e_c[None, :] * f
        df_off = offsets_like(off, df_sn, df_sk, df_sp, n, k, p, SHARED)
        tl.store(df_ptr + df_off, df, mask=mask)
    nsplit = tl.num_programs(1)
    if T_MODE != _MAP:
        tl.store(t_part + (n * nsplit + s) * K + k, tl.sum(dw_t, axis=1), mask=kmask)
    if C_MODE != _MAP and C_MODE != _NONE:
        tl.store(c_part + (n * nsplit + s) * K + k, tl.sum(dw_c, axis=1), mask=kmask)


def attention_grads(features, sides, dmaps, maps, relu=True, write_dx=True):
    """Backward of ``attention_maps(features, sides, relu)`` for upstream ``dmaps`` (N x H x W).

    ``maps`` are the forward maps (only read for the ReLU mask). Returns (dF, grads): grads[i] is
    dX (X's dtype and layout) for a MAP side (None unless ``write_dx``), and for a (RELU_)VEC side
    the N x K gradient w.r.t. its operand (float32, float64 for float64 F).
    """
    n, k, h, w = features.shape
    hw = h * w
    dfeat = torch.empty_like(features)
    grads = [(torch.empty_like(sd.x) if write_dx else None) if sd.mode == MAP else
             torch.empty(n, k, device=features.device, dtype=acc_dtype(features)) for sd in sides]
    if not launchable(features, *[sd.x for sd in sides]):
        return dfeat, [g if g is None else g.zero_() for g in grads]
    nsplit = num_splits(features.device, n * triton.cdiv(k, 64), hw)
    parts = [workspace(n, nsplit, k, features) if sd.mode != MAP else None for sd in sides]
    args = []
    for sd, dm, m, g, part in zip(sides, dmaps, maps if relu else dmaps, grads, parts):
        dx = g if sd.mode == MAP and g is not None else dfeat  # dfeat: placeholder, not written
        args.append([sd.x, *sd.strides(), sd.scale, dm, m, dx, *big_strides(dx),
                     dfeat if part is None else part])
    args.append(args[0])  # placeholder for an absent second side (mode NONE, never read)
    modes = [sd.mode for sd in sides] + [NONE]
    big = [features, dfeat] + [t for sd, g in zip(sides, grads) if sd.mode == MAP
                               for t in (sd.x, g) if t is not None]
    grid = lambda meta: (n * triton.cdiv(k, meta["BLOCK_K"]), nsplit)  # noqa: E731
    wrap_triton(_attention_grads_kernel)[grid](
        features, *big_strides(features), dfeat, *big_strides(dfeat), *args[0], *args[1],
        k, hw, triton.cdiv(hw, nsplit),
        T_MODE=modes[0], C_MODE=modes[1], RELU=relu, WRITE_DX=write_dx,
        SHARED=shared_layout(*big))
    for sd, part, g in zip(sides, parts, grads):
        if part is not None:
            sum_splits(part, g, 1.0, 2 if sd.mode == RELU_VEC else 0, sd.x)
    return dfeat, grads
