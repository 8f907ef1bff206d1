"""Sharpen Focus's knobs: separate weights of sIoU_inner, sIoU_last and L_ac, the paper's literal
raw-scale mask, and ``measure`` (one pass for the step and the maps).

Float64 tiny ResNets on the ``torch`` backend; the expected values are composed here from the
step's per-sample parts or from the maps with torch functions written out in this file.
"""
import pytest
import torch
import torch.nn.functional as nnf

import attnfast
from attnfast import SharpenFocus
from helpers import image_batch, tiny_resnet

N, C, SIZE = 6, 5, (16, 12)  # non-square images: an H/W mix-up cannot pass


pytestmark = pytest.mark.usefixtures("torch_backend")  # conftest


def tiny(seed=0):
    return tiny_resnet(C, seed=seed, eval_mode=True)


def batch(seed=1):
    return image_batch(N, SIZE, C, seed=seed)


def grads_of(loss, model):
    ps = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, ps, allow_unused=True, retain_graph=True)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.5, 2.0, 0.0), (0.0, 0.0, 1.0)])
def test_part_weights_weight_the_per_sample_parts(weights):
    x, y = batch()
    model = tiny()
    sf = SharpenFocus(model, "layer2", "layer3", weight=0.7, part_weights=weights)
    step = sf(x, y)
    p = step.parts
    expect = (weights[0] * p.inner_iou + weights[1] * p.last_iou
              + weights[2] * p.consistency).mean()
    assert torch.allclose(step.attention_loss, expect, rtol=1e-12, atol=0)
    assert torch.allclose(step.loss, step.classification_loss + 0.7 * expect, rtol=1e-12, atol=0)
    # the gradient of the weighted term is the weighted sum of the parts' gradients
    got = grads_of(step.attention_loss, model)
    parts = [grads_of(part.mean(), model) for part in (p.inner_iou, p.last_iou, p.consistency)]
    for k, g in enumerate(got):
        want = sum(w * (gp[k] if gp[k] is not None else 0) for w, gp in zip(weights, parts))
        if g is None:
            continue
        assert torch.allclose(g, torch.as_tensor(want, dtype=g.dtype).expand_as(g),
                              rtol=1e-9, atol=1e-12)


def test_default_part_weights_are_the_papers_sum():
    x, y = batch()
    a = SharpenFocus(tiny(), "layer2", "layer3")(x, y)
    p = a.parts
    assert torch.allclose(a.attention_loss, (p.inner_iou + p.last_iou + p.consistency).mean(),
                          rtol=1e-12, atol=0)


def _raw_parts(maps, sigma, omega, alpha=1.0, eps=1e-6):
    """Eq. 6-8 with M = sigmoid(omega (R(A_last_t) - sigma)) on the raw map, written out."""
    def norm(a):
        return a / (a.flatten(1).amax(1).clamp_min(0)[:, None, None] + eps)

    a_lt = maps["last_target"]
    size = maps["inner_target"].shape[-2:]
    m_last = torch.sigmoid(omega * (a_lt - sigma))
    m_inner = torch.sigmoid(omega * (nnf.interpolate(a_lt[:, None], size=tuple(size),
                                                     mode="bilinear", align_corners=False)[:, 0]
                                     - sigma))
    it, ic, lt, lc = (norm(maps[k]) for k in ("inner_target", "inner_confuser", "last_target",
                                              "last_confuser"))

    def siou(a, b, m):
        return 2 * (torch.minimum(a, b) * m).sum((1, 2)) / ((a + b).sum((1, 2)) + eps)

    cons = alpha - (it * m_inner).sum((1, 2)) / (it.sum((1, 2)) + eps)
    return siou(it, ic, m_inner), siou(lt, lc, m_last), cons


def test_raw_mask_is_the_literal_formula_on_the_raw_map():
    x, y = batch()
    model = tiny()
    probe = SharpenFocus(model, "layer2", "layer3")
    maps = probe.attention_maps(x, y)
    # a sigma inside the raw maps' range so that the mask is neither 0 nor 1 everywhere
    sigma = float(maps["last_target"].median())
    omega = 10.0 / float(maps["last_target"].max())
    sf = SharpenFocus(model, "layer2", "layer3", mask="raw", sigma=sigma, omega=omega)
    step = sf(x, y)
    for got, want in zip(step.parts[1:], _raw_parts(maps, sigma, omega)):
        assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-9)
    assert 0.05 < float(step.parts.consistency.detach().mean()) < 0.95
    # the normalized mask gives other values on the same maps
    norm = SharpenFocus(model, "layer2", "layer3", sigma=sigma, omega=omega)(x, y)
    assert not torch.allclose(norm.parts.consistency, step.parts.consistency, atol=1e-3)
    # and it trains: the loss differentiates into the model
    g = grads_of(step.loss, model)
    assert any(t is not None and t.abs().sum() > 0 for t in g)


def test_raw_mask_at_the_papers_sigma_is_almost_empty():
    """Raw maps are small, so sigmoid(100 (A - 0.55)) is ~0: sIoU ~ 0 and L_ac ~ alpha."""
    x, y = batch()
    step = SharpenFocus(tiny(), "layer2", "layer3", mask="raw")(x, y)
    assert float(step.parts.inner_iou.detach().abs().max()) < 1e-6
    assert torch.allclose(step.parts.consistency.double(), torch.ones(N, dtype=torch.float64),
                          atol=1e-6)


def test_measure_returns_the_step_and_the_maps_of_one_pass():
    x, y = batch()
    model = tiny()
    sf = SharpenFocus(model, "layer2", "layer3", second_order=False)
    step, maps = sf.measure(x, y)
    with torch.no_grad():
        alone = sf(x, y)
    assert torch.equal(step.loss, alone.loss) and not step.loss.requires_grad
    again = sf.attention_maps(x, y)
    assert maps.keys() == again.keys() == {"inner_target", "inner_confuser", "last_target",
                                           "last_confuser"}
    for k in maps:
        assert torch.equal(maps[k], again[k]) and not maps[k].requires_grad
    assert maps["inner_target"].shape == (N, 8, 6) and maps["last_target"].shape == (N, 4, 3)


@pytest.mark.parametrize("kw,match", [(dict(part_weights=(1, 1)), "three non-negative"),
                                      (dict(part_weights=(1, -1, 1)), "three non-negative"),
                                      (dict(mask="literal"), "'normalized' or 'raw'")])
def test_bad_knobs_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        SharpenFocus(tiny(), "layer2", "layer3", **kw)


@pytest.mark.parametrize("mask", ["normalized", "raw"])
def test_mask_grad_false_stops_the_gradient_through_the_mask(mask):
    """Decision 2 by its contract: the inner soft-IoU and the consistency see the last layer
    only through the mask, so with mask_grad=False their gradient with respect to the last
    target map is exactly zero (and with mask_grad=True it is not), for both mask forms."""
    from attnfast.sharpen_focus import _raw_mask_parts
    g = torch.Generator().manual_seed(5)
    maps = {k: torch.rand(3, *hw, generator=g, dtype=torch.float64).requires_grad_()
            for k, hw in (("inner_target", (6, 4)), ("inner_confuser", (6, 4)),
                          ("last_target", (3, 2)), ("last_confuser", (3, 2)))}
    opts = dict(attention="pixel", sigma=0.55, omega=10.0, alpha=1.0, normalize=True)
    for mask_grad in (False, True):
        if mask == "raw":
            parts = _raw_mask_parts(maps, mask_grad=mask_grad, **opts)
        else:
            from attnfast.reference import sharpen_focus_from_maps
            inner, last, cons = sharpen_focus_from_maps(
                *(maps[k] for k in ("inner_target", "inner_confuser", "last_target",
                                    "last_confuser")),
                sigma=0.55, omega=10.0, alpha=1.0, normalize=True, mask_grad=mask_grad)
            parts = attnfast.SharpenFocusOutput(None, inner, last, cons)
        (d,) = torch.autograd.grad((parts.inner_iou + parts.consistency).sum(),
                                   maps["last_target"], allow_unused=True)
        through_mask = torch.zeros(3, 3, 2, dtype=torch.float64) if d is None else d
        assert (through_mask == 0).all() != mask_grad, f"mask_grad={mask_grad}, mask={mask}"
