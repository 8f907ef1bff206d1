"""The CUDA build of attnfast, run on the CPU: every ``csrc/cuda/*.cu`` kernel under the host
emulator (``csrc/cuda/host_emu.h``: blocks of 256 fiber threads with real barriers, shuffles and
shared memory), called through the real glue (``csrc/cuda/glue/*.cpp``) and host layer
(``csrc/host/``) as the backend ``"cuda_emu"`` (``tests/cuda_emu/emu_ext.py``), and compared with
the float64 reference through the public ops by ``conftest.check`` -- the same tests the other
backends pass. What this proves and what only a GPU can: docs/CUDA_EMULATION.md.

Generic over ``attnfast._schema.OPS``: a test fails for an op without a registered emulated
kernel or without cases here (``CASES``), and the backward contract runs for every op. Cases per
op: float32 / float16 / bfloat16 storage, NCHW and channels_last, an odd size, the 1 x 1 map and
large sizes (several tiles, split passes, the fused loss's global-memory path), plus the
subgradient (tie) rules of docs/SPEC.md decision 6 and thread-order independence.

Uninitialized memory is NaN-filled here (``torch.utils.deterministic.fill_uninitialized_memory``
with deterministic algorithms on): an output element or scratch word a kernel forgets to write
shows up as NaN. ``ATTNFAST_REQUIRE`` containing ``cuda_emu`` (``make test`` where nvcc is) turns
a failed build into a failure instead of a skip.
"""
import math
import os
import sys
from pathlib import Path

import pytest
import torch

import attnfast
import test_edge_cases as EDGE
import test_channel_weights as CW
import test_ggam as GG
import test_maps as MAPS
import test_pixel_attention as PA
import test_registration as REG
import test_sharpen_focus_loss as SF
from attnfast._compat import has_kernel
from attnfast._schema import KIND_CODES, LOSS_CODES, OPS, SCHEMAS
from conftest import DEVICE, REQUIRED, big, check, kink_free, pre_activation, require

sys.path.insert(0, str(Path(__file__).resolve().parent / "cuda_emu"))
import emu_ext  # noqa: E402

B = emu_ext.BACKEND
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FMTS = ["nchw", "channels_last"]
# N x K x H x W: odd K and H x W; the 1 x 1 map (N = 6, so that some samples' maps are non-zero
# after the ReLU); several tiles and split passes along P (48 x 48, vector runs in NCHW); split
# passes along K (K = 512).
BIG = {"odd": (3, 13, 5, 7), "1x1": (6, 24, 1, 1), "large": (1, 8, 48, 48),
       "wide": (1, 512, 2, 3)}
MAP = {"odd": (3, 5, 7), "1x1": (1, 1, 1), "large": (2, 56, 56)}
NK = {"odd": (3, 13), "1x1": (1, 1), "large": (2, 2048)}
# sharpen_focus_loss: (N, K inner, K last, (inner H x W, last H x W)); "large" needs more than
# the emulated device's 64 KiB of shared memory (EMU_SMEM, set below): the global-memory path
SF_SIZES = {"odd": (3, 5, 7, ((13, 17), (7, 7))), "1x1": (2, 4, 6, ((3, 3), (1, 1))),
            "large": (1, 8, 16, ((56, 56), (28, 28)))}
# guidance_loss: (N, K, h, w, rows). Rows share images and some image has none (N > 1); "large"
# is a map of 9 x 256 pixels whose dF pass strides over more elements than the emulated grid
# (16 blocks) has threads; "h1" is h = 1 < w; "global" needs more than the emulated device's
# 64 KiB of shared memory (the per-row global-workspace path) with more rows (10) than that
# path's grid (8 blocks), so blocks take several rows.
GUIDE = {"odd": (3, 13, 5, 7, (0, 2, 0, 2)), "1x1": (3, 6, 1, 1, (2, 0, 2, 0, 1)),
         "h1": (2, 5, 1, 9, (1, 1, 0)), "large": (1, 8, 48, 48, (0, 0)),
         "global": (2, 3, 90, 90, (1, 0, 1, 1, 0, 1, 1, 0, 1, 1))}
GUIDE_KINDS, GUIDE_LOSSES = tuple(KIND_CODES), tuple(LOSS_CODES)


@pytest.fixture(scope="module", autouse=True)
def emulated_backend():
    if DEVICE != "cpu":
        pytest.skip("the emulated CUDA backend is tested on CPU machines (a GPU runs the real one)")
    os.environ.setdefault("EMU_SMEM", str(64 * 1024))
    if not emu_ext.load():
        msg = f"emulated CUDA backend not built: {emu_ext.error()}"
        if B in REQUIRED:
            pytest.fail(msg)
        pytest.skip(msg)
    fill = torch.utils.deterministic.fill_uninitialized_memory
    det, warn = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    with emu_ext.as_backend():
        yield
    torch.use_deterministic_algorithms(det, warn_only=warn)
    torch.utils.deterministic.fill_uninitialized_memory = fill


# ----------------------------------------------------------------------------- registration
def test_every_op_has_an_emulated_kernel():
    for name in SCHEMAS:
        assert has_kernel(f"{emu_ext.NAMESPACE}::{name}", "CPU"), f"no emulated kernel: {name}"


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("name", list(OPS))
def test_backward_contract(name, fmt):
    """``<op>_backward`` straight through the glue: gradient per input, dtype, layout, values."""
    if name not in REG._samples():
        pytest.fail(f"tests/test_registration.py _samples() has no inputs for {name}")
    REG.test_backward_contract(B, name, fmt)


def test_cases_cover_every_op():
    assert set(CASES) == set(OPS), "add cases for the new ops to CASES"


# ----------------------------------------------------------------------------- numerics
# op -> (case(dtype, fmt, size), sizes, formats); each case runs forward and backward of the op
# against the float64 reference (the op's own test bodies, backend "cuda_emu").
def _sf_case(dtype, n, ki, kl, pair, kind, fmt, **opts):
    xs = SF._inputs(dtype, n, ki, kl, *pair, fmt=fmt, kind=kind,
                    per_channel=opts.pop("per_channel", False))
    check(lambda *t: attnfast.sharpen_focus_loss(*t, attention=kind, reduction="sum", **opts),
          xs, B, out_tol=1e-4)


def _guide_inputs(dtype, fmt, size, kind, g_fmt, flat=False, seed=0):
    """(F, G, boxes, rows, image size, mask) of a guidance_loss case: quarter-integer boxes in an
    image whose cells are not whole pixels, one reaching past the image, one empty; a random
    binary mask as the alternative coverage; no map pre-activation near a ReLU kink."""
    n, k, h, w, rows = GUIDE[size]
    rows, r = torch.tensor(rows), len(rows)
    img = (7 * h + 3, 5 * w + 2)
    gen = torch.Generator().manual_seed(seed)
    lo = torch.rand(r, 2, 2, generator=gen) * 0.8 - 0.1          # y0, x0 as image fractions
    ext = torch.rand(r, 2, 2, generator=gen) * 0.7                 # heights, widths
    scale = torch.tensor(img, dtype=torch.float32)
    boxes = (torch.cat([lo, lo + ext], dim=2) * scale.repeat(2) * 4).round() / 4
    boxes[0, 1] = 0.0                                              # an empty (padding) box
    mask = (torch.rand(r, 2 * h + 1, 3 * w, generator=gen) > 0.5).float()

    def make():
        f = big((n, k, h, w), dtype, fmt)
        g = torch.randn(r, k, device=DEVICE) / 4 if flat else big((r, k, h, w), dtype, g_fmt)
        return [f, g]

    def pre(f, g):  # ixg is pixel's sum instead of mean: the same kinks
        return pre_activation("pixel" if kind == "ixg" else kind, f[rows], g)
    return (*kink_free(make, pre), boxes, rows, img, mask)


def _guide_case(dtype, fmt, size, flat=False):
    """Every kind x loss, forward and backward, against the float64 reference; G in the other
    memory format than F for half of them, coverage from the boxes or given (a mask) for a third
    (every kind and every loss at least once each way). Energy on 1 x 1 maps is forward only:
    there L = 1 - cov for any A > 0, so its gradient is 0 in exact arithmetic and a comparison
    would weigh float32 rounding noise against the float32 reference's luck (~1e-8 vs ~1e-16)."""
    other = {"nchw": "channels_last", "channels_last": "nchw"}[fmt]
    for i, kind in enumerate(GUIDE_KINDS):
        for j, loss in enumerate(GUIDE_LOSSES):
            f, g, boxes, rows, img, mask = _guide_inputs(dtype, fmt, size, kind,
                                                         other if (i + j) % 2 else fmt, flat)
            cover = dict(mask=mask) if (i + j) % 3 == 0 else dict(boxes=boxes, image_size=img)
            check(lambda f, g: attnfast.guidance_loss(f, g, rows=rows, attention=kind, loss=loss,
                                                      reduction="none", **cover),
                  [f, g], B, out_tol=1e-4, grad=not (loss == "energy" and size == "1x1"))


CASES = {
    "channel_weights": (lambda dt, fmt, s: [CW.test_channel_weights(B, dt, BIG[s], fmt, pos)
                                            for pos in (True, False)], BIG, FMTS),
    "weighted_attention": (lambda dt, fmt, s: CW.test_weighted_attention(B, dt, BIG[s], fmt),
                           BIG, FMTS),
    "pixel_attention": (lambda dt, fmt, s: PA.test_pixel_attention(B, dt, BIG[s], fmt), BIG, FMTS),
    "channel_spatial_attention": (
        lambda dt, fmt, s: GG.test_channel_spatial_attention(B, dt, BIG[s], fmt), BIG, FMTS),
    "normalize_attention": (lambda dt, fmt, s: [MAPS.test_normalize_attention(B, dt, MAP[s], sg)
                                                for sg in (False, True)], MAP, ["nchw"]),
    "soft_mask": (lambda dt, fmt, s: [MAPS.test_soft_mask(B, dt, MAP[s], size)
                                      for size in (None, (14, 14), (4, 9))], MAP, ["nchw"]),
    "soft_iou": (lambda dt, fmt, s: [MAPS.test_soft_iou(B, dt, MAP[s], m) for m in (True, False)],
                 MAP, ["nchw"]),
    "attention_consistency": (lambda dt, fmt, s: MAPS.test_attention_consistency(B, dt, MAP[s]),
                              MAP, ["nchw"]),
    "ggam_loss": (lambda dt, fmt, s: GG.test_ggam_loss(B, dt, NK[s]), NK, ["nchw"]),
    "sharpen_focus_loss": (lambda dt, fmt, s: [_sf_case(dt, *SF_SIZES[s], kind, fmt)
                                               for kind in SF.KINDS], SF_SIZES, FMTS),
    "guidance_loss": (_guide_case, GUIDE, FMTS),
}


def _params():
    out = []
    for name, (_, sizes, fmts) in CASES.items():
        for dt in DTYPES:
            for fmt in fmts:
                for s in sizes:
                    out.append(pytest.param(name, dt, fmt, s,
                                            id=f"{name}-{str(dt)[6:]}-{fmt}-{s}"))
    return out


@pytest.mark.parametrize("name,dtype,fmt,size", _params())
def test_op_matches_reference(name, dtype, fmt, size):
    torch.manual_seed(0)
    CASES[name][0](dtype, fmt, size)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("mask_grad", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", SF.KINDS)
def test_sharpen_focus_options(kind, per_channel, mask_grad, normalize):
    """Every branch of the fused kernels: kind x N x K last-layer grads x mask_grad x normalize
    (bfloat16, channels_last)."""
    torch.manual_seed(0)
    _sf_case(torch.bfloat16, 2, 8, 16, ((14, 14), (7, 7)), kind, "channels_last",
             per_channel=per_channel, mask_grad=mask_grad, normalize=normalize, sigma=0.4,
             omega=30.0, alpha=0.5)


# ----------------------------------------------------------------------------- subgradient rules
@pytest.mark.parametrize("rule", [MAPS.test_min_ties_split_half, MAPS.test_max_ties_split_evenly,
                                  MAPS.test_all_zero_maps,
                                  GG.test_ggam_loss_zero_at_match_and_clamped,
                                  SF.test_mask_grad_changes_last_target_gradient_only,
                                  EDGE.test_empty_batch],
                         ids=lambda f: f.__name__)
def test_rule(rule):
    rule(B)


@pytest.mark.parametrize("kind", SF.KINDS)
def test_per_channel_grads_equal_broadcast(kind):
    SF.test_per_channel_grads_equal_broadcast(B, kind)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_kinks_exact(dtype):
    """ReLU'(0) = 0 at exact zeros of the pre-activation (decision 6): quarter-integer inputs
    with few channels, so every backend's sums are exact and the kinks are the same points."""
    torch.manual_seed(0)
    q = lambda *s: (torch.randint(-4, 5, s) / 4).to(dtype)  # noqa: E731
    g = q(2, 3, 5, 7)
    g[:, :, :2] = 0  # ReLU'(0) of channel_weights(positive)
    f = q(2, 3, 5, 7)
    pre = (f.double() * g.double()).mean(1)
    assert (pre == 0).sum() > 10 and (pre > 0).any()
    check(lambda g: attnfast.channel_weights(g, positive=True), [g], B)
    check(attnfast.pixel_attention, [f, g], B)
    w = torch.randint(-2, 3, (2, 3)).float()
    check(attnfast.weighted_attention, [f, w], B)


@pytest.mark.parametrize("name", list(OPS))
def test_thread_order_independent(name):
    """Outputs and gradients bitwise equal whether the threads of a block run forward, in
    reverse or shuffled between barriers: a missing __syncthreads would show here."""
    require(B)
    ns = getattr(torch.ops, emu_ext.NAMESPACE)
    op = OPS[name]
    args = REG._samples()[name]
    results = {}
    for order in ("forward", "reverse", "shuffle"):
        os.environ["EMU_ORDER"] = order
        try:
            outs = getattr(ns, name)(*args)
            outs = outs if isinstance(outs, tuple) else (outs,)
            torch.manual_seed(1)
            grads = [torch.randn_like(o) for o in outs[:len(op.visible)]]
            saved = [outs[i] for i in op.saved_index]
            n_in = len(op.tensor_inputs)
            back = getattr(ns, f"{name}_backward")(*grads, *args[:n_in], *saved, *args[n_in:])
        finally:
            os.environ.pop("EMU_ORDER")
        results[order] = list(outs) + list(back if isinstance(back, tuple) else (back,))
    for order in ("reverse", "shuffle"):
        for i, (a, b) in enumerate(zip(results["forward"], results[order])):
            assert torch.equal(a, b), f"{name}: result {i} differs between forward and {order}"


# ----------------------------------------------------------------------------- guidance_loss
@pytest.mark.parametrize("size", ["odd", "1x1", "h1"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_guidance_per_channel_grads(dtype, size):
    """R x K gradients (GAP + linear head): every kind x loss through the weights path."""
    torch.manual_seed(0)
    _guide_case(dtype, "channels_last", size, flat=True)


def test_guidance_pinned():
    """Hand-computed values: a 4 x 4 image, a 2 x 2 layer (cells of 2 x 2 pixels), the box
    (0, 0, 2, 3) covers cell (0, 0) and half of cell (0, 1): cov = [[1, .5], [0, 0]]; ixg with
    K = 1 and g = 1 gives A = F = [[1, 2], [3, 4]] (S = 10, Â = A / 4 up to eps)."""
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    box = torch.tensor([[[0.0, 0.0, 2.0, 3.0]]])
    want = {"energy": 1 - 2 / 10, "l1": (0.75 + 0.0 + 0.75 + 1.0) / 4,
            "ppce": -(math.log(0.25) + 0.5 * math.log(0.5)) / 1.5, "rrr": 0.5 * 4 + 9 + 16}
    with attnfast.use_backend(B):
        for loss, v in want.items():
            got = attnfast.guidance_loss(f, torch.ones(1, 1), box, image_size=(4, 4),
                                         attention="ixg", loss=loss, reduction="none")
            assert abs(got.item() - v) <= 1e-5 * abs(v) + 2e-6, (loss, got.item(), v)


@pytest.mark.parametrize("kind", GUIDE_KINDS)
def test_guidance_no_boxes_and_no_rows(kind):
    """B = 0 (coverage 0 everywhere) and R = 0 (no rows: every dF is 0)."""
    torch.manual_seed(0)
    f, g = big((2, 3, 4, 5), torch.float32), big((3, 3, 4, 5), torch.float32)
    rows = torch.tensor([1, 0, 1])
    for loss in GUIDE_LOSSES:
        check(lambda f, g: attnfast.guidance_loss(f, g, torch.zeros(3, 0, 4), rows,
                                                  image_size=(8, 10), attention=kind, loss=loss,
                                                  reduction="none"), [f, g], B)
        check(lambda f, g: attnfast.guidance_loss(f, g, torch.zeros(0, 2, 4),
                                                  torch.zeros(0, dtype=torch.long),
                                                  image_size=(8, 10), attention=kind, loss=loss,
                                                  reduction="sum"), [f, g[:0]], B)


@pytest.mark.parametrize("loss", GUIDE_LOSSES)
@pytest.mark.parametrize("kind", GUIDE_KINDS)
def test_guidance_thread_order_independent(kind, loss):
    """Every kind x loss (coverage from boxes, rows sharing an image, G in the other layout):
    bitwise equal results for forward, reversed and shuffled thread order."""
    torch.manual_seed(0)
    f, g, boxes, rows, img, _ = _guide_inputs(torch.float32, "nchw", "odd", kind, "channels_last")
    results = {}
    for order in ("forward", "reverse", "shuffle"):
        os.environ["EMU_ORDER"] = order
        try:
            xs = [x.detach().requires_grad_() for x in (f, g)]
            with attnfast.use_backend(B):
                out = attnfast.guidance_loss(*xs, boxes, rows, image_size=img, attention=kind,
                                             loss=loss, reduction="none")
            out.backward(torch.linspace(-1, 2, out.numel()))
        finally:
            os.environ.pop("EMU_ORDER")
        results[order] = [out.detach(), xs[0].grad, xs[1].grad]
    for order in ("reverse", "shuffle"):
        for i, (a, b) in enumerate(zip(results["forward"], results[order])):
            assert torch.equal(a, b), f"{kind}/{loss}: result {i} differs between forward and {order}"
