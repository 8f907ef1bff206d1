"""Focused checks of the Triton backend (triton_kernels/, namespace attnfast_triton).

Without CUDA the kernels run in the Triton interpreter (TRITON_INTERPRET=1, CPU tensors, small
shapes); with CUDA they run compiled. Every forward is compared with attnfast/reference.py, every
backward with torch.autograd.grad of the reference under the same random upstream gradient.
Errors are measured against the reference in float64 and may be at most a small multiple of the
float32 reference's own error (plus 1e-5 of the output's scale).
"""
import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
from helpers import DEVICE, close  # noqa: E402  (sets TRITON_INTERPRET before triton loads)
pytest.importorskip("triton", reason="the Triton backend needs the `triton` package")


def _load(name, path, package=False):
    """Import ``name``; from ``path`` under that name when the package is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, path, submodule_search_locations=[str(path.parent)] if package else None)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


tk = _load("attnfast.triton_kernels", ROOT / "triton_kernels" / "__init__.py", package=True)
ref = _load("attnfast.reference", ROOT / "attnfast" / "reference.py")
schema = _load("attnfast._schema", ROOT / "attnfast" / "_schema.py")
SCHEMAS, KIND = schema.SCHEMAS, schema.KIND_CODES
common = sys.modules[tk.__name__ + "._common"]
ops = torch.ops.attnfast_triton
EPS = 1e-6


@contextlib.contextmanager
def knobs(split=False, tile=None):
    """Force split reductions on tiny shapes (split) / chunked maps (tile pixels per chunk)."""
    saved = dict(common.TUNING), common.MAP_TILE
    if split:
        common.TUNING.update(target_programs=256, min_chunk=2)
    if tile:
        common.MAP_TILE = tile
    try:
        yield
    finally:
        common.TUNING.update(saved[0])
        common.MAP_TILE = saved[1]


def big(n, k, h, w, cl=False, positive=False):
    x = torch.randn(n, k, h, w, device=DEVICE)
    x = x.abs() if positive else x
    return x.contiguous(memory_format=torch.channels_last) if cl else x


def reference(fn, tensors, upstream, dtype):
    """(outputs, input grads) of fn(*tensors) in ``dtype``; grads by autograd for ``upstream``."""
    xs = [t.detach().to(dtype).requires_grad_() for t in tensors]
    outs = fn(*xs)
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    if upstream is None:
        return [o.detach() for o in outs], None
    grads = torch.autograd.grad(outs, xs, [u.to(dtype) for u in upstream], allow_unused=True)
    return [o.detach() for o in outs], [torch.zeros_like(x) if g is None else g
                                        for x, g in zip(xs, grads)]


def assert_close(name, got, want64, want32, rtol=1e-5, atol=1e-6):
    """helpers.close, with the float32 reference's own error at each element (4x) as slack."""
    if got.numel():
        close(got, want64, name, rtol, atol, slack=4 * (want32.double() - want64).abs())


def check(name, fn, tensors, forward, backward=None, ngrad=None):
    """Compare forward(*tensors) and backward(*upstream, *tensors) with the reference fn."""
    out = forward(*tensors)
    out = list(out) if isinstance(out, (tuple, list)) else [out]
    upstream = [torch.randn_like(o) for o in out] if backward else None
    ref64, grads64 = reference(fn, tensors, upstream, torch.float64)
    ref32, grads32 = reference(fn, tensors, upstream, torch.float32)
    for i, (o, r64, r32) in enumerate(zip(out, ref64, ref32)):
        assert_close(f"{name} output {i}", o, r64, r32)
    if backward:
        got = backward(*upstream, *tensors)
        got = list(got) if isinstance(got, (tuple, list)) else [got]
        for i, (g, t, r64, r32) in enumerate(zip(got, tensors, grads64, grads32)):
            assert g.dtype == t.dtype and g.shape == t.shape, f"{name} grad {i}: dtype/shape"
            if t.dim() == 4:
                assert g.stride() == t.stride(), f"{name} grad {i}: layout not kept"
            assert_close(f"{name} grad {i}", g, r64, r32)


def test_registered_schemas_match_interface():
    for name, schema in SCHEMAS.items():
        assert str(getattr(ops, name).default._schema) == f"attnfast_triton::{name}{schema}"


def test_fake_tensor_propagation():
    f, g = big(2, 3, 4, 4), big(2, 3, 4, 4)
    a, w, v = (torch.rand(2, 4, 4, device=DEVICE), torch.rand(2, 3, device=DEVICE),
               torch.randn(2, 3, device=DEVICE))
    calls = [(ops.pixel_attention, (f, g)), (ops.weighted_attention, (f, w)),
             (ops.channel_weights_backward, (w, g, True)),
             (ops.soft_mask, (a, 0.55, 100.0, 7, 7, EPS)),
             (ops.soft_iou, (a, a, a, EPS)),
             (ops.sharpen_focus_loss, (f, g, g, f, v, v, 1, 0.55, 100.0, 1.0, True, True, EPS)),
             (ops.channel_spatial_attention, (f.abs(), w, EPS)),
             (ops.ggam_loss, (w, v, EPS)),
             (ops.sharpen_focus_loss_backward, (*torch.rand(3, 2, device=DEVICE), f, g, g, f, v,
                                                v, *torch.rand(2, 2, 2, 4, 4, device=DEVICE),
                                                *torch.empty(2, 2, 2, 0, device=DEVICE), 0, 0.55,
                                                100.0, 1.0, True, True, EPS)),
             (ops.channel_spatial_attention_backward, (f, a, f.abs(), w, a, EPS))]
    for op, args in calls:
        torch.library.opcheck(op.default, args, test_utils=("test_schema", "test_faketensor"))


BIG_CASES = [  # (N, K, H, W), channels_last of F, of G, forced splits
    ((2, 5, 7, 7), False, False, False), ((2, 17, 5, 7), True, True, False),
    ((1, 1, 1, 1), False, False, False), ((3, 17, 9, 9), False, False, True),
    ((2, 9, 7, 7), True, True, True), ((2, 6, 4, 4), False, True, True)]


@pytest.mark.parametrize("shape,cl_f,cl_g,split", BIG_CASES)
def test_channel_ops(shape, cl_f, cl_g, split):
    f, g = big(*shape, cl=cl_f), big(*shape, cl=cl_g)
    g[0, :, 0, 0] = 0.0  # ReLU'(0) = 0
    f[-1, :, -1, -1] = 0.0  # a map value exactly 0
    w = torch.randn(shape[:2], device=DEVICE)
    with knobs(split=split):
        for positive in (True, False):
            check(f"channel_weights positive={positive}",
                  lambda x: ref.channel_weights(x, positive), [g],
                  lambda x: ops.channel_weights(x, positive),
                  lambda u, x: ops.channel_weights_backward(u, x, positive))
        check("weighted_attention", ref.weighted_attention, [f, w], ops.weighted_attention,
              lambda u, x, y: ops.weighted_attention_backward(u, x, y,
                                                              ops.weighted_attention(x, y)))
        check("pixel_attention", ref.pixel_attention, [f, g], ops.pixel_attention,
              lambda u, x, y: ops.pixel_attention_backward(u, x, y, ops.pixel_attention(x, y)))


def test_half_precision_dtypes():
    f, g = big(2, 5, 7, 7).half(), big(2, 5, 7, 7).half()
    a = ops.pixel_attention(f, g)
    assert a.dtype == torch.float32
    df, dg = ops.pixel_attention_backward(torch.randn_like(a), f, g, a)
    assert df.dtype == dg.dtype == torch.float16
    assert_close("pixel_attention fp16", a, ref.pixel_attention(f.double(), g.double()),
                 ref.pixel_attention(f, g), rtol=1e-3)


def _maps_with_ties(n, h, w, zero=False):
    """Random maps, two pixels tied at the max in map 0; all zero (1/eps gradients) when
    ``zero``: that case is tested on its own, not mixed with O(1) values."""
    if zero:
        return torch.zeros(n, h, w, device=DEVICE)
    a = torch.rand(n, h, w, device=DEVICE)
    a[0].view(-1)[-1] = a[0].view(-1)[0] = a[0].max()  # two pixels at the max
    return a


MAP_SIZES = [((2, 7, 7), (7, 7)), ((2, 4, 4), (8, 8)), ((3, 4, 4), (7, 7)), ((1, 1, 1), (3, 3)),
             ((2, 8, 8), (4, 4)), ((2, 3, 2), (5, 7)), ((2, 5, 7), (5, 7))]


@pytest.mark.parametrize("zero", [False, True], ids=["random", "all-zero"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tile", [None, 8])
@pytest.mark.parametrize("shape,out_size", MAP_SIZES)
def test_map_ops(shape, out_size, tile, seed, zero):
    if zero and seed:
        pytest.skip("the all-zero map does not depend on the seed")
    torch.manual_seed(seed)
    a = _maps_with_ties(*shape, zero=zero)
    b = torch.rand(shape, device=DEVICE)
    b[0].view(-1)[:3] = a[0].view(-1)[:3]  # min(a, b) ties
    m = torch.rand(shape, device=DEVICE)
    with knobs(tile=tile):
        check("normalize_attention", lambda x: ref.normalize_attention(x, EPS), [a],
              lambda x: ops.normalize_attention(x, EPS),
              lambda u, x: ops.normalize_attention_backward(u, x, EPS))
        check("soft_mask", lambda x: ref.soft_mask(x, 0.55, 100.0, out_size, EPS), [a],
              lambda x: ops.soft_mask(x, 0.55, 100.0, *out_size, EPS),
              lambda u, x: ops.soft_mask_backward(u, x, 0.55, 100.0, *out_size, EPS))
        check("soft_iou", lambda x, y, z: ref.soft_iou(x, y, z, EPS), [a, b, m],
              lambda x, y, z: ops.soft_iou(x, y, z, EPS),
              lambda u, x, y, z: ops.soft_iou_backward(u, x, y, z, EPS))
        none = torch.empty(0, device=DEVICE)
        check("soft_iou without mask", lambda x, y: ref.soft_iou(x, y, None, EPS), [a, b],
              lambda x, y: ops.soft_iou(x, y, none, EPS),
              lambda u, x, y: ops.soft_iou_backward(u, x, y, none, EPS)[:2])
        check("attention_consistency", lambda x, y: ref.attention_consistency(x, y, 0.9, EPS),
              [a, m], lambda x, y: ops.attention_consistency(x, y, 0.9, EPS),
              lambda u, x, y: ops.attention_consistency_backward(u, x, y, 0.9, EPS))


SF_CASES = [  # inner / last sizes, options
    dict(k=(5, 3), inner=(8, 8), last=(4, 4), kind="pixel"),
    dict(k=(4, 6), inner=(7, 7), last=(4, 4), kind="channel", cl=True),
    dict(k=(3, 5), inner=(5, 7), last=(5, 7), kind="gradcam"),
    dict(k=(17, 2), inner=(7, 7), last=(4, 4), kind="pixel", cl=True, last2d=True, n=3),
    dict(k=(3, 4), inner=(8, 8), last=(4, 4), kind="channel", last2d=True, mask_grad=True),
    dict(k=(3, 4), inner=(7, 7), last=(4, 4), kind="gradcam", last2d=True, normalize=False),
    dict(k=(3, 4), inner=(7, 7), last=(4, 4), kind="pixel", mask_grad=True, tile=8),
    dict(k=(3, 4), inner=(6, 5), last=(3, 2), kind="channel", cl=True, mask_grad=True, split=True),
    dict(k=(1, 1), inner=(1, 1), last=(1, 1), kind="pixel", mask_grad=True, n=1),
    dict(k=(4, 3), inner=(8, 8), last=(4, 4), kind="pixel", ties=True, mask_grad=True),
    dict(k=(4, 3), inner=(7, 7), last=(4, 4), kind="channel", zero=True, split=True),
]


@pytest.mark.parametrize("case", SF_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_sharpen_focus_loss(case):
    n, (ki, kl), cl = case.get("n", 2), case["k"], case.get("cl", False)
    positive = case["kind"] != "pixel"  # non-negative features make the CAM maps non-trivial
    fi, fl = big(n, ki, *case["inner"], cl, positive), big(n, kl, *case["last"], cl, positive)
    gi = [big(n, ki, *case["inner"], cl) for _ in range(2)]
    gl = ([torch.randn(n, kl, device=DEVICE) for _ in range(2)] if case.get("last2d") else
          [big(n, kl, *case["last"], cl) for _ in range(2)])
    if case.get("ties"):  # target == confuser: min ties everywhere, shared maxima
        gi[1], gl[1] = gi[0].clone(), gl[0].clone()
    if case.get("zero"):  # all-zero maps in sample 0
        fi[0], fl[0] = 0.0, 0.0
    opts = dict(sigma=0.55, omega=100.0, alpha=1.0, normalize=case.get("normalize", True),
                mask_grad=case.get("mask_grad", False))
    args = (KIND[case["kind"]], *opts.values(), EPS)
    with knobs(split=case.get("split", False), tile=case.get("tile")):
        check("sharpen_focus_loss",
              lambda *t: ref.sharpen_focus_parts(*t, attention=case["kind"], eps=EPS, **opts),
              [fi, *gi, fl, *gl], lambda *t: ops.sharpen_focus_loss(*t, *args)[:3],
              lambda u0, u1, u2, *t: ops.sharpen_focus_loss_backward(
                  u0, u1, u2, *t, *ops.sharpen_focus_loss(*t, *args)[3:], *args))


@pytest.mark.parametrize("shape,cl,split", [((2, 5, 7, 7), False, False),
                                            ((2, 17, 5, 7), True, True),
                                            ((1, 1, 1, 1), False, False)])
def test_ggam_ops(shape, cl, split):
    feats, weights = big(*shape, cl=cl, positive=True), torch.rand(shape[:2], device=DEVICE)
    with knobs(split=split):
        check("channel_spatial_attention",
              lambda x, s: ref.channel_spatial_attention(x, s, EPS), [feats, weights],
              lambda x, s: ops.channel_spatial_attention(x, s, EPS),
              lambda gd, gt, x, s: ops.channel_spatial_attention_backward(
                  gd.contiguous(), gt, x, s, ops.channel_spatial_attention(x, s, EPS)[1], EPS))
    for k, tile in ((shape[1], None), (17, 4)):
        p = torch.softmax(torch.randn(shape[0], k, device=DEVICE), 1)
        beta = torch.randn(shape[0], k, device=DEVICE)
        p[0, 0], beta[0, -1] = 0.0, 30.0  # clamped at eps; sigmoid saturated
        with knobs(tile=tile):
            check("ggam_loss", lambda x, y: ref.ggam_loss(x, y, EPS), [p, beta],
                  lambda x, y: ops.ggam_loss(x, y, EPS),
                  lambda u, x, y: ops.ggam_loss_backward(u, x, y, EPS))


def test_empty_batch():
    f, g, w = big(0, 3, 4, 4), big(0, 3, 4, 4), torch.empty(0, 3, device=DEVICE)
    a, e = torch.empty(0, 4, 4, device=DEVICE), torch.empty(0, device=DEVICE)
    assert ops.channel_weights(g, True).shape == (0, 3)
    assert ops.channel_weights_backward(w, g, False).shape == g.shape
    assert ops.pixel_attention(f, g).shape == ops.weighted_attention(f, w).shape == (0, 4, 4)
    assert [t.shape for t in ops.pixel_attention_backward(a, f, g, a)] == [f.shape, g.shape]
    assert [t.shape for t in ops.weighted_attention_backward(a, f, w, a)] == [f.shape, w.shape]
    assert ops.soft_mask(a, 0.55, 100.0, 8, 8, EPS).shape == (0, 8, 8)
    m = torch.empty(0, 8, 8, device=DEVICE)
    assert ops.soft_mask_backward(m, a, 0.55, 100.0, 8, 8, EPS).shape == a.shape
    assert ops.normalize_attention_backward(a, a, EPS).shape == a.shape
    assert ops.soft_iou(a, a, a, EPS).shape == ops.attention_consistency(a, a, 1.0, EPS).shape
    assert len(ops.soft_iou_backward(e, a, a, a, EPS)) == 3
    sf = (f, g, g, f, w, w, 0, 0.55, 100.0, 1.0, True, True, EPS)
    sf_out = ops.sharpen_focus_loss(*sf)
    assert [t.shape for t in sf_out[:3]] == [(0,)] * 3
    assert [t.shape for t in sf_out[3:]] == [(2, 0, *f.shape[2:])] * 2 + [(2, 0, 0)] * 2
    assert [t.shape for t in ops.sharpen_focus_loss_backward(e, e, e, *sf[:6], *sf_out[3:],
                                                             *sf[6:])] == [
        f.shape, g.shape, g.shape, f.shape, w.shape, w.shape]
    out, spatial = ops.channel_spatial_attention(f, w, EPS)
    assert out.shape == f.shape and spatial.shape == (0, 4, 4)
    assert ops.ggam_loss_backward(e, w, w, EPS)[1].shape == w.shape


def test_split_reductions_are_deterministic():
    f, g, u = big(3, 17, 9, 9), big(3, 17, 9, 9), torch.randn(3, 9, 9, device=DEVICE)

    def run():
        a = ops.pixel_attention(f, g)
        return [a, ops.channel_weights(g, True),
                *ops.weighted_attention_backward(u, f, g[:, :, 0, 0], a)]
    with knobs(split=True):
        first, second = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(first, second))


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    """Every kernel launch of every op (forward and backward; float32, float16, bfloat16; NCHW
    and channels_last; all kernel-selecting options; every autotuning config) compiles ahead of
    time for sm_90 and sm_80 (tests/triton_aot.py): no GPU needed, catches what the interpreter
    lets through (loop-carried types, layouts, vectorized half loads)."""
    import subprocess
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("Triton's NVIDIA backend (its compiler for sm_90) is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "triton_aot.py")], env=env,
                         capture_output=True, text=True, timeout=1200)
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-6000:]
