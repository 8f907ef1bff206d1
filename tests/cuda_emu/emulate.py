"""Runs the host-emulated CUDA launchers against attnfast.reference (float64 autograd).

LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 python emulate.py
"""
import ctypes as C
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from attnfast import reference as R  # noqa: E402

lib = C.CDLL(os.environ.get("EMU_LIB", os.path.join(os.environ.get("EMU_DIR", "/tmp/attnfast_emu"), "libemu.so")))
DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
RESULTS = []
DUMP = [] if os.environ.get("EMU_DUMP") else None
torch.manual_seed(0)


_ALIVE = []


def P(t):
    """Pointer to t's data; t is kept alive (temporaries like x.float() included)."""
    if t is None or not t.numel():
        return C.c_void_p(0)
    _ALIVE.append(t)
    if len(_ALIVE) > 64:
        del _ALIVE[:32]
    return C.c_void_p(t.data_ptr())


def geo(t):
    n, k, h, w = t.shape
    sp = 0 if h * w == 1 else (t.stride(2) if w == 1 else t.stride(3))
    g = [n, k, h, w, 0 if n == 1 else t.stride(0), 0 if k == 1 else t.stride(1), sp]
    return (C.c_int64 * 7)(*g)


def f(x):
    return C.c_float(x)


def i64(x):
    return C.c_int64(x)


def check(name, got, want, tol, want32=None):
    """Max abs error relative to the max |want|; passes under tol, or within 4x the error of
    the float32 reference `want32` (cancellation-bound cases, e.g. 1 x 1 maps)."""
    got = got.double()
    want = want.double()
    scale = max(want.abs().max().item(), 1e-12) if want.numel() else 1.0
    err = (got - want).abs().max().item() / scale if want.numel() else 0.0
    bound = tol
    if want32 is not None and want.numel():
        bound = max(tol, 4 * (want32.double() - want).abs().max().item() / scale)
    ok = err <= bound and not torch.isnan(got).any().item()
    if DUMP is not None:
        DUMP.append((name, got.clone()))
    RESULTS.append((name, err, ok))
    if not ok:
        idx = (got - want).abs().flatten().argmax().item() if want.numel() else 0
        print(f"FAIL {name}: rel err {err:.3g} > {tol:g} at {idx}: got {got.flatten()[idx].item()} "
              f"want {want.flatten()[idx].item()}")
    return err


def tol_for(dt, out_in_dt=False):
    if dt == torch.float32:
        return 2e-5
    return (8e-3 if dt == torch.float16 else 4e-2) if out_in_dt else 2e-5


def make(shape, dt, fmt, lo=-1.0, hi=1.0, quant=False):
    x = torch.empty(shape, dtype=torch.float64).uniform_(lo, hi)
    if quant:
        x = (x * 4).round() / 4
    x = x.to(dt)
    return x.contiguous(memory_format=fmt) if x.dim() == 4 else x.contiguous()


def grads64(fn, inputs, upstream, dtype=torch.float64):
    xs = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
    outs = fn(*xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, [u.to(dtype) for u in upstream])
    return [o.detach() for o in outs], [x.grad for x in xs]


def grads32(fn, inputs, upstream):
    return grads64(fn, inputs, upstream, torch.float32)


SHAPES = [(2, 16, 4, 4), (2, 24, 7, 7), (3, 13, 5, 3), (1, 128, 4, 4), (2, 8, 1, 1), (1, 512, 2, 3),
          (1, 2048, 1, 2), (1, 4, 64, 64), (1, 3, 63, 65)]  # the last three: split plans
# EMU_QUICK=1 (the AddressSanitizer run of `make test`, asan_check.sh): a subset that still has
# odd sizes, the 1 x 1 map, vector and scalar runs, split plans and every fused-loss branch. The
# fused losses take a covering design instead of the full product of their options (sf_quick,
# guide_quick): every value of every option, every pair of options' values, and for
# guidance_loss every kind x loss pair.
QUICK = bool(os.environ.get("EMU_QUICK"))
if QUICK:
    SHAPES = [(3, 13, 5, 3), (2, 8, 1, 1), (1, 4, 64, 64)]
FORMATS = [torch.contiguous_format, torch.channels_last]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def test_big_ops():
    for shape, fmt, dt in itertools.product(SHAPES, FORMATS, DTYPES):
        tag = f"{shape} {'NHWC' if fmt is torch.channels_last else 'NCHW'} {str(dt)[6:]}"
        N, K, H, W = shape
        Fe = make(shape, dt, fmt, quant=True)
        G = make(shape, dt, fmt, quant=True)
        Pm = H * W
        g = geo(Fe)
        tl = tol_for(dt, True)
        # channel_weights
        for positive in (True, False):
            w = torch.empty(N, K)
            assert lib.emu_channel_weights(DT[dt], g, P(G), positive, P(w)) == 0
            up = torch.randn(N, K, dtype=torch.float64)
            (wr,), (dgr,) = grads64(lambda x: R.channel_weights(x, positive), [G], [up])
            check(f"channel_weights {tag} pos={positive}", w, wr, 2e-5)
            dg = torch.empty_like(G)
            assert lib.emu_channel_weights_backward(DT[dt], g, P(up.float()), P(G), positive, P(dg)) == 0
            check(f"channel_weights_bwd {tag} pos={positive}", dg, dgr, tl)
        # weighted attention
        wts = torch.randn(N, K)
        attn = torch.empty(N, H, W)
        assert lib.emu_weighted_attention(DT[dt], g, P(Fe), P(wts), P(attn)) == 0
        up = torch.randn(N, H, W, dtype=torch.float64)
        (ar,), (dfr, dwr) = grads64(R.weighted_attention, [Fe, wts], [up])
        check(f"weighted_attention {tag}", attn, ar, 2e-5)
        df = torch.empty_like(Fe)
        dw = torch.empty(N, K)
        assert lib.emu_weighted_attention_backward(DT[dt], g, P(up.float()), P(Fe), P(wts), P(ar.float()), P(df), P(dw)) == 0
        check(f"weighted_attention_bwd dF {tag}", df, dfr, tl)
        check(f"weighted_attention_bwd dw {tag}", dw, dwr, 2e-5)
        # pixel attention
        attn = torch.empty(N, H, W)
        assert lib.emu_pixel_attention(DT[dt], g, P(Fe), P(G), P(attn)) == 0
        (ar,), (dfr, dgr) = grads64(R.pixel_attention, [Fe, G], [up])
        check(f"pixel_attention {tag}", attn, ar, 2e-5)
        df, dg = torch.empty_like(Fe), torch.empty_like(G)
        assert lib.emu_pixel_attention_backward(DT[dt], g, P(up.float()), P(Fe), P(G), P(ar.float()), P(df), P(dg)) == 0
        check(f"pixel_attention_bwd dF {tag}", df, dfr, tl)
        check(f"pixel_attention_bwd dG {tag}", dg, dgr, tl)
        # channel-spatial attention
        S = torch.rand(N, K) + 0.1
        Fp = make(shape, dt, fmt, 0.0, 1.0)
        gp = geo(Fp)
        D, T = torch.empty_like(Fp), torch.empty(N, H, W)
        assert lib.emu_channel_spatial_attention(DT[dt], gp, P(Fp), P(S), f(1e-6), P(D), P(T)) == 0
        upD = torch.randn(shape, dtype=torch.float64)
        upT = torch.randn(N, H, W, dtype=torch.float64)
        (Dr, Tr), (dfr, dsr) = grads64(lambda a, s: R.channel_spatial_attention(a, s), [Fp, S], [upD.to(dt).double(), upT])
        _, (_, dsr32) = grads32(lambda a, s: R.channel_spatial_attention(a, s), [Fp, S], [upD.to(dt).double(), upT])
        check(f"csa D {tag}", D, Dr, tl)
        check(f"csa T {tag}", T, Tr, 2e-5)
        gD = upD.to(dt).contiguous(memory_format=fmt)
        df, ds = torch.empty_like(Fp), torch.empty(N, K)
        assert lib.emu_channel_spatial_attention_backward(DT[dt], gp, P(gD), P(upT.float()), P(Fp), P(S), P(T), f(1e-6), P(df), P(ds)) == 0
        check(f"csa_bwd dF {tag}", df, dfr, tl)
        check(f"csa_bwd dS {tag}", ds, dsr, 1e-4, dsr32)


def test_map_ops():
    for (n, h, w) in [(3, 7, 7), (2, 5, 3), (1, 1, 1), (2, 56, 56)] + ([] if QUICK else [(2, 14, 14)]):
        a = torch.rand(n, h, w)
        a[0].view(-1)[: 3] = a[0].max()  # ties at the max
        if n > 1:
            a[1] = 0.0 if h * w < 10 else a[1]
        up = torch.randn(n, h, w, dtype=torch.float64)
        P_ = h * w
        out = torch.empty(n, h, w)
        assert lib.emu_normalize_attention(i64(n), i64(P_), P(a), f(1e-6), P(out)) == 0
        (outr,), (dar,) = grads64(lambda x: R.normalize_attention(x, 1e-6), [a], [up])
        _, (dar32,) = grads32(lambda x: R.normalize_attention(x, 1e-6), [a], [up])
        check(f"normalize {n,h,w}", out, outr, 2e-6)
        da = torch.empty_like(a)
        assert lib.emu_normalize_attention_backward(i64(n), i64(P_), P(up.float()), P(a), f(1e-6), P(da)) == 0
        check(f"normalize_bwd {n,h,w}", da, dar, 1e-5, dar32)
        b = torch.rand(n, h, w)
        b.view(-1)[::5] = a.view(-1)[::5]  # ties of min
        m = torch.rand(n, h, w)
        upn = torch.randn(n, dtype=torch.float64)
        for mask in (m, None):
            out = torch.empty(n)
            assert lib.emu_soft_iou(i64(n), i64(P_), P(a), P(b), P(mask), f(1e-6), P(out)) == 0
            ins = [a, b] + ([mask] if mask is not None else [])
            (outr,), gr = grads64(lambda x, y, *mm: R.soft_iou(x, y, mm[0] if mm else None), ins, [upn])
            _, gr32 = grads32(lambda x, y, *mm: R.soft_iou(x, y, mm[0] if mm else None), ins, [upn])
            check(f"soft_iou {n,h,w} mask={mask is not None}", out, outr, 1e-5)
            da, db, dm = torch.empty_like(a), torch.empty_like(a), torch.empty_like(a)
            assert lib.emu_soft_iou_backward(i64(n), i64(P_), P(upn.float()), P(a), P(b), P(mask), f(1e-6), P(da), P(db), P(dm)) == 0
            check(f"soft_iou_bwd da {n,h,w} mask={mask is not None}", da, gr[0], 1e-5, gr32[0])
            check(f"soft_iou_bwd db {n,h,w} mask={mask is not None}", db, gr[1], 1e-5, gr32[1])
            if mask is not None:
                check(f"soft_iou_bwd dm {n,h,w}", dm, gr[2], 1e-5)
        out = torch.empty(n)
        assert lib.emu_attention_consistency(i64(n), i64(P_), P(a), P(m), f(0.7), f(1e-6), P(out)) == 0
        (outr,), gr = grads64(lambda x, y: R.attention_consistency(x, y, 0.7), [a, m], [upn])
        _, gr32 = grads32(lambda x, y: R.attention_consistency(x, y, 0.7), [a, m], [upn])
        check(f"consistency {n,h,w}", out, outr, 1e-5)
        da, dm = torch.empty_like(a), torch.empty_like(a)
        assert lib.emu_attention_consistency_backward(i64(n), i64(P_), P(upn.float()), P(a), P(m), f(1e-6), P(da), P(dm)) == 0
        check(f"consistency_bwd da {n,h,w}", da, gr[0], 1e-5, gr32[0])
        check(f"consistency_bwd dm {n,h,w}", dm, gr[1], 1e-5)
    # soft mask, several resizes
    for (h, w, oh, ow) in [(7, 7, 7, 7), (7, 7, 14, 14), (7, 7, 13, 17), (14, 14, 7, 7), (5, 3, 11, 9),
                           (3, 8, 1, 1), (1, 1, 4, 5), (7, 7, 56, 56), (20, 30, 6, 4)]:
        n = 2
        a = torch.rand(n, h, w)
        a[0].view(-1)[:2] = a[0].max()
        out = torch.empty(n, oh, ow)
        assert lib.emu_soft_mask(i64(n), i64(h), i64(w), i64(oh), i64(ow), f(0.55), f(10.0), f(1e-6), P(a), P(out)) == 0
        up = torch.randn(n, oh, ow, dtype=torch.float64)
        (outr,), (dar,) = grads64(lambda x: R.soft_mask(x, 0.55, 10.0, (oh, ow)), [a], [up])
        _, (dar32,) = grads32(lambda x: R.soft_mask(x, 0.55, 10.0, (oh, ow)), [a], [up])
        check(f"soft_mask {h,w}->{oh,ow}", out, outr, 1e-5)
        da = torch.empty_like(a)
        assert lib.emu_soft_mask_backward(i64(n), i64(h), i64(w), i64(oh), i64(ow), f(0.55), f(10.0), f(1e-6), P(up.float()), P(a), P(da)) == 0
        check(f"soft_mask_bwd {h,w}->{oh,ow}", da, dar, 1e-4, dar32)
    # ggam
    for (n, k) in [(3, 16), (2, 300), (1, 1)]:
        s = torch.softmax(torch.randn(n, k), 1)
        s[0, 0] = 1e-8  # under the clamp
        beta = torch.randn(n, k)
        out = torch.empty(n)
        assert lib.emu_ggam_loss(i64(n), i64(k), P(s), P(beta), f(1e-6), P(out)) == 0
        upn = torch.randn(n, dtype=torch.float64)
        (outr,), gr = grads64(lambda x, y: R.ggam_loss(x, y), [s, beta], [upn])
        _, gr32 = grads32(lambda x, y: R.ggam_loss(x, y), [s, beta], [upn])
        check(f"ggam {n,k}", out, outr, 1e-5)
        ds, db = torch.empty_like(s), torch.empty_like(s)
        assert lib.emu_ggam_loss_backward(i64(n), i64(k), P(upn.float()), P(s), P(beta), f(1e-6), P(ds), P(db)) == 0
        check(f"ggam_bwd ds {n,k}", ds, gr[0], 1e-5, gr32[0])
        check(f"ggam_bwd dbeta {n,k}", db, gr[1], 1e-5, gr32[1])


def sf_quick(kind, fmt, dt, flat, mask_grad):
    """The EMU_QUICK cases of test_sharpen_focus (normalize on, flat (0, 0, 0, 0) or (0, 0, 1, 1)).
    float32: six of the 24 kind x format x flat x mask_grad cases, each kind with both values of
    each two-valued option, and every pair of values of two options; float16 / bfloat16 (flat
    (0, 0, 0, 0), mask_grad on): every kind and dtype with the formats alternating, so that every
    kind x format and dtype x format pair is there."""
    k, f, lf = kind, int(fmt is torch.channels_last), int(flat != (0, 0, 0, 0))
    if dt == torch.float32:
        return (f, lf, int(mask_grad)) in {0: ((0, 0, 0), (1, 1, 1)), 1: ((0, 1, 1), (1, 0, 0)),
                                           2: ((1, 0, 1), (0, 1, 0))}[k]
    return mask_grad and not lf and f == (k + (dt == torch.bfloat16)) % 2


def guide_quick(kind, li, fmt, dt, flat, given):
    """The EMU_QUICK cases of test_guidance: float32: each of the 16 kind x loss pairs once, its
    format, flat (R x K) G and given coverage chosen so that every kind and every loss meets both
    values of each, and each two of them all four pairs of values, and the energy with the bilinear
    option's cell weights once per kind; float16 / bfloat16 (4-D G,
    coverage from the boxes, energy or ppce): every kind x dtype pair once, loss and format
    chosen so that every kind, every dtype meets both losses and both formats."""
    f = int(fmt is torch.channels_last)
    if given == "bilinear":  # the energy's cell weights: every kind once, both formats and G forms
        return (f, int(flat)) == (kind % 2, kind // 2)
    if dt == torch.float32:
        return (f, int(flat), int(given)) == ((kind + li) % 2, (kind // 2 + li) % 2,
                                              (kind + li // 2) % 2)
    d = 1 if dt == torch.float16 else 2
    return not flat and not given and (li, f) == (2 * ((kind + d) % 2), (kind // 2 + d) % 2)


def test_sharpen_focus():
    KINDS = {"pixel": 0, "channel": 1, "gradcam": 2}
    cases = [((2, 16, 8, 8), (2, 24, 4, 4)), ((2, 12, 14, 14), (2, 32, 7, 7)), ((3, 8, 5, 6), (3, 16, 3, 3)),
             ((2, 8, 7, 7), (2, 8, 7, 7))]
    if QUICK:
        cases = cases[2:3]
    for (si, sl), kind, fmt, dt, flat, normalize, mask_grad in itertools.product(
            cases, KINDS, FORMATS, DTYPES, [(0, 0, 0, 0), (0, 0, 1, 1), (1, 0, 0, 1)], (True, False), (False, True)):
        if dt != torch.float32 and (not normalize or flat != (0, 0, 0, 0)):
            continue  # keep the run short: low precision only on the default path
        if QUICK and (not normalize or flat == (1, 0, 0, 1) or
                      not sf_quick(KINDS[kind], fmt, dt, flat, mask_grad)):
            continue
        tag = f"{kind} {si}/{sl} {'NHWC' if fmt is torch.channels_last else 'NCHW'} {str(dt)[6:]} flat={flat} norm={normalize} mg={mask_grad}"
        N = si[0]
        only = os.environ.get("SF_ONLY")
        skip = only is not None and only != tag
        Fi = make(si, dt, fmt, 0.0, 1.0)  # continuous: exact ties (max, min) have measure 0
        Fl = make(sl, dt, fmt, 0.0, 1.0)
        gs = []
        for j, (shape, fl) in enumerate([(si, flat[0]), (si, flat[1]), (sl, flat[2]), (sl, flat[3])]):
            gs.append(torch.randn(shape[0], shape[1]) if fl else make(shape, dt, fmt, -0.5, 1.0))
        ins = [Fi, gs[0], gs[1], Fl, gs[2], gs[3]]
        opts = dict(attention=kind, sigma=0.55, omega=20.0, alpha=1.0, normalize=normalize, mask_grad=mask_grad)
        if skip:
            [torch.randn(N, dtype=torch.float64) for _ in range(3)]  # same random stream
            continue
        if only:
            maps = [R.layer_attention(ins[3 * (j // 2)].double(), ins[3 * (j // 2) + 1 + j % 2].double(), kind) for j in range(4)]
            for j, mp in enumerate(maps):
                for nn in range(N):
                    v = mp[nn].flatten().sort(descending=True).values
                    print(f"map {j} sample {nn}: max {v[0].item():.6g} gap to 2nd {(v[0] - v[1]).item() / max(v[0].item(), 1e-30):.3g} zeros {(v == 0).sum().item()}")
        geos = (C.c_int64 * 14)(*(list(geo(Fi)) + list(geo(Fl))))
        ptrs = (C.c_void_p * 6)(*[P(t).value for t in ins])
        flats = (C.c_int * 4)(*flat)
        o = (C.c_int * 3)(KINDS[kind], int(normalize), int(mask_grad))
        fo = (C.c_float * 4)(0.55, 20.0, 1.0, 1e-6)
        out = torch.empty(3 * N)
        kw = 0 if kind == "pixel" else 1  # saved: maps 2 x N x H x W, weights 2 x N x K (channel kinds)
        saved = [torch.empty(2, N, *si[2:]), torch.empty(2, N, *sl[2:]), torch.empty(2, N, si[1] * kw), torch.empty(2, N, sl[1] * kw)]
        sptrs = (C.c_void_p * 4)(*[P(t).value if t.numel() else None for t in saved])
        assert lib.emu_sharpen_focus_loss(DT[dt], geos, ptrs, flats, o, fo, P(out), sptrs) == 0
        for j, name in enumerate(("maps_i", "maps_l")):
            want = torch.stack([R.layer_attention(ins[3 * j].double(), ins[3 * j + 1 + c].double(), kind) for c in range(2)])
            check(f"sf saved {name} {tag}", saved[j], want, 1e-4 if dt == torch.float32 else 2e-3)
        up = [torch.randn(N, dtype=torch.float64) for _ in range(3)]
        outs, grs = grads64(lambda *x: R.sharpen_focus_parts(*x, **opts), ins, up)
        _, grs32 = grads32(lambda *x: R.sharpen_focus_parts(*x, **opts), ins, up)
        check(f"sf fwd {tag}", out, torch.cat(outs), 1e-4 if dt == torch.float32 else 2e-3)
        douts = [torch.empty_like(t) for t in ins]
        dptrs = (C.c_void_p * 6)(*[P(t).value for t in douts])
        g3 = torch.cat(up).float()
        assert lib.emu_sharpen_focus_loss_backward(DT[dt], P(g3), geos, ptrs, flats, o, fo, sptrs, dptrs) == 0
        for name, d, r, r32 in zip(("dFi", "dGti", "dGci", "dFl", "dGtl", "dGcl"), douts, grs, grs32):
            check(f"sf bwd {name} {tag}", d, r, 2e-4 if dt == torch.float32 else 3e-2, r32)


def test_guidance():
    """guidance_loss: every kind x loss, coverage from the boxes and given (energy also with the
    bilinear option's coverage and cell weights), 4-D G in the other memory format than F or
    R x K G, rows sharing an image and images without rows."""
    kinds = {"pixel": 0, "channel": 1, "gradcam": 2, "ixg": 3}
    losses = ("energy", "l1", "ppce", "rrr")
    cases = [((3, 13, 5, 7), (0, 2, 0, 2)), ((3, 6, 1, 1), (2, 0, 2)), ((2, 5, 1, 9), (1, 1, 0)),
             ((1, 4, 64, 64), (0, 0))]
    if QUICK:
        cases = cases[:2]
    for (shape, rows), kind, li, fmt, dt, flat, given in itertools.product(
            cases, kinds, range(4), FORMATS, DTYPES, (False, True), (False, True, "bilinear")):
        if dt != torch.float32 and (flat or given or li % 2):
            continue  # keep the run short: low precision only on the boxes / 4-D G path
        if given == "bilinear" and li != 0:
            continue  # the bilinear option is the energy's
        if QUICK and not guide_quick(kinds[kind], li, fmt, dt, flat, given):
            continue
        loss = losses[li]
        n, k, h, w = shape
        r, rows_t = len(rows), torch.tensor(rows)
        tag = f"{kind}/{loss} {shape} {'NHWC' if fmt is torch.channels_last else 'NCHW'} {str(dt)[6:]} flat={flat} cov={given}"
        other = torch.contiguous_format if fmt is torch.channels_last else torch.channels_last
        F = make(shape, dt, fmt)
        G = torch.randn(r, k) / 4 if flat else make((r, k, h, w), dt, other)
        img = (7 * h + 3, 5 * w + 2)
        lo = torch.rand(r, 2, 2) * 0.8 - 0.1
        boxes = (torch.cat([lo, lo + torch.rand(r, 2, 2) * 0.7], 2) * torch.tensor(img * 2) * 4).round() / 4
        up = "bilinear" if given == "bilinear" else "area"
        cov64 = R.box_coverage(boxes.double(), img, (h, w), up)
        cov = cov64.float().contiguous() if given else None
        t64 = R.cell_weights(img, (h, w)) if given == "bilinear" else None
        t = t64.float().contiguous() if given == "bilinear" else None
        ib = (C.c_int64 * 5)(r, 2, kinds[kind], li, int(flat))
        fo = (C.c_float * 3)(img[0], img[1], 1e-6)
        lg = (C.c_int64 * 3)(*(list(geo(G))[4:] if not flat else [0, 0, 0]))
        ptr = (C.c_void_p * 6)(*[P(x).value for x in (F, G, rows_t, boxes, cov, t)])
        out, maps = torch.empty(r), torch.empty(r, h, w)
        weights = torch.empty(r, k if kind in ("channel", "gradcam") else 0)
        assert lib.emu_guidance_loss(DT[dt], geo(F), lg, ib, fo, ptr, P(out), P(maps), P(weights)) == 0
        fn = lambda f, g: R.guidance_loss(f, g, rows_t, cov64.to(f.dtype), kind, loss,  # noqa: E731
                                          weights=t64)
        gout = torch.randn(r, dtype=torch.float64)
        outs, grs = grads64(fn, [F, G], [gout])
        outs32, grs32 = grads32(fn, [F, G], [gout])
        tol = 1e-4 if dt == torch.float32 else 2e-3
        # ppce / l1 of a 1 x 1 map are eps-sized differences of O(1) values: judged against the
        # float32 reference's own error (want32), as the backward checks
        check(f"guide fwd {tag}", out, outs[0], tol, outs32[0])
        check(f"guide maps {tag}", maps, R.guidance_map(F.double(), G.double(), rows_t, kind), tol)
        srt = torch.sort(rows_t, stable=True)
        order, offsets = srt.indices.contiguous(), torch.searchsorted(srt.values, torch.arange(n + 1))
        dF, dG = torch.empty_like(F), torch.empty_like(G)
        assert lib.emu_guidance_loss_backward(DT[dt], geo(F), lg, ib, fo, ptr, P(gout.float()), P(maps), P(weights),
                                              P(order), P(offsets), P(dF), P(dG)) == 0
        if loss == "energy" and h * w == 1:
            continue  # L = 1 - cov for any A > 0: an exact-zero gradient, only rounding to compare
        for name, d, g64, g32 in zip(("dF", "dG"), (dF, dG), grs, grs32):  # want: in d's dtype
            check(f"guide bwd {name} {tag}", d, g64.to(d.dtype), 2e-4 if dt == torch.float32 else 3e-2, g32)


if __name__ == "__main__":
    which = sys.argv[1:] or ["big", "maps", "sf", "guide"]
    if "maps" in which:
        test_map_ops()
    if "big" in which:
        test_big_ops()
    if "sf" in which:
        test_sharpen_focus()
    if "guide" in which:
        test_guidance()
    bad = [r for r in RESULTS if not r[2]]
    worst = {}
    for name, err, ok in RESULTS:
        words = name.split(" ")
        op = " ".join(words[:2]) if words[0] in ("sf", "guide") else words[0]
        if words[0] in ("sf", "guide") and words[1] == "bwd":
            op += " " + words[2]
        dt = next((d for d in ("bfloat16", "float16") if d in name), "float32")
        worst[(op, dt)] = max(worst.get((op, dt), 0.0), err)
    for (op, dt), v in sorted(worst.items()):
        print(f"  {op:32s} {dt:9s} max rel err {v:.2e}")
    print(f"{len(RESULTS)} checks, {len(bad)} failed")
    if DUMP is not None:
        torch.save(DUMP, os.environ["EMU_DUMP"])
    sys.exit(1 if bad else 0)
