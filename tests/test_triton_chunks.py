"""The chunked path of the Triton per-sample programs: maps larger than one register tile.

A per-sample program holds a map of at most ``MAP_TILE`` pixels (or GGAM channels) as one tile
and walks a larger one in chunks of MAP_TILE, once per pass. Lowering the knob to 8 makes the
small maps here take the chunked path on the interpreter. The maps are built so that what the
passes carry from chunk to chunk is exercised: the running max moves up in a LATER chunk after
ties at a lower max in the first one, ties at the max span two later chunks, sit in the partial
last chunk, or are all in one later chunk; min(a, b) ties and the clamps of GGAM sit in later
chunks too. Every op is run forward and backward against the float64 reference (autograd, same
random upstream) with an element-wise tolerance: |got - want| <= ATOL + RTOL |want|, element by
element, never scaled by a tensor's largest value. The all-zero map (1/eps gradients) is tested
on its own.
"""
import importlib

import pytest
import torch

import attnfast.reference as ref
from attnfast._schema import KIND_CODES
from helpers import DEVICE, close, require

ops = torch.ops.attnfast_triton
TILE = 8          # pixels per chunk in these tests
H, W = 5, 5       # 25 pixels: chunks [0, 8), [8, 16), [16, 24) and the partial [24, 25)
EPS = 1e-6
RTOL, ATOL = 1e-4, 1e-5
SIGMA, OMEGA, ALPHA = 0.55, 10.0, 0.9


@pytest.fixture(autouse=True)
def common(monkeypatch):
    """The Triton backend's host helpers, with tiles of TILE pixels: every map here is walked
    in several chunks."""
    require("triton")
    module = importlib.import_module("attnfast.triton_kernels._common")
    monkeypatch.setattr(module, "MAP_TILE", TILE)
    assert not module.map_block(H * W)[1]
    return module


def _fill(seed, n, hw, lo=0.05, hi=0.45):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(n, hw, generator=g, dtype=torch.float64)).float()


def later_max_maps(seed, signed=False):
    """N = 4 (5 with ``signed``) maps of H x W, values below the maxima drawn in [0.05, 0.45]:
    0: ties at 0.5 in chunk 0 (pixels 1, 6), the max 0.9 once in chunk 1 (pixel 12);
    1: ties at 0.6 in chunk 0, the max 0.8 tied across chunk 1 and the partial chunk 3 (10, 24);
    2: ties at 0.3 in chunk 0, 0.65 in chunk 1, the max 0.7 tied twice in chunk 2 (17, 22);
    3: ties at 0.6 in chunk 2 (16, 23), the max 0.85 alone in the partial chunk 3 (24);
    4 (signed): all negative, in [-0.95, -0.55], the max -0.1 in chunks 2 and 3 (20, 24)."""
    x = _fill(seed, 5 if signed else 4, H * W)
    x[0, [1, 6]], x[0, 12] = 0.5, 0.9
    x[1, [0, 7]], x[1, [10, 24]] = 0.6, 0.8
    x[2, [2, 5]], x[2, 9], x[2, [17, 22]] = 0.3, 0.65, 0.7
    x[3, [16, 23]], x[3, 24] = 0.6, 0.85
    if signed:
        x[4] -= 1.0
        x[4, [20, 24]] = -0.1
    return x.view(-1, H, W).to(DEVICE)


def zero_maps():
    return torch.zeros(2, H, W, device=DEVICE)


def assert_close(name, got, want):
    """helpers.close with this file's RTOL and ATOL."""
    close(got, want, name, RTOL, ATOL)


def check(name, reference, inputs, forward, backward):
    """forward(*inputs) vs reference(*inputs) in float64; backward(*upstream, *inputs) (the
    gradient of each input) vs autograd of the float64 reference for the same upstream."""
    outs = forward(*inputs)
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    g = torch.Generator().manual_seed(1234)
    upstream = [torch.randn(o.shape, generator=g).to(DEVICE) for o in outs]
    xs = [x.detach().double().requires_grad_() for x in inputs]
    want = reference(*xs)
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    for i, (o, w) in enumerate(zip(outs, want)):
        assert_close(f"{name} output {i}", o, w)
    want_grads = torch.autograd.grad(want, xs, [u.double() for u in upstream], allow_unused=True)
    got = backward(*upstream, *inputs)
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    assert len(got) == len(xs), f"{name}: {len(got)} gradients for {len(xs)} inputs"
    for i, (gr, x, w) in enumerate(zip(got, xs, want_grads)):
        assert_close(f"{name} grad {i}", gr, torch.zeros_like(x) if w is None else w)


MAKERS = {"later_max": later_max_maps, "all_zero": lambda seed: zero_maps()}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("maps", ["later_max", "signed", "all_zero"])
def test_normalize_attention(maps, seed):
    a = zero_maps() if maps == "all_zero" else later_max_maps(seed, signed=maps == "signed")
    check("normalize_attention", lambda x: ref.normalize_attention(x, EPS), [a],
          lambda x: ops.normalize_attention(x, EPS),
          lambda u, x: ops.normalize_attention_backward(u, x, EPS))


@pytest.mark.parametrize("size", [(H, W), (3, 4), (7, 6)])
@pytest.mark.parametrize("maps", ["later_max", "all_zero"])
def test_soft_mask(maps, size):
    a = MAKERS[maps](0)
    check(f"soft_mask to {size}", lambda x: ref.soft_mask(x, SIGMA, OMEGA, size, EPS), [a],
          lambda x: ops.soft_mask(x, SIGMA, OMEGA, *size, EPS),
          lambda u, x: ops.soft_mask_backward(u, x, SIGMA, OMEGA, *size, EPS))


def _second_map(a, seed):
    """A map b with min(a, b) ties in later chunks (pixels 9, 12, 20, 24 equal to a's)."""
    b = _fill(seed + 7, a.shape[0], H * W, 0.05, 0.95).to(DEVICE).view_as(a)
    b.view(a.shape[0], -1)[:, [9, 12, 20, 24]] = a.view(a.shape[0], -1)[:, [9, 12, 20, 24]]
    return b


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("maps", ["later_max", "all_zero"])
def test_soft_iou(maps, masked):
    a = MAKERS[maps](0)
    b = torch.zeros_like(a) if maps == "all_zero" else _second_map(a, 0)
    if masked:
        m = _fill(3, a.shape[0], H * W, 0.0, 1.0).to(DEVICE).view_as(a)
        check("soft_iou", lambda x, y, z: ref.soft_iou(x, y, z, EPS), [a, b, m],
              lambda x, y, z: ops.soft_iou(x, y, z, EPS),
              lambda u, x, y, z: ops.soft_iou_backward(u, x, y, z, EPS))
    else:
        none = torch.empty(0, device=DEVICE)
        check("soft_iou without mask", lambda x, y: ref.soft_iou(x, y, None, EPS), [a, b],
              lambda x, y: ops.soft_iou(x, y, none, EPS),
              lambda u, x, y: ops.soft_iou_backward(u, x, y, none, EPS)[:2])


@pytest.mark.parametrize("maps", ["later_max", "all_zero"])
def test_attention_consistency(maps):
    a = MAKERS[maps](0)
    m = _fill(4, a.shape[0], H * W, 0.0, 1.0).to(DEVICE).view_as(a)
    check("attention_consistency", lambda x, y: ref.attention_consistency(x, y, ALPHA, EPS),
          [a, m], lambda x, y: ops.attention_consistency(x, y, ALPHA, EPS),
          lambda u, x, y: ops.attention_consistency_backward(u, x, y, ALPHA, EPS))


@pytest.mark.parametrize("maps", ["later_max", "all_zero"])
def test_ggam_loss(maps, common):
    """Channels chunked (K = 21: chunks of 8, 8 and 5); S clamped at eps and beta saturated in
    later chunks, the largest S in the partial last chunk; all-zero S and beta on their own."""
    k = 21
    if maps == "all_zero":
        p, beta = torch.zeros(2, k), torch.zeros(2, k)
    else:
        g = torch.Generator().manual_seed(5)
        p = torch.rand(2, k, generator=g)
        p[:, 19] = 3.0
        p[0, [9, 17]] = 0.0
        p = p / p.sum(1, keepdim=True)
        beta = torch.randn(2, k, generator=g)
        beta[0, 12], beta[1, [18, 20]] = 30.0, -30.0
    assert not common.map_block(k)[1]
    check("ggam_loss", lambda x, y: ref.ggam_loss(x, y, EPS), [p.to(DEVICE), beta.to(DEVICE)],
          lambda x, y: ops.ggam_loss(x, y, EPS),
          lambda u, x, y: ops.ggam_loss_backward(u, x, y, EPS))


@pytest.mark.parametrize("maps", ["later_max", "all_zero"])
def test_channel_spatial_attention(maps):
    """The per-sample part T = u / (sum u + eps) and its backward, chunked; with K = 1 and
    S = 1, u is the map itself."""
    a = MAKERS[maps](0)[:, None]
    s = torch.ones(a.shape[0], 1, device=DEVICE)
    check("channel_spatial_attention", lambda x, y: ref.channel_spatial_attention(x, y, EPS),
          [a, s], lambda x, y: ops.channel_spatial_attention(x, y, EPS),
          lambda gd, gt, x, y: ops.channel_spatial_attention_backward(
              gd, gt, x, y, ops.channel_spatial_attention(x, y, EPS)[1], EPS))


SF_CASES = [dict(last=(4, 5), normalize=True, mask_grad=True),
            dict(last=(4, 5), normalize=True, mask_grad=False),
            dict(last=(H, W), normalize=True, mask_grad=True),
            dict(last=(4, 5), normalize=False, mask_grad=True)]


@pytest.mark.parametrize("case", SF_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_sharpen_focus_parts(case, common):
    """The per-sample map math of sharpen_focus_loss (both layers chunked, ONE_TILE off): the
    pixel kind with K = 1 and F = 1 makes the four attention maps the G given here, so their
    maxima and ties are placed as in later_max_maps, and dL/dG is the maps' gradient."""
    hl, wl = case["last"]
    it = later_max_maps(0)
    ic = _second_map(it, 1)
    lt = later_max_maps(2)[:, :hl, :wl].flip(0).contiguous()
    lt.view(4, -1)[1, -2:] = lt.max()   # ties at the max in the partial last chunk of sample 1
    lc = _second_map(later_max_maps(3), 4)[:, :hl, :wl].contiguous()
    assert not common.map_block(hl * wl)[1]
    fi, fl = torch.ones(4, 1, H, W, device=DEVICE), torch.ones(4, 1, hl, wl, device=DEVICE)
    opts = dict(sigma=SIGMA, omega=OMEGA, alpha=ALPHA, normalize=case["normalize"],
                mask_grad=case["mask_grad"])
    args = (KIND_CODES["pixel"], *opts.values(), EPS)
    check("sharpen_focus_loss parts",
          lambda *t: ref.sharpen_focus_parts(*t, attention="pixel", eps=EPS, **opts),
          [fi, it[:, None], ic[:, None], fl, lt[:, None], lc[:, None]],
          lambda *t: ops.sharpen_focus_loss(*t, *args)[:3],
          lambda u0, u1, u2, *t: ops.sharpen_focus_loss_backward(
              u0, u1, u2, *t, *ops.sharpen_focus_loss(*t, *args)[3:], *args))

