"""The boundary table: inputs placed exactly on the points where docs/SPEC.md fixes a rule that
random inputs never reach, with their outputs and gradients pinned by hand.

Rules (docs/SPEC.md): ReLU'(0) = 0 (decision 6), ties of min(a, b) split 1/2-1/2 and ties at a
map's max split evenly (decision 6), clamps pass the gradient at the bound, ``>= eps`` (decision
11), the max of a signed map clamped at 0 and what its gradient does when that max is exactly 0
(decision 12), all-zero maps stay zero and finite (decision 7), bilinear resizing with
``align_corners=False`` (decision 4).

Inputs are quarter-integers (exact in float16 and bfloat16, sums of a few exact in float32), so
every backend computes the same kink on the same side. ``expected`` and ``grads`` are written
from the formulas of docs/SPEC.md in float64, independently of ``attnfast.reference``; ``grads``
are the gradients of the sum of all outputs (upstream gradient one everywhere). Where a
gradient is not written out (the fused loss), it is compared with float64 autograd of the
reference and the entries a rule forces to zero are pinned (``zeros``).

``run(entry, backend, dtype)`` checks one entry on one backend; ``tests/test_boundaries.py``
runs the table on cpu, triton and torch, ``tests/test_cuda_emu.py`` on the emulated CUDA
kernels. ``BY_OP`` must name every op of ``attnfast._schema.OPS`` (tests/test_op_samples.py):
adding an op is adding its entries (or an empty list, saying why).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

import attnfast
from helpers import DEVICE, close, tol


@dataclass(frozen=True)
class Boundary:
    """One pinned case: ``call(*inputs)`` -> outputs == ``expected``; d(sum of outputs)/d input
    == ``grads`` (None: float64 reference autograd), and zero wherever ``zeros`` is True."""
    name: str
    op: str
    rule: str
    inputs: tuple                       # nested lists (float64 values)
    call: Callable
    expected: tuple                     # one nested list / tensor per output
    grads: tuple | None = None          # one per input, or None
    zeros: dict = field(default_factory=dict)   # input index -> bool mask of forced zeros
    low_precision: bool = True          # inputs exact in float16 / bfloat16 too
    cancel: float = 0.0                 # size of terms that cancel in a gradient (ties at a
    #                                     max: the scale-invariant map's gradient is ~eps)


def T(x):
    return torch.tensor(x, dtype=torch.float64)


EPS = 1e-6
EPS2 = 2.0 ** -10  # an eps that float16, bfloat16, float32 and float64 all hold exactly


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------ ReLU'(0) = 0
# pixel_attention, K = 2, H = 1 < W = 4: pre = (F0 G0 + F1 G1) / 2 = [0, 0.375, -0.125, 0]
_PA_F = [[[[1.0, 1.0, -1.0, 0.0]], [[1.0, 0.5, 0.25, 0.0]]]]
_PA_G = [[[[0.5, 0.5, 0.5, 1.0]], [[-0.5, 0.5, 1.0, 1.0]]]]
_PA_ON = [[[[0.0, 1.0, 0.0, 0.0]]] * 2]  # only pixel 1 is above the kink

# channel_weights, G exactly 0 at some entries (ReLU'(0) = 0 of positive=True), W = 1 < H = 4
_CW_G = [[[[0.0], [1.0], [-1.0], [0.5]], [[0.0], [0.0], [0.0], [0.0]]]]

# weighted_attention, W = 1 < H = 3: pre = F0 - F1 / 2 = [0, 1.5, -1]
_WA_F = [[[[1.0], [2.0], [-1.0]], [[2.0], [1.0], [0.0]]]]
_WA_W = [[1.0, -0.5]]


# ------------------------------------------------------------------ ties at the max, signed max 0
def _normalize_case():
    """Sample 0: a tie at the max (2); sample 1: a signed map whose max is exactly 0 (a tie of
    two zeros: the clamp passes, decision 11, and the share splits, decision 6); sample 2: all
    negative (max < 0: the clamp stops the gradient through the max)."""
    a = [[[2.0, 1.0], [2.0, 0.0]], [[0.0, -1.0], [-0.5, 0.0]], [[-1.0, -2.0], [-0.25, -3.0]]]
    out, grad = [], []
    for s in a:
        flat = [v for row in s for v in row]
        m = max(flat)
        d = max(m, 0.0) + EPS
        out.append([[v / d for v in row] for row in s])
        ties = [v == m for v in flat] if m >= 0 else [False] * 4
        share = -sum(flat) / d ** 2 / max(1, sum(ties))
        g = [1 / d + (share if t else 0.0) for t in ties]
        grad.append([g[:2], g[2:]])
    return a, out, grad


_NA_IN, _NA_OUT, _NA_GRAD = _normalize_case()


# ------------------------------------------------------------------ min ties in soft_iou
def _iou_case(masked):
    """min(a, b) at a == b sends half the gradient to each side (pixel 0 and 3 tie)."""
    a, b = [[[1.0, 2.0], [3.0, 0.5]]], [[[1.0, 1.0], [4.0, 0.5]]]
    m = [[[0.5, 1.0], [0.25, 1.0]]] if masked else [[[1.0, 1.0], [1.0, 1.0]]]
    fa, fb, fm = ([v for row in x[0] for v in row] for x in (a, b, m))
    den = sum(fa) + sum(fb) + EPS
    inter = sum(min(x, y) * w for x, y, w in zip(fa, fb, fm))
    iou = 2 * inter / den
    share = [0.5 if x == y else (1.0 if x < y else 0.0) for x, y in zip(fa, fb)]
    ga = [2 * s * w / den - iou / den for s, w in zip(share, fm)]
    gb = [2 * (1 - s) * w / den - iou / den for s, w in zip(share, fm)]
    gm = [2 * min(x, y) / den for x, y in zip(fa, fb)]
    two = lambda v: [[v[:2], v[2:]]]  # noqa: E731
    return (a, b, m), [iou], (two(ga), two(gb), two(gm))


# ------------------------------------------------------------------ soft_mask: ties, resize
def _mask_case():
    """A 1 x 2 map with its max tied, resized to 1 x 4 (align_corners=False: source x of
    output j is j/2 - 1/4, clamped to [0, 1]: weights [1, 0], [3/4, 1/4], [1/4, 3/4], [0, 1])."""
    a = [[[1.0, 1.0]], [[0.5, 1.0]]]
    sigma, omega = 0.5, 4.0
    wts = [(1.0, 0.0), (0.75, 0.25), (0.25, 0.75), (0.0, 1.0)]
    out, grad = [], []
    for x0, x1 in (s[0] for s in a):
        m = max(x0, x1)
        d = m + EPS
        n0, n1 = x0 / d, x1 / d
        r = [w0 * n0 + w1 * n1 for w0, w1 in wts]
        y = [_sig(omega * (v - sigma)) for v in r]
        out.append([y])
        dy = [omega * v * (1 - v) for v in y]            # d y_j / d r_j
        dn0 = sum(g * w0 for g, (w0, _) in zip(dy, wts))  # d sum / d n0, n1
        dn1 = sum(g * w1 for g, (_, w1) in zip(dy, wts))
        through_max = -(dn0 * x0 + dn1 * x1) / d ** 2
        ties = [x0 == m, x1 == m]
        share = through_max / sum(ties)
        grad.append([[dn0 / d + (share if ties[0] else 0), dn1 / d + (share if ties[1] else 0)]])
    return a, out, grad, sigma, omega


_SM_IN, _SM_OUT, _SM_GRAD, _SM_SIGMA, _SM_OMEGA = _mask_case()


# ------------------------------------------------------------------ clamps at eps (ggam_loss)
def _ggam_case():
    """S = [eps, 0, 1/2, 1/4] with eps = 2^-10 exactly: S[0] sits on the clamp (>= eps passes
    the gradient, decision 11), S[1] below it (no gradient); beta = 0 gives q = 1/4 each."""
    s = [EPS2, 0.0, 0.5, 0.25]
    beta = [0.0, 0.0, 0.0, 0.0]
    k = len(s)
    q = [1.0 / k] * k
    p = [max(v, EPS2) for v in s]
    loss = 0.5 * sum((a - b) * (math.log(a) - math.log(b)) for a, b in zip(p, q))
    gs = [0.5 * (math.log(a) - math.log(b) + 1 - b / a) if v >= EPS2 else 0.0
          for v, a, b in zip(s, p, q)]
    dq = [0.5 * (math.log(b) - math.log(a) + 1 - a / b) for a, b in zip(p, q)]
    sg = [_sig(v) for v in beta]
    tot = sum(sg)
    gb = [sg[i] * (1 - sg[i]) / tot * sum(dq[j] * ((i == j) - q[j]) for j in range(k))
          for i in range(k)]
    return ([s], [beta]), [loss], ([gs], [gb])


_GG_IN, _GG_OUT, _GG_GRAD = _ggam_case()


# ------------------------------------------------------------------ all-zero features (GGAM)
# A = 0 (C = 2, H = 3 > W = 1): T = 0, D = 0; d(sum D + sum T)/dA[c, p] = S[c] / eps, dS = 0
_CSA_S = [[0.75, 0.25]]
_CSA_A = [[[[0.0], [0.0], [0.0]], [[0.0], [0.0], [0.0]]]]


# ------------------------------------------------------------------ the fused loss at kinks
def _sf_case():
    """K = 1, pixel kind, inner and last maps 1 x 2 (H = 1 < W): last target map [1, 1] (a
    tie at the max), last confuser [1, 0] (pre-activation exactly 0 at pixel 1), inner target
    and confuser [1/2, 0] (ties of min at both pixels, pre-activation 0 at pixel 1)."""
    fi, gti, gci = [[[[1.0, -1.0]]]], [[[[0.5, 0.0]]]], [[[[0.5, 1.0]]]]
    fl, gtl, gcl = [[[[1.0, 1.0]]]], [[[[1.0, 1.0]]]], [[[[1.0, 0.0]]]]
    sigma, omega, alpha = 0.55, 2.0, 1.0  # omega 2: a mask near 0.7, no cancellation in L_ac
    u, v = 0.5 / (0.5 + EPS), 1.0 / (1.0 + EPS)   # normalized inner peak, last peak
    mask = _sig(omega * (v - sigma))
    inner = 2 * u * mask / (2 * u + EPS)
    last = 2 * v * mask / (3 * v + EPS)
    cons = alpha - u * mask / (u + EPS)
    zeros = {2: T([[[[False, True]]]]), 5: T([[[[False, True]]]])}  # dGc at the kinks
    return (fi, gti, gci, fl, gtl, gcl), (inner, last, cons), zeros


_SF_IN, _SF_OUT, _SF_ZEROS = _sf_case()


def _sf_call(*t, attention="pixel"):
    out = attnfast.sharpen_focus_loss(*t, attention=attention, omega=2.0, reduction="none")
    return out.inner_iou, out.last_iou, out.consistency


def _sf_flat_case():
    """Channel kind with N x K last-layer gradients (a GAP head's) exactly 0 at one channel:
    w = ReLU(g) has ReLU'(0) = 0 there. Inner K = 1, 1 x 2: w_t = 1, w_c = 1/2, A_it = [1, 1/2],
    A_ic = [1/2, 1/4]; last K = 2, 1 x 2: w_t = ReLU([1, 0]), w_c = ReLU([0, 1/2]),
    A_lt = [1, 1/2], A_lc = [1/4, 1/2]; every mask is sigmoid(omega (A_lt / (1 + eps) - sigma))."""
    fi, gti, gci = [[[[1.0, 0.5]]]], [[[[1.0, 1.0]]]], [[[[0.5, 0.5]]]]
    fl, gtl, gcl = [[[[1.0, 0.5]], [[0.5, 1.0]]]], [[1.0, 0.0]], [[0.0, 0.5]]
    sigma, omega, alpha = 0.55, 2.0, 1.0

    def n(a):
        return [v / (max(a) + EPS) for v in a]
    ti, ci, tl, cl = n([1.0, 0.5]), n([0.5, 0.25]), n([1.0, 0.5]), n([0.25, 0.5])
    mask = [_sig(omega * (v - sigma)) for v in tl]

    def iou(a, b):
        return 2 * sum(min(x, y) * m for x, y, m in zip(a, b, mask)) / (sum(a) + sum(b) + EPS)
    cons = alpha - sum(x * m for x, m in zip(ti, mask)) / (sum(ti) + EPS)
    zeros = {4: T([[False, True]]), 5: T([[True, False]])}  # dg at g = 0
    return (fi, gti, gci, fl, gtl, gcl), (iou(ti, ci), iou(tl, cl), cons), zeros


_SFF_IN, _SFF_OUT, _SFF_ZEROS = _sf_flat_case()


# ------------------------------------------------------------------ guidance: ReLU'(0) of A+, a cut cell
# ixg, K = 1, F = 1: A = G = [[1/2, 0], [1/4, -1/2]] (one pixel exactly 0, one negative) on a 4 x 4
# image, box (0, 0, 3, 2): cov = [[1, 0], [1/2, 0]]; A+ sums to 3/4, 5/8 of it inside: energy
# 1/6; dE/dA+ = -(cov - 5/6) / (3/4) where A > 0, else 0 (ReLU'(0) = 0); dG = dE/dA F, dF = dE/dA G.
_GU_F, _GU_G = [[[[1.0, 1.0], [1.0, 1.0]]]], [[[[0.5, 0.0], [0.25, -0.5]]]]
_GU_DA = [[[[-2.0 / 9, 0.0], [4.0 / 9, 0.0]]]]


def _guidance_call(f, g, attention="ixg", loss="energy"):
    boxes = torch.tensor([[[0.0, 0.0, 3.0, 2.0]]], device=f.device)
    return attnfast.guidance_loss(f, g, boxes, image_size=(4, 4), attention=attention,
                                  loss=loss, reduction="none")


# channel kind with R x K gradients exactly 0 at one channel (w = ReLU(g), ReLU'(0) = 0): K = 2,
# g = [1, 0] gives A = ReLU(F[0]) = [[1/2, 0], [1/4, 1/2]]; with the box above (1 - cov = [[0, 1],
# [1/2, 1]]) rrr = sum (1 - cov) A^2 = 1/32 + 1/4 = 9/32, dL/dg = [sum 2 (1 - cov) A F[0], 0]
_GUF_F = [[[[0.5, 0.0], [0.25, 0.5]], [[1.0, -1.0], [0.5, 0.25]]]]
_GUF_G = [[1.0, 0.0]]


TABLE = [
    Boundary("relu0_pixel", "pixel_attention", "ReLU'(0) = 0", (_PA_F, _PA_G),
             attnfast.pixel_attention, ([[[0.0, 0.375, 0.0, 0.0]]],),
             grads=((T(_PA_G) / 2 * T(_PA_ON)).tolist(), (T(_PA_F) / 2 * T(_PA_ON)).tolist())),
    Boundary("relu0_weights", "channel_weights", "ReLU'(0) = 0", (_CW_G,),
             lambda g: attnfast.channel_weights(g, positive=True), ([[0.375, 0.0]],),
             grads=((T(_CW_G) > 0).double().div(4).tolist(),)),
    Boundary("gradcam_weights", "channel_weights", "no ReLU (positive=False)", (_CW_G,),
             lambda g: attnfast.channel_weights(g, positive=False), ([[0.125, 0.0]],),
             grads=(torch.full((1, 2, 4, 1), 0.25).tolist(),)),
    Boundary("relu0_weighted", "weighted_attention", "ReLU'(0) = 0", (_WA_F, _WA_W),
             attnfast.weighted_attention, ([[[0.0], [1.5], [0.0]]],),
             grads=([[[[0.0], [1.0], [0.0]], [[0.0], [-0.5], [0.0]]]], [[2.0, 1.0]])),
    Boundary("max_ties_signed_zero", "normalize_attention",
             "ties at the max split; max exactly 0 passes the clamp; max < 0 does not",
             (_NA_IN,), attnfast.normalize_attention, (_NA_OUT,), grads=(_NA_GRAD,)),
    Boundary("min_ties", "soft_iou", "min ties split 1/2-1/2", _iou_case(False)[0][:2],
             attnfast.soft_iou, (_iou_case(False)[1],), grads=_iou_case(False)[2][:2]),
    Boundary("min_ties_masked", "soft_iou", "min ties split 1/2-1/2 (masked)",
             _iou_case(True)[0], attnfast.soft_iou, (_iou_case(True)[1],),
             grads=_iou_case(True)[2]),
    Boundary("max_ties_resize", "soft_mask", "max ties split; bilinear align_corners=False",
             (_SM_IN,), lambda a: attnfast.soft_mask(a, sigma=_SM_SIGMA, omega=_SM_OMEGA,
                                                     size=(1, 4)),
             (_SM_OUT,), grads=(_SM_GRAD,), cancel=2.0),
    Boundary("all_zero_map", "attention_consistency", "all-zero map: alpha, finite gradient",
             ([[[0.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.5], [1.0, 0.25]]]),
             lambda a, m: attnfast.attention_consistency(a, m, alpha=0.75), ([0.75],),
             grads=([[[0.0, -0.5 / EPS], [-1.0 / EPS, -0.25 / EPS]]], [[[0.0, 0.0], [0.0, 0.0]]])),
    Boundary("clamp_at_eps", "ggam_loss", "clamp passes the gradient where S >= eps", _GG_IN,
             lambda s, b: attnfast.ggam_loss(s, b, eps=EPS2), (_GG_OUT,), grads=_GG_GRAD),
    Boundary("all_zero_features", "channel_spatial_attention", "all-zero A: T = D = 0, finite",
             (_CSA_A, _CSA_S), attnfast.channel_spatial_attention,
             (_CSA_A, [[[0.0], [0.0], [0.0]]]),
             grads=((T(_CSA_S)[:, :, None, None].expand(1, 2, 3, 1) / EPS).tolist(),
                    [[0.0, 0.0]])),
    Boundary("fused_kinks", "sharpen_focus_loss", "ReLU'(0) = 0, max and min ties, fused",
             _SF_IN, _sf_call, tuple([x] for x in _SF_OUT), zeros=_SF_ZEROS, cancel=1.0),
    Boundary("fused_relu0_flat_grads", "sharpen_focus_loss",
             "ReLU'(0) = 0 of N x K gradients (channel kind)", _SFF_IN,
             lambda *t: _sf_call(*t, attention="channel"), tuple([x] for x in _SFF_OUT),
             zeros=_SFF_ZEROS, cancel=1.0),
    Boundary("guidance_relu0_flat_grads", "guidance_loss",
             "ReLU'(0) = 0 of R x K gradients (channel kind)", (_GUF_F, _GUF_G),
             lambda f, g: _guidance_call(f, g, "channel", "rrr"), ([9.0 / 32],),
             zeros={1: T([[False, True]])}),
    Boundary("energy_relu0_cut_cell", "guidance_loss",
             "ReLU'(0) = 0 of A+; box coverage of a cut cell", (_GU_F, _GU_G), _guidance_call,
             ([1.0 / 6],), grads=((T(_GU_DA) * T(_GU_G)).tolist(), _GU_DA),
             zeros={0: T([[[[False, True], [False, True]]]]), 1: T([[[[False, True], [False, True]]]])}),
]
BY_OP: dict = {}
for _b in TABLE:
    BY_OP.setdefault(_b.op, []).append(_b)
del _b


def dtypes_for(entry, backend_dtypes):
    """The dtypes an entry runs in on a backend: all of the backend's, the half types only where
    the entry's inputs are exact in them."""
    return [d for d in backend_dtypes
            if entry.low_precision or d not in (torch.float16, torch.bfloat16)]


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def run(entry, backend, dtype, device=DEVICE):
    """Check ``entry`` on ``backend`` with big inputs (rank 4) in ``dtype`` and small ones in
    the accumulation dtype (or ``dtype``: the ops take either)."""
    xs = [T(x).to(device=device, dtype=dtype if T(x).dim() == 4 else _acc(dtype))
          .requires_grad_() for x in entry.inputs]
    with attnfast.use_backend(backend):
        outs = entry.call(*xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    assert len(outs) == len(entry.expected), entry.name
    rtol_out = 1e-10 if dtype == torch.float64 else 2e-5
    for i, (o, e) in enumerate(zip(outs, entry.expected)):
        close(o, T(e) if not torch.is_tensor(e) else e, f"{entry.name} on {backend}: output {i}",
              rtol_out, atol=1e-12)
    got = torch.autograd.grad([o.float().sum() if o.dtype != torch.float64 else o.sum()
                               for o in outs], xs, allow_unused=True)
    got = [torch.zeros_like(x) if g is None else g for x, g in zip(xs, got)]
    if entry.grads is None:
        ref = [T(x).requires_grad_() for x in entry.inputs]
        with attnfast.use_backend("torch"):
            ro = entry.call(*ref)
        ro = ro if isinstance(ro, tuple) else (ro,)
        want = torch.autograd.grad([o.sum() for o in ro], ref, allow_unused=True)
        want = [torch.zeros_like(x) if g is None else g for x, g in zip(ref, want)]
    else:
        want = [T(g) for g in entry.grads]
    for j, (g, w, x) in enumerate(zip(got, want, xs)):
        assert g.dtype == x.dtype, f"{entry.name}: gradient {j} in {g.dtype}, input {x.dtype}"
        where = f"{entry.name} on {backend}: gradient of input {j}"
        atol = 1e-9 + 8 * entry.cancel * torch.finfo(_acc(dtype)).eps  # what the sum can do
        close(g, w.to(g.dtype), where, tol(dtype) if dtype != torch.float32 else 2e-5, atol=atol)
        if j in entry.zeros:
            assert (g.detach().cpu()[entry.zeros[j].bool()] == 0).all(), \
                f"{where}: not exactly 0 where a rule says so"
