"""Issue #10 input rules: empty maps rejected before any kernel (docs/SPEC.md decision 17), named
option errors, meta tensors, and the result dtype of mixed inputs (decision 16), on every
backend; and the same empty-map checks in the C++ host layer, called directly."""
import math

import pytest
import torch

import attnfast
from attnfast._schema import OPS
from helpers import BACKENDS, DEVICE, check, dtypes, require, use_small_shapes
from op_samples import OFFSET_LAYOUTS, PUBLIC, op_sample_calls, public

B = BACKENDS + ["torch"]


def _empty_map_calls(hw):
    """(op name, public call) for every case of tests/op_samples.py whose inner (then last)
    maps are ``hw``, where some input map is empty."""
    out = []
    for where in ("hw", "last"):
        for name, args in op_sample_calls(n=2, device=DEVICE, **{where: hw}):
            if any(isinstance(x, torch.Tensor) and x.dim() >= 3 and 0 in x.shape[-2:]
                   for x in args):
                out.append((f"{name} ({where})", lambda name=name, args=args: PUBLIC[name](*args)))
    return out


EMPTY = [(0, 5), (5, 0), (0, 0)]


@pytest.mark.parametrize("hw", EMPTY, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", B)
def test_empty_maps_are_refused(backend, hw):
    """H = 0 or W = 0: a ValueError naming the argument, on every op and backend (the triton
    backend used to return uninitialized memory, the cpu one made-up values, torch an
    IndexError)."""
    require(backend)
    calls = _empty_map_calls(hw)
    assert {n.split()[0] for n, _ in calls} == set(OPS) - {"ggam_loss"}  # every op with a map
    with attnfast.use_backend(backend):
        for name, call in calls:
            with pytest.raises(ValueError, match=r"empty H x W map"):
                call()
                pytest.fail(f"{name} accepted an empty map")


@pytest.mark.parametrize("backend", B)
def test_soft_mask_of_an_empty_map_with_a_size(backend):
    """The crash of issue #10: soft_mask(rand(2, 5, 0), size=(4, 4)) killed the process."""
    require(backend)
    with attnfast.use_backend(backend):
        for shape, size in (((2, 5, 0), (4, 4)), ((2, 0, 5), (7, 3))):
            with pytest.raises(ValueError, match="attn_last has an empty H x W map"):
                attnfast.soft_mask(torch.rand(shape, device=DEVICE), size=size)
        for size in ((0, 4), (4, 0), (), (2.7, 3), (4, 4, 4), "44", 4):
            with pytest.raises((ValueError, TypeError), match="size must be a pair"):
                attnfast.soft_mask(torch.rand(2, 3, 3, device=DEVICE), size=size)


@pytest.mark.parametrize("backend", B)
def test_zero_channels(backend):
    """K = 0: refused where the value is a mean over the channels, defined (zeros) elsewhere."""
    require(backend)
    f = torch.rand(2, 0, 3, 4, device=DEVICE)
    last = torch.rand(2, 0, 2, 2, device=DEVICE)
    with attnfast.use_backend(backend):
        with pytest.raises(ValueError, match="features has K = 0"):
            attnfast.pixel_attention(f, f)
        with pytest.raises(ValueError, match="inner_features has K = 0"):
            attnfast.sharpen_focus_loss(f, f, f, last, last, last)
        assert attnfast.channel_weights(f).shape == (2, 0)
        assert torch.equal(attnfast.channel_attention(f, f), torch.zeros(2, 3, 4, device=DEVICE))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ CPU backend is tested on CPU only")
def test_cpp_host_layer_refuses_empty_maps():
    """The C++ entry points check too (one place, csrc/host/, shared by CPU and CUDA)."""
    require("cpu")
    ops = torch.ops.attnfast
    f, a = torch.rand(2, 3, 0, 4), torch.rand(2, 4, 0)
    calls = [lambda: ops.pixel_attention(f, f), lambda: ops.channel_weights(f, True),
             lambda: ops.normalize_attention(a, 1e-6),
             lambda: ops.soft_mask(a, 0.55, 100.0, 4, 4, 1e-6),
             lambda: ops.soft_iou(a, a, a, 1e-6),
             lambda: ops.channel_spatial_attention(f, torch.rand(2, 3), 1e-6),
             lambda: ops.pixel_attention(torch.rand(2, 0, 3, 3), torch.rand(2, 0, 3, 3))]
    for call in calls:
        with pytest.raises(ValueError, match="empty H x W map|K = 0"):
            call()


@pytest.mark.parametrize("layout", list(OFFSET_LAYOUTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_misaligned_views(backend, layout):
    """Every tensor one element into its storage (a data pointer that is not 16-byte aligned,
    helpers.offset_view) is a legal input: every case of tests/op_samples.py (each op's first
    on interpreted Triton: CI time), forward and backward, against the float64 reference."""
    require(backend)
    dtype = OFFSET_LAYOUTS[layout] if OFFSET_LAYOUTS[layout] in dtypes(backend) else torch.float32
    seen = set()
    for name, args in op_sample_calls(dtype, layout, device=DEVICE):
        if name in seen and use_small_shapes(backend):
            continue
        seen.add(name)
        tensors, call = public(name, args)
        check(call, tensors, backend, out_tol=1e-4 if name == "sharpen_focus_loss" else None)


F = torch.rand(2, 3, 4, 5)
M = torch.rand(2, 4, 5)
BAD_OPTIONS = [
    (lambda: attnfast.attention_consistency(M, M, alpha=None), TypeError, "alpha must be"),
    (lambda: attnfast.attention_consistency(M, M, alpha=float("nan")), ValueError,
     "alpha must be a finite number"),
    (lambda: attnfast.attention_consistency(M, M, alpha="1"), TypeError, "alpha must be"),
    (lambda: attnfast.soft_mask(M, size=(2.7, 3)), TypeError, "size must be a pair"),
    (lambda: attnfast.soft_mask(M, sigma=None), TypeError, "sigma must be in"),
    (lambda: attnfast.soft_mask(M, omega=float("inf")), ValueError, "omega must be"),
    (lambda: attnfast.soft_mask(M, eps=True), TypeError, "eps must be"),
    (lambda: attnfast.normalize_attention(M, eps=True), TypeError, "eps must be"),
    (lambda: attnfast.soft_iou(M, M, eps=None), TypeError, "eps must be"),
    (lambda: attnfast.ggam_loss(F[:, :, 0, 0], F[:, :, 0, 0], eps="1e-6"), TypeError, "eps must be"),
    (lambda: attnfast.channel_spatial_attention(F, F[:, :, 0, 0], eps=0), ValueError,
     "eps must be"),
    (lambda: attnfast.channel_weights(F, positive=None), TypeError, "positive must be True"),
    (lambda: attnfast.channel_attention(F, F, positive="yes"), TypeError, "positive must be"),
    (lambda: attnfast.sharpen_focus_loss(F, F, F, F, F, F, alpha=None), TypeError,
     "alpha must be"),
    (lambda: attnfast.sharpen_focus_loss(F, F, F, F, F, F, normalize=1), TypeError,
     "normalize must be True or False"),
    (lambda: attnfast.sharpen_focus_loss(F, F, F, F, F, F, mask_grad=None), TypeError,
     "mask_grad must be"),
    (lambda: attnfast.sharpen_focus_loss(F, F, F, F, F, F, omega=float("nan")), ValueError,
     "omega must be"),
]


@pytest.mark.parametrize("fn,exc,msg", BAD_OPTIONS, ids=[f"{i}-{m}" for i, (_, _, m)
                                                          in enumerate(BAD_OPTIONS)])
def test_bad_options_are_named(fn, exc, msg):
    with pytest.raises(exc, match=msg):
        fn()


def test_wrapper_options_are_named():
    model = torch.nn.Sequential()
    model.add_module("layer3", torch.nn.Conv2d(3, 4, 3))
    model.add_module("layer4", torch.nn.Conv2d(4, 4, 3))
    for kw, exc, msg in [(dict(alpha=None), TypeError, "alpha must be"),
                         (dict(sigma=float("nan")), ValueError, "sigma must be in"),
                         (dict(omega=-1), ValueError, "omega must be"),
                         (dict(weight=None), TypeError, "weight must be"),
                         (dict(mask_grad="no"), TypeError, "mask_grad must be")]:
        with pytest.raises(exc, match=msg):
            attnfast.SharpenFocus(model, head=None, **kw)
    for kw, exc, msg in [(dict(channels=4.5), TypeError, "channels must be an integer"),
                         (dict(channels=4, reduction=0), ValueError, "reduction must be"),
                         (dict(channels=4, weight=float("nan")), ValueError, "weight must be")]:
        with pytest.raises(exc, match=msg):
            attnfast.GGAM(model, **kw)


def test_meta_tensors_get_a_clear_message():
    """Not a hint to rebuild the extension (issue #10)."""
    a = torch.empty(2, 3, 4, device="meta")
    for backend in ("auto", "cpu"):
        with attnfast.use_backend(backend), pytest.raises(ValueError, match="meta tensors"):
            attnfast.normalize_attention(a)
    with attnfast.use_backend("torch"):
        assert attnfast.normalize_attention(a).shape == (2, 3, 4)


# ------------------------------------------------------------------ mixed dtypes (decision 16)
def _mixed_cases():
    f32, f64, f16 = torch.float32, torch.float64, torch.float16
    f = torch.rand(2, 3, 4, 5, device=DEVICE)
    m = torch.rand(2, 4, 5, device=DEVICE)
    w = torch.rand(2, 3, device=DEVICE)
    return [
        ("weighted_attention F32 w64", lambda: attnfast.weighted_attention(f, w.double()), f32),
        ("weighted_attention F64 w32", lambda: attnfast.weighted_attention(f.double(), w), f32),
        ("weighted_attention F16 w64", lambda: attnfast.weighted_attention(f.half(), w.double()),
         f32),
        ("soft_iou a, b 32 mask 64", lambda: attnfast.soft_iou(m, m, m.double()), f32),
        ("soft_iou a 64 b, mask 32", lambda: attnfast.soft_iou(m.double(), m, m), f32),
        ("consistency 64 / 16", lambda: attnfast.attention_consistency(m.double(), m.half()), f32),
        ("ggam_loss 64 / 32", lambda: attnfast.ggam_loss(w.double(), w), f32),
        ("channel_spatial_attention T", lambda: attnfast.channel_spatial_attention(
            f, w.double())[1], f32),
        ("channel_spatial_attention D", lambda: attnfast.channel_spatial_attention(
            f.double(), w)[0], f64),
        ("sharpen_focus_loss 2-D grads 64", lambda: attnfast.sharpen_focus_loss(
            f, f, f, f, w.double(), w.double(), reduction="none")[0], f32),
        ("all float64", lambda: attnfast.soft_iou(m.double(), m.double(), m.double()), f64),
    ]


@pytest.mark.parametrize("backend", B)
def test_result_dtype_of_mixed_inputs(backend):
    """float64 only when every floating input is float64 (decision 16), same on every backend;
    gradients in the dtype of their input."""
    require(backend)
    for name, call, dtype in _mixed_cases():
        if backend in ("triton", "cuda") and name == "all float64":
            continue  # these backends take no float64 call
        with attnfast.use_backend(backend):
            out = call()
        assert out.dtype == dtype, f"{name} on {backend}: {out.dtype}, want {dtype}"
        with attnfast.use_backend("torch"):
            want = call()
        assert torch.allclose(out.double(), want.double(), rtol=1e-4, atol=1e-5), name
    m = torch.rand(2, 4, 5, device=DEVICE, dtype=torch.float64, requires_grad=True)
    a = torch.rand(2, 4, 5, device=DEVICE, requires_grad=True)
    with attnfast.use_backend(backend):
        attnfast.soft_iou(a, a, m).sum().backward()
    assert m.grad.dtype == torch.float64 and a.grad.dtype == torch.float32
    assert math.isfinite(float(m.grad.sum()))
