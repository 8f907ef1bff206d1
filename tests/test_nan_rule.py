"""The NaN/Inf rule (docs/SPEC.md decision 15): every backend computes what the eager reference
computes, forward and backward, NaN and Inf included.

Each op gets a NaN (or an Inf) planted at several positions of each tensor input (first pixel,
an interior one, the last one, next to the map's maximum, in a later chunk of the chunked
Triton path) and is run forward and backward (same seeded upstream gradient) on every compiled
backend and on the ``torch`` backend (eager autograd). The NaN, +Inf and -Inf positions of every
output and every input gradient must be the same, and the finite entries must agree element by
element. A few consequences are pinned on their own, independent of any backend.
"""
import importlib
import math

import pytest
import torch

import attnfast
from helpers import BACKENDS, DEVICE, INTERPRETED, check_rule

NAN, INF = float("nan"), float("inf")
N, K, H, W = 2, 3, 4, 5
P = H * W
PIXELS = [0, 7, P - 1]           # first, interior, last pixel of the map


def _seeded(seed, *shape, lo=0.05, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(*shape, generator=g)).to(DEVICE)


def _signed(seed, *shape):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE)


def _planted(t, flat_index, value):
    t = t.clone()
    t.view(-1)[flat_index] = value
    return t


# Every compiled backend, and the Triton per-sample programs also in chunks of 8 pixels (the
# NaN then sits in a later chunk, or the maximum does).
TILED = [pytest.param(b, None, id=b) for b in BACKENDS] + \
    [pytest.param("triton", 8, id="triton-chunked")]


@pytest.fixture
def tiled(request, monkeypatch):
    backend, tile = request.param
    if tile is not None:
        common = importlib.import_module("attnfast.triton_kernels._common")
        monkeypatch.setattr(common, "MAP_TILE", tile)
    return backend


def over_tiles(fn):
    return pytest.mark.parametrize("tiled", [pytest.param(p.values, id=p.id) for p in TILED],
                                   indirect=True)(fn)


def _slow_subset(backend, where):
    """The interpreted Triton backend is slow: the map ops other than normalize_attention run
    there with the NaN in the last (partial, later) chunk only; cpu runs every position."""
    if backend == "triton" and INTERPRETED and where != P - 1:
        pytest.skip("interpreted Triton: NaN at the last pixel only (cpu covers the others)")


def _maps_with(value, where, seed=0):
    """N maps in [0.05, 1) with ``value`` at pixel ``where`` of sample 0 (sample 1 clean); the
    maximum of sample 0 sits next to it (pixel where + 1, or where - 1 at the end)."""
    a = _seeded(seed, N, H, W)
    a.view(N, -1)[0, where + 1 if where + 1 < P else where - 1] = 2.0
    return _planted(a, where, value)


VALUES = [NAN, INF]


@pytest.mark.parametrize("value", VALUES, ids=["nan", "inf"])
@pytest.mark.parametrize("where", PIXELS)
@over_tiles
def test_normalize_attention(tiled, where, value):
    check_rule(tiled, attnfast.normalize_attention, [_maps_with(value, where)])


@pytest.mark.parametrize("size", [(H, W), (3, 7)])
@pytest.mark.parametrize("where", PIXELS)
@over_tiles
def test_soft_mask(tiled, where, size):
    _slow_subset(tiled, where)
    check_rule(tiled, lambda a: attnfast.soft_mask(a, omega=10.0, size=size),
               [_maps_with(NAN, where)])


@pytest.mark.parametrize("which", [0, 1, 2], ids=["a", "b", "mask"])
@pytest.mark.parametrize("where", PIXELS)
@over_tiles
def test_soft_iou(tiled, where, which):
    _slow_subset(tiled, where)
    maps = [_seeded(s, N, H, W) for s in (1, 2, 3)]
    maps[which] = _planted(maps[which], where, NAN)
    check_rule(tiled, attnfast.soft_iou, maps)


@pytest.mark.parametrize("which", [0, 1], ids=["attn", "mask"])
@pytest.mark.parametrize("where", PIXELS)
@over_tiles
def test_attention_consistency(tiled, where, which):
    _slow_subset(tiled, where)
    maps = [_seeded(s, N, H, W) for s in (4, 5)]
    maps[which] = _planted(maps[which], where, NAN)
    check_rule(tiled, lambda a, m: attnfast.attention_consistency(a, m, alpha=0.9), maps)


@pytest.mark.parametrize("positive", [True, False])
@pytest.mark.parametrize("where", [0, K * P + 7, N * K * P - 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_channel_weights(backend, where, positive):
    check_rule(backend, lambda g: attnfast.channel_weights(g, positive),
               [_planted(_signed(6, N, K, H, W), where, NAN)])


BIG_SITES = [("features", 7), ("features", N * K * P - 1), ("other", 7), ("other", K * P + 3)]


@pytest.mark.parametrize("site", BIG_SITES, ids=lambda s: f"{s[0]}-{s[1]}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_weighted_attention(backend, site):
    f, w = _signed(7, N, K, H, W), _signed(8, N, K)
    if site[0] == "features":
        f = _planted(f, site[1], NAN)
    else:
        w = _planted(w, site[1] % (N * K), NAN)
    check_rule(backend, attnfast.weighted_attention, [f, w])


@pytest.mark.parametrize("site", BIG_SITES, ids=lambda s: f"{s[0]}-{s[1]}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_pixel_attention(backend, site):
    f, g = _signed(9, N, K, H, W), _signed(10, N, K, H, W)
    which = 0 if site[0] == "features" else 1
    inputs = [f, g]
    inputs[which] = _planted(inputs[which], site[1], NAN)
    check_rule(backend, attnfast.pixel_attention, inputs)


@pytest.mark.parametrize("site", BIG_SITES, ids=lambda s: f"{s[0]}-{s[1]}")
@over_tiles
def test_channel_spatial_attention(tiled, site):
    a, s = _seeded(11, N, K, H, W), torch.softmax(_signed(12, N, K), 1)
    if site[0] == "features":
        a = _planted(a, site[1], NAN)
    else:
        s = _planted(s, site[1] % (N * K), NAN)
    check_rule(tiled, attnfast.channel_spatial_attention, [a, s])


GGAM_SITES = [("S", 0, NAN), ("S", 4, NAN), ("beta", 1, NAN), ("beta", 1, INF),
              ("beta", 5, -INF), ("beta", 2, INF)]


@pytest.mark.parametrize("site", GGAM_SITES, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
@over_tiles
def test_ggam_loss(tiled, site):
    s, beta = torch.softmax(_signed(13, N, K + 2), 1), _signed(14, N, K + 2)
    if site[0] == "S":
        s = _planted(s, site[1], site[2])
    else:
        beta = _planted(beta, site[1], site[2])
    check_rule(tiled, attnfast.ggam_loss, [s, beta])


SF_SITES = [(0, 7), (1, 3), (3, 0), (4, 11), (5, 2)]


@pytest.mark.parametrize("kind", ["pixel", "channel"])
@pytest.mark.parametrize("site", SF_SITES, ids=lambda s: f"input{s[0]}-{s[1]}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_sharpen_focus_loss(backend, site, kind):
    inputs = [_signed(20 + i, N, K, 6, 6) if i < 3 else _signed(20 + i, N, K, H, W)
              for i in range(6)]
    inputs[site[0]] = _planted(inputs[site[0]], site[1], NAN)
    check_rule(backend, lambda *t: tuple(attnfast.sharpen_focus_loss(*t, attention=kind,
                                                                     reduction="none"))[1:],
               inputs)


# ------------------------------------------------------- consequences pinned without a backend
def test_pinned_consequences():
    """What the rule means, by hand: one NaN pixel makes the whole normalized map NaN (its max
    is NaN, as torch.amax); a NaN in S makes that sample's GGAM loss NaN and leaves the other
    finite; +Inf in beta is a finite loss (sigmoid(+Inf) = 1)."""
    with attnfast.use_backend("torch"):
        a = torch.tensor([[[0.5, NAN], [0.25, 1.0]], [[0.5, 0.0], [0.25, 1.0]]])
        u = attnfast.normalize_attention(a)
        assert torch.isnan(u[0]).all()
        assert torch.allclose(u[1], a[1] / (1.0 + 1e-6))
        s = torch.tensor([[0.5, NAN], [0.5, 0.5]])
        beta = torch.tensor([[0.0, 0.0], [INF, 0.0]])
        loss = attnfast.ggam_loss(s, beta)
        assert math.isnan(loss[0].item())
        q = torch.tensor([1.0, 0.5]) / 1.5
        want = 0.5 * float(((torch.tensor([0.5, 0.5]) - q) * (0.5 / q).log()).sum())
        assert loss[1].item() == pytest.approx(want, rel=1e-5)
