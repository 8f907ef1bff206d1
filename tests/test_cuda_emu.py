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
from attnfast._schema import OPS, SCHEMAS
from helpers import DEVICE, REQUIRED, check, require

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
