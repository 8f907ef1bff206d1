"""Calls every attnfast CUDA op, forward and backward, through torch.ops.attnfast on small
inputs: the case .ci/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck,
initcheck). It also compares each result with attnfast.reference (float64) and prints the max
relative error per op, so a plain run is a quick smoke test.

    python .ci/sanitize_case.py            # every op, 3 dtypes, NCHW / channels_last / odd
    python .ci/sanitize_case.py --quick    # float32 and float16 only, fewer shapes
    python .ci/sanitize_case.py --large    # one > 2**31-element case (needs ~40 GB)
    python .ci/sanitize_case.py --no-ref   # the kernels only (fast under a sanitizer)

Exit status 1 when an error is above its tolerance.
"""
from __future__ import annotations

import argparse
import itertools
import sys

import torch

from attnfast import _build, reference as R

OPS = torch.ops.attnfast
DEV = "cuda"
FAILED: list[str] = []
WORST: dict[str, float] = {}
NO_REF = False  # --no-ref: call the kernels, skip the reference comparisons


def check(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    """Max abs error relative to max |want| (in float64; float32 for huge tensors)."""
    if want is None:
        return
    if got.shape != want.shape:
        FAILED.append(f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}")
        return
    acc = torch.float64 if got.numel() < 2**26 else torch.float32
    got, want = got.detach().to(acc), want.detach().to(acc)
    scale = max(want.abs().max().item(), 1e-30) if want.numel() else 1.0
    err = (got - want).abs_().max().item() / scale if want.numel() else 0.0
    if not torch.isfinite(got).all():
        err = float("inf")
    key = name.split(" ")[0]
    WORST[key] = max(WORST.get(key, 0.0), err)
    if err > tol:
        FAILED.append(f"{name}: max rel err {err:.3g} > {tol:g}")


def tol(dt: torch.dtype, big_out: bool) -> float:
    if dt == torch.float32 or not big_out:
        return 1e-4
    return 1e-2 if dt == torch.float16 else 5e-2


def ref_grads(fn, inputs, upstream):
    """Outputs and input gradients of fn on float64 copies (the reference backward); Nones
    with --no-ref."""
    if NO_REF:
        return [None] * len(upstream), [None] * len(inputs)
    xs = [t.detach().double().requires_grad_(True) for t in inputs]
    outs = fn(*xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, [u.double() for u in upstream])
    return outs, [x.grad for x in xs]


def cat(ts):
    return None if any(t is None for t in ts) else torch.cat(list(ts))


def big(shape, dt, fmt, lo=-1.0, hi=1.0):
    """Uniform random N x K x H x W: NCHW, channels_last, or 'strided' (every other channel of
    a wider tensor: pixel-strided, not dense)."""
    if fmt == "strided":
        n, k, h, w = shape
        return torch.empty(n, 2 * k, h, w, device=DEV, dtype=dt).uniform_(lo, hi)[:, ::2]
    t = torch.empty(shape, device=DEV, dtype=dt).uniform_(lo, hi)
    return t.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else t


def maps_case(n, h, w):
    a = torch.rand(n, h, w, device=DEV)
    a[0].view(-1)[:2] = a[0].max()  # ties at the max
    b = torch.rand(n, h, w, device=DEV)
    b.view(-1)[::3] = a.view(-1)[::3]  # ties of min
    m = torch.rand(n, h, w, device=DEV)
    gn = torch.randn(n, device=DEV)
    gm = torch.randn(n, h, w, device=DEV)
    tag = f"{n}x{h}x{w}"

    out = OPS.normalize_attention(a, 1e-6)
    (r,), (dr,) = ref_grads(lambda x: R.normalize_attention(x), [a], [gm])
    check(f"normalize_attention {tag}", out, r, 1e-5)
    check(f"normalize_attention_backward {tag}", OPS.normalize_attention_backward(gm, a, 1e-6),
          dr, 1e-4)

    for oh, ow in ((h, w), (2 * h, 2 * w), (h + 3, w + 5), (max(1, h // 2), max(1, w // 2))):
        out = OPS.soft_mask(a, 0.55, 20.0, oh, ow, 1e-6)
        g = torch.randn(n, oh, ow, device=DEV)
        (r,), (dr,) = ref_grads(lambda x: R.soft_mask(x, 0.55, 20.0, (oh, ow)), [a], [g])
        check(f"soft_mask {tag}->{oh}x{ow}", out, r, 1e-4)
        check(f"soft_mask_backward {tag}->{oh}x{ow}",
              OPS.soft_mask_backward(g, a, 0.55, 20.0, oh, ow, 1e-6), dr, 1e-3)

    for mask in (m, torch.empty(0, device=DEV)):
        has = mask.numel() > 0
        out = OPS.soft_iou(a, b, mask, 1e-6)
        ins = [a, b, m] if has else [a, b]
        (r,), dr = ref_grads(lambda x, y, *mm: R.soft_iou(x, y, mm[0] if mm else None), ins, [gn])
        check(f"soft_iou {tag} mask={has}", out, r, 1e-5)
        da, db, dm = OPS.soft_iou_backward(gn, a, b, mask, 1e-6)
        check(f"soft_iou_backward {tag} mask={has}", torch.cat([da, db]), cat(dr[:2]), 1e-4)
        if has:
            check(f"soft_iou_backward {tag} dmask", dm, dr[2], 1e-4)

    out = OPS.attention_consistency(a, m, 0.9, 1e-6)
    (r,), dr = ref_grads(lambda x, y: R.attention_consistency(x, y, 0.9), [a, m], [gn])
    check(f"attention_consistency {tag}", out, r, 1e-5)
    da, dm = OPS.attention_consistency_backward(gn, a, m, 0.9, 1e-6)
    check(f"attention_consistency_backward {tag}", torch.cat([da, dm]), cat(dr), 1e-4)


def big_case(shape, dt, fmt):
    n, k, h, w = shape
    tag = f"{'x'.join(map(str, shape))} {str(dt)[6:]} {fmt}"
    f, g = big(shape, dt, fmt), big(shape, dt, fmt)
    gw, gm = torch.randn(n, k, device=DEV), torch.randn(n, h, w, device=DEV)
    t_big = tol(dt, True)

    for positive in (True, False):
        w_ = OPS.channel_weights(g, positive)
        (r,), (dr,) = ref_grads(lambda x: R.channel_weights(x, positive), [g], [gw])
        check(f"channel_weights {tag}", w_, r, 1e-4)
        check(f"channel_weights_backward {tag}", OPS.channel_weights_backward(gw, g, positive),
              dr, t_big)

    wts = torch.randn(n, k, device=DEV)
    attn = OPS.weighted_attention(f, wts)
    (r,), dr = ref_grads(R.weighted_attention, [f, wts], [gm])
    check(f"weighted_attention {tag}", attn, r, 1e-4)
    df, dw = OPS.weighted_attention_backward(gm, f, wts, attn)
    check(f"weighted_attention_backward {tag} dF", df, dr[0], t_big)
    check(f"weighted_attention_backward {tag} dw", dw, dr[1], 1e-4)

    attn = OPS.pixel_attention(f, g)
    (r,), dr = ref_grads(R.pixel_attention, [f, g], [gm])
    check(f"pixel_attention {tag}", attn, r, 1e-4)
    df, dg = OPS.pixel_attention_backward(gm, f, g, attn)
    check(f"pixel_attention_backward {tag}", torch.cat([df.flatten(), dg.flatten()]),
          cat([d.flatten() for d in dr] if not NO_REF else [None]), t_big)

    fp = big(shape, dt, fmt, 0.0, 1.0)
    s = torch.rand(n, k, device=DEV) + 0.1
    d, t = OPS.channel_spatial_attention(fp, s, 1e-6)
    gd, gt = torch.randn(shape, device=DEV).to(dt), torch.randn(n, h, w, device=DEV)
    (rd, rt), dr = ref_grads(R.channel_spatial_attention, [fp, s], [gd, gt])
    check(f"channel_spatial_attention {tag} D", d, rd, t_big)
    check(f"channel_spatial_attention {tag} T", t, rt, 1e-4)
    df, ds = OPS.channel_spatial_attention_backward(gd, gt, fp, s, t, 1e-6)
    check(f"channel_spatial_attention_backward {tag} dF", df, dr[0], t_big)
    check(f"channel_spatial_attention_backward {tag} dS", ds, dr[1], 1e-3)
    if fmt == "channels_last" and not df.is_contiguous(memory_format=torch.channels_last):
        FAILED.append(f"channel_spatial_attention_backward {tag}: dF lost channels_last")


def sf_case(si, sl, dt, fmt, kind, flat, normalize, mask_grad, loose=1.0):
    """`loose` scales the backward tolerance: large maps sum many float32 terms that cancel
    in the normalize backward."""
    tag = (f"{'x'.join(map(str, si))}/{'x'.join(map(str, sl))} {str(dt)[6:]} {fmt} {kind} "
           f"flat={flat} norm={normalize} mask_grad={mask_grad}")
    n = si[0]
    fi, fl = big(si, dt, fmt, 0.0, 1.0), big(sl, dt, fmt, 0.0, 1.0)
    grads = [torch.randn(s[0], s[1], device=DEV) if fl_ else big(s, dt, fmt, -0.5, 1.0)
             for s, fl_ in ((si, flat[0]), (si, flat[1]), (sl, flat[2]), (sl, flat[3]))]
    ins = [fi, grads[0], grads[1], fl, grads[2], grads[3]]
    code = {"pixel": 0, "channel": 1, "gradcam": 2}[kind]
    args = (code, 0.55, 20.0, 1.0, normalize, mask_grad, 1e-6)
    outs = OPS.sharpen_focus_loss(*ins, *args)
    parts, saved = outs[:3], outs[3:]
    ups = [torch.randn(n, device=DEV) for _ in range(3)]
    opts = dict(attention=kind, sigma=0.55, omega=20.0, alpha=1.0, normalize=normalize,
                mask_grad=mask_grad)
    r, dr = ref_grads(lambda *x: R.sharpen_focus_parts(*x, **opts), ins, ups)
    low = dt != torch.float32
    check(f"sharpen_focus_loss {tag}", torch.cat(parts), cat(r[:3]), 3e-3 if low else 1e-4)
    got = OPS.sharpen_focus_loss_backward(*ups, *ins, *saved, *args)
    for name, a, b in zip(("dFi", "dGti", "dGci", "dFl", "dGtl", "dGcl"), got, dr):
        check(f"sharpen_focus_loss_backward {tag} {name}", a, b, (5e-2 if low else 1e-3) * loose)


def ggam_case(n, k):
    s = torch.softmax(torch.randn(n, k, device=DEV), 1)
    beta = torch.randn(n, k, device=DEV)
    gn = torch.randn(n, device=DEV)
    (r,), dr = ref_grads(R.ggam_loss, [s, beta], [gn])
    check(f"ggam_loss {n}x{k}", OPS.ggam_loss(s, beta, 1e-6), r, 1e-5)
    ds, db = OPS.ggam_loss_backward(gn, s, beta, 1e-6)
    check(f"ggam_loss_backward {n}x{k}", torch.cat([ds, db]), cat(dr), 1e-4)


def run(quick: bool) -> None:
    dtypes = [torch.float32, torch.float16] + ([] if quick else [torch.bfloat16])
    fmts = ["nchw", "channels_last"] + ([] if quick else ["strided"])
    shapes = [(2, 16, 4, 4), (3, 13, 7, 5), (1, 256, 2, 2)]
    shapes += [] if quick else [(2, 24, 7, 7), (2, 8, 1, 2), (1, 3, 63, 65)]
    for shape, dt, fmt in itertools.product(shapes, dtypes, fmts):
        big_case(shape, dt, fmt)
    map_shapes = [(3, 7, 7), (2, 14, 14), (1, 2, 3)]
    for n, h, w in map_shapes + ([] if quick else [(2, 56, 56), (1, 100, 90)]):
        maps_case(n, h, w)
    ggam_case(3, 100)
    layers = [((2, 16, 8, 8), (2, 24, 4, 4)), ((2, 12, 14, 14), (2, 32, 7, 7))]
    if not quick:
        layers.append(((1, 4, 96, 96), (1, 8, 48, 48)))  # maps beyond shared memory: global buffer
    for (si, sl), kind in itertools.product(layers, ("pixel", "channel", "gradcam")):
        loose = 20.0 if si[2] * si[3] > 4096 else 1.0
        for dt, fmt in itertools.product(dtypes, fmts[:2]):
            sf_case(si, sl, dt, fmt, kind, (0, 0, 0, 0), True, False, loose)
        if loose > 1.0:
            continue  # large maps: only the default path (the N x K gradients cancel heavily)
        for flat, normalize, mask_grad in itertools.product(((0, 0, 1, 1), (1, 0, 0, 1)),
                                                            (True, False), (False, True)):
            sf_case(si, sl, torch.float32, "nchw", kind, flat, normalize, mask_grad)
    for n in (0,):  # empty batch: no launch, no crash
        empty = torch.empty(n, 4, 3, 3, device=DEV)
        OPS.pixel_attention(empty, empty)


def run_large() -> None:
    """One problem with more than 2**31 elements per big tensor (64-bit offsets): checked
    against the float32 reference computed one sample at a time."""
    shape = (2, 2048, 725, 725)  # 2.15e9 elements, 4.3 GB per float16 tensor
    n = shape[0]
    print(f"large case {shape}: {torch.Size(shape).numel() / 2**31:.3f} x 2**31 elements",
          flush=True)
    for fmt in ("nchw", "channels_last"):
        torch.manual_seed(0)
        f = big(shape, torch.float16, fmt)
        g = big(shape, torch.float16, fmt)
        attn = OPS.pixel_attention(f, g)
        w = OPS.channel_weights(g, True)
        gm = torch.randn(n, *shape[2:], device=DEV)
        df, dg = OPS.pixel_attention_backward(gm, f, g, attn)
        for i in range(n):
            fi, gi = f[i:i + 1].float(), g[i:i + 1].float()
            check(f"large pixel_attention {fmt} n={i}", attn[i:i + 1], R.pixel_attention(fi, gi),
                  1e-4)
            check(f"large channel_weights {fmt} n={i}", w[i:i + 1], R.channel_weights(gi), 1e-4)
            r = gm[i:i + 1] * (attn[i:i + 1] > 0) / shape[1]
            name = f"large pixel_attention_backward {fmt} n={i}"
            check(f"{name} dF", df[i:i + 1], r[:, None] * gi, 1e-2)
            check(f"{name} dG", dg[i:i + 1], r[:, None] * fi, 1e-2)
            del fi, gi, r
        del f, g, df, dg
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--large", action="store_true")
    p.add_argument("--no-ref", action="store_true")
    a = p.parse_args(argv)
    global NO_REF
    NO_REF = a.no_ref
    if not torch.cuda.is_available():
        print("sanitize_case: no CUDA device", file=sys.stderr)
        return 2
    if not (_build.load() and _build.has_cuda_kernels()):
        print(f"sanitize_case: the attnfast extension has no CUDA kernels: {_build.error()}",
              file=sys.stderr)
        return 2
    torch.manual_seed(0)
    run_large() if a.large else run(a.quick)
    torch.cuda.synchronize()
    for key, err in sorted(WORST.items()):
        print(f"  {key:40s} max rel err {err:.2e}")
    for line in FAILED:
        print("FAIL", line)
    print(f"sanitize_case: {len(FAILED)} failures")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
