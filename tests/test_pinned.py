"""Pinned specification values, written here by hand and independent of ``attnfast.reference``.

A wrong constant shared by every backend (a default, the shared eps) passes every cross-backend
test; these catch it: the defaults of every public op and wrapper option checked by signature
against the numbers of docs/SPEC.md, and small forward cases of every op computed by hand (in
the comments) on every backend.
"""
import inspect
import math

import pytest
import torch

import attnfast
from attnfast import reference
from helpers import BACKENDS, DEVICE, require

E = 1e-6  # docs/SPEC.md Notation: eps defaults to 1e-6 in every op

DEFAULTS = {
    "channel_weights": dict(positive=True),
    "channel_attention": dict(positive=True),
    "normalize_attention": dict(eps=E),
    "soft_mask": dict(sigma=0.55, omega=100.0, size=None, eps=E),
    "soft_iou": dict(mask=None, eps=E),
    "attention_consistency": dict(alpha=1.0, eps=E),
    "sharpen_focus_loss": dict(attention="pixel", sigma=0.55, omega=100.0, alpha=1.0,
                               normalize=True, mask_grad=False, reduction="mean", eps=E),
    "channel_spatial_attention": dict(eps=E),
    "ggam_loss": dict(eps=E),
    "guidance_loss": dict(boxes=None, rows=None, image_size=None, mask=None, attention="gradcam",
                          loss="energy", reduction="mean", upsample="area", eps=E),
}
WRAPPERS = {
    "SharpenFocus": dict(inner_layer="layer3", last_layer="layer4", attention="pixel",
                         # 0.1, not Eq. 9's 1 (issue 19: weight 1 cost 25 points of top-1)
                         second_order=True, multilabel=False, weight=0.1, sigma=0.55,
                         omega=100.0, alpha=1.0, normalize=True, mask_grad=False),
    "GGAM": dict(layer="layer4", reduction=16, weight=1.0, target="predicted"),
    "Guidance": dict(layers="layer4", attention="gradcam", loss="energy", weight=1.0,
                     second_order=True, multilabel=False, upsample="area", eps=E),
}


def _check_defaults(fn, want, name):
    params = inspect.signature(fn).parameters
    for arg, value in want.items():
        assert arg in params, f"{name} has no argument {arg}"
        got = params[arg].default
        assert got == value and type(got) is type(value), \
            f"{name}: default {arg}={got!r}, the spec says {value!r}"


@pytest.mark.parametrize("name", DEFAULTS)
def test_op_defaults(name):
    _check_defaults(getattr(attnfast, name), DEFAULTS[name], name)


@pytest.mark.parametrize("name", WRAPPERS)
def test_wrapper_defaults(name):
    _check_defaults(getattr(attnfast, name).__init__, WRAPPERS[name], name)


def test_shared_eps_constant():
    assert reference.EPS == 1e-6


def _backends():
    return [b for b in [*BACKENDS, "torch"]]


def _dtype(backend):
    return torch.float32 if backend in ("triton", "cuda") else torch.float64


def _t(values, backend):
    return torch.tensor(values, dtype=_dtype(backend), device=DEVICE)


def _pin(got, want, backend, name):
    """Element-wise |got - want| <= 1e-6 |want| + 1e-7 (float32) or 1e-12 |want| (float64)."""
    want = torch.as_tensor(want, dtype=torch.float64)
    got = got.detach().double().cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    rel, abs_ = (1e-6, 1e-7) if _dtype(backend) == torch.float32 else (1e-12, 1e-15)
    bad = (got - want).abs() > rel * want.abs() + abs_
    assert not bad.any(), f"{name} on {backend}: got {got.tolist()}, want {want.tolist()}"


def _on(backend, fn):
    require(backend)
    with attnfast.use_backend(backend):
        return fn()


@pytest.mark.parametrize("backend", _backends())
def test_channel_weights_by_hand(backend):
    # G = [1, -2; 3, 0]: mean ReLU = (1 + 3) / 4 = 1; mean = (1 - 2 + 3) / 4 = 0.5
    g = _t([[[[1.0, -2.0], [3.0, 0.0]]]], backend)
    _pin(_on(backend, lambda: attnfast.channel_weights(g)), [[1.0]], backend, "positive")
    _pin(_on(backend, lambda: attnfast.channel_weights(g, positive=False)), [[0.5]], backend,
         "gradcam")


@pytest.mark.parametrize("backend", _backends())
def test_weighted_and_channel_attention_by_hand(backend):
    # F[0] = [1, 2], F[1] = [3, -4], w = [1, 1]: [1 + 3, 2 - 4] = [4, -2] -> ReLU [4, 0]
    f = _t([[[[1.0, 2.0]], [[3.0, -4.0]]]], backend)
    _pin(_on(backend, lambda: attnfast.weighted_attention(f, _t([[1.0, 1.0]], backend))),
         [[[4.0, 0.0]]], backend, "weighted_attention")
    # G constant 1 in channel 0 and -1 in channel 1: w = mean ReLU(G) = [1, 0] -> A = ReLU(F[0])
    g = _t([[[[1.0, 1.0]], [[-1.0, -1.0]]]], backend)
    _pin(_on(backend, lambda: attnfast.channel_attention(f, g)), [[[1.0, 2.0]]], backend,
         "channel_attention")
    # Grad-CAM: w = [1, -1] -> [1 - 3, 2 + 4] = [-2, 6] -> [0, 6]
    _pin(_on(backend, lambda: attnfast.channel_attention(f, g, positive=False)), [[[0.0, 6.0]]],
         backend, "gradcam attention")


@pytest.mark.parametrize("backend", _backends())
def test_pixel_attention_by_hand(backend):
    # (1/K) sum_k G F, K = 2: pixel 0 (1*2 + 3*1)/2 = 2.5; pixel 1 (2*(-1) + 4*(-1))/2 = -3 -> 0
    f = _t([[[[1.0, 2.0]], [[3.0, 4.0]]]], backend)
    g = _t([[[[2.0, -1.0]], [[1.0, -1.0]]]], backend)
    _pin(_on(backend, lambda: attnfast.pixel_attention(f, g)), [[[2.5, 0.0]]], backend,
         "pixel_attention")


@pytest.mark.parametrize("backend", _backends())
def test_normalize_attention_by_hand(backend):
    # A / (max A + 1e-6); an all-zero map stays zero; a negative map is divided by eps alone
    a = _t([[[0.5, 2.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[-1e-7, -2e-7], [-1e-7, -3e-7]]],
           backend)
    want = [[[0.5 / (2 + E), 2 / (2 + E)], [1 / (2 + E), 0.0]], [[0.0, 0.0], [0.0, 0.0]],
            [[-0.1, -0.2], [-0.1, -0.3]]]
    _pin(_on(backend, lambda: attnfast.normalize_attention(a)), want, backend, "normalize")


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("backend", _backends())
def test_soft_mask_by_hand(backend):
    # sigma 0.55, omega 100 by default: M = sigmoid(100 (A / (max A + eps) - 0.55))
    a = _t([[[1.0, 0.55, 0.6]]], backend)
    want = [[[_sig(100 * (v / (1 + E) - 0.55)) for v in (1.0, 0.55, 0.6)]]]
    _pin(_on(backend, lambda: attnfast.soft_mask(a)), want, backend, "soft_mask")
    # resized [0, 1] (1 x 2) to 1 x 4, align_corners=False: source x = (j + 0.5) / 2 - 0.5 =
    # -0.25 (clamped to 0), 0.25, 0.75, 1.25 (past the last: 1) -> [0, 0.25, 0.75, 1]
    b = _t([[[0.0, 1.0]]], backend)
    want = [[[_sig(10 * (v / (1 + E) - 0.5)) for v in (0.0, 0.25, 0.75, 1.0)]]]
    _pin(_on(backend, lambda: attnfast.soft_mask(b, sigma=0.5, omega=10.0, size=(1, 4))), want,
         backend, "soft_mask resized")


@pytest.mark.parametrize("backend", _backends())
def test_soft_iou_by_hand(backend):
    # a = [1, 2], b = [2, 1], M = [1, 0.5]: min = [1, 1], 2 (1 + 0.5) / (6 + eps)
    a, b, m = (_t([[[1.0, 2.0]]], backend), _t([[[2.0, 1.0]]], backend),
               _t([[[1.0, 0.5]]], backend))
    _pin(_on(backend, lambda: attnfast.soft_iou(a, b, m)), [3.0 / (6 + E)], backend, "masked")
    _pin(_on(backend, lambda: attnfast.soft_iou(a, b)), [4.0 / (6 + E)], backend, "no mask")


@pytest.mark.parametrize("backend", _backends())
def test_attention_consistency_by_hand(backend):
    # A = [1, 3], M = [1, 0]: alpha - 1 / (4 + eps)
    a, m = _t([[[1.0, 3.0]]], backend), _t([[[1.0, 0.0]]], backend)
    _pin(_on(backend, lambda: attnfast.attention_consistency(a, m)), [1 - 1 / (4 + E)], backend,
         "alpha 1")
    _pin(_on(backend, lambda: attnfast.attention_consistency(a, m, alpha=0.5)),
         [0.5 - 1 / (4 + E)], backend, "alpha 0.5")


@pytest.mark.parametrize("backend", _backends())
def test_channel_spatial_attention_by_hand(backend):
    # A[0] = [1, 2], A[1] = [3, 0], S = [0.5, 0.5]: sum_c A S = [2, 1], T = [2, 1] / (3 + eps),
    # D = A * T
    a = _t([[[[1.0, 2.0]], [[3.0, 0.0]]]], backend)
    s = _t([[0.5, 0.5]], backend)
    d, t = _on(backend, lambda: attnfast.channel_spatial_attention(a, s))
    t0, t1 = 2 / (3 + E), 1 / (3 + E)
    _pin(t, [[[t0, t1]]], backend, "T")
    _pin(d, [[[[t0, 2 * t1]], [[3 * t0, 0.0]]]], backend, "D")


@pytest.mark.parametrize("backend", _backends())
def test_ggam_loss_by_hand(backend):
    # p = [0.75, 0.25], beta = 0: q = [0.5, 0.5];
    # 0.5 sum (p - q)(log p - log q) = 0.5 (0.25 log 1.5 - 0.25 log 0.5) = 0.125 log 3
    s, beta = _t([[0.75, 0.25], [0.5, 0.5]], backend), _t([[0.0, 0.0], [0.0, 0.0]], backend)
    _pin(_on(backend, lambda: attnfast.ggam_loss(s, beta)), [0.125 * math.log(3), 0.0], backend,
         "ggam_loss")


@pytest.mark.parametrize("backend", _backends())
def test_sharpen_focus_loss_by_hand(backend):
    # pixel kind, K = 1, F = 1: the maps are G. Last layer = inner layer = one 1 x 2 map:
    # target t = [1, 0.5], confuser c = [0.5, 1]; normalized (max 1): t / (1 + eps), same for c.
    # M = sigmoid(100 (t / (1 + eps) - 0.55)) = [m0, m1]. sIoU = 2 (min * M) / (sum + eps),
    # L_ac = 1 - (t M) / (sum t), all with the normalized maps.
    f = _t([[[[1.0, 1.0]]]], backend)
    gt, gc = _t([[[[1.0, 0.5]]]], backend), _t([[[[0.5, 1.0]]]], backend)
    out = _on(backend, lambda: attnfast.sharpen_focus_loss(f, gt, gc, f, gt, gc))
    u = 1 / (1 + E)
    m = [_sig(100 * (1.0 * u - 0.55)), _sig(100 * (0.5 * u - 0.55))]
    t, c = [u, 0.5 * u], [0.5 * u, u]
    iou = 2 * sum(min(x, y) * w for x, y, w in zip(t, c, m)) / (sum(t) + sum(c) + E)
    cons = 1 - sum(x * w for x, w in zip(t, m)) / (sum(t) + E)
    _pin(out.inner_iou, [iou], backend, "inner_iou")
    _pin(out.last_iou, [iou], backend, "last_iou")
    _pin(out.consistency, [cons], backend, "consistency")
    _pin(out.loss.reshape(1), [2 * iou + cons], backend, "loss")
