"""guidance_loss(..., upsample="bilinear") (docs/SPEC.md decision 24): the paper code's energy of
the map upsampled bilinearly to the image, computed exactly at the layer. Pinned hand-computed
weights and values on every backend, every backend against an explicit upsample-then-mask
computation (boxes and a dense mask, forward and gradients), and its errors."""
import pytest
import torch
import torch.nn.functional as nnf

import attnfast
from attnfast import reference
from helpers import BACKENDS, DEVICE, require

ALL = ["torch", *BACKENDS]

# A 3 x 1 map upsampled to a 4 x 1 image (align_corners=False): pixel y samples the map at
# (y + 1/2) 3/4 - 1/2 = -1/8 (clamped to 0), 5/8, 11/8, 17/8 (clamped to the last cell), so
# U = [[1, 0, 0], [3/8, 5/8, 0], [0, 5/8, 3/8], [0, 0, 1]]: the cells' shares of the image
# 11/8, 5/4, 11/8 (not uniform), and the box of pixels 0-1 weighs them 11/8, 5/8, 0.
UP_SUMS = [11 / 8, 5 / 4, 11 / 8]
BOX_WEIGHTS = [11 / 8, 5 / 8, 0.0]
# A = (1, 2, 4): inside = 11/8 + 5/4 = 21/8, total = 11/8 + 5/2 + 11/2 = 75/8, energy = 1 - 21/75;
# dE/dA_i = -(w_i - (21/75) t_i) / (75/8)
ENERGY = 1 - 21 / 75
GRAD = [-(w - 21 / 75 * t) / (75 / 8) for w, t in zip(BOX_WEIGHTS, UP_SUMS)]


def _dtype(backend):
    return torch.float32 if backend == "triton" else torch.float64


def test_weights_pinned():
    """The reference's bilinear weights of the case above, by hand."""
    box = torch.tensor([[[0.0, 0.0, 2.0, 1.0]]], dtype=torch.float64)
    cov = reference.box_coverage(box, (4, 1), (3, 1), "bilinear")
    torch.testing.assert_close(cov.flatten(), torch.tensor(BOX_WEIGHTS, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    t = reference.cell_weights((4, 1), (3, 1))
    torch.testing.assert_close(t.flatten(), torch.tensor(UP_SUMS, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    # pixel centres decide: a box (0.4, 0, 1.6, 1) holds pixel 0 (centre 0.5) and pixel 1
    # (centre 1.5), as (0, 0, 2, 1) does; (0.6, 0, 1.4, 1) holds neither
    same = reference.box_coverage(torch.tensor([[[0.4, 0, 1.6, 1]]], dtype=torch.float64), (4, 1),
                                  (3, 1), "bilinear")
    none = reference.box_coverage(torch.tensor([[[0.6, 0, 1.4, 1]]], dtype=torch.float64), (4, 1),
                                  (3, 1), "bilinear")
    assert torch.equal(same, cov) and not none.any()


@pytest.mark.parametrize("backend", ALL)
def test_pinned_energy_and_gradient(backend):
    """ixg with K = 1 and G = 1 gives A = F = (1, 2, 4): energy and dE/dF by hand."""
    require(backend)
    dt = _dtype(backend)
    f = torch.tensor([1.0, 2.0, 4.0], dtype=dt, device=DEVICE).view(1, 1, 3, 1).requires_grad_()
    box = torch.tensor([[[0.0, 0.0, 2.0, 1.0]]], device=DEVICE)
    with attnfast.use_backend(backend):
        e = attnfast.guidance_loss(f, torch.ones_like(f), box, image_size=(4, 1), attention="ixg",
                                   upsample="bilinear")
    (d,) = torch.autograd.grad(e, f)
    tol = 1e-6 if dt == torch.float32 else 1e-13
    assert abs(float(e) - ENERGY) <= tol, (float(e), ENERGY)
    for got, want in zip(d.flatten().tolist(), GRAD):
        assert abs(got - want) <= tol, (d.flatten().tolist(), GRAD)


def _pixel_mask(boxes, image):
    """R x H x W: 1 at the pixels whose centres lie in some box of the row."""
    h, w = image
    py = torch.arange(h, dtype=boxes.dtype) + 0.5
    px = torch.arange(w, dtype=boxes.dtype) + 0.5
    b = boxes[..., None, None]
    inside = (b[:, :, 0] <= py[:, None]) & (py[:, None] < b[:, :, 2]) & \
             (b[:, :, 1] <= px) & (px < b[:, :, 3])
    return inside.any(1).to(boxes.dtype)


def _explicit(f, g, rows, mask, kind):
    """The paper code's way: A+ upsampled bilinearly to the image, summed in and out of the mask."""
    a = reference.guidance_map(f, g, rows, kind).relu()
    up = nnf.interpolate(a[:, None], size=mask.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return 1 - (up * mask).sum((1, 2)) / up.sum((1, 2))


@pytest.mark.parametrize("by_mask", [False, True], ids=["boxes", "mask"])
@pytest.mark.parametrize("kind", ["gradcam", "ixg", "pixel", "channel"])
@pytest.mark.parametrize("backend", ALL)
def test_equals_explicit_upsampling(backend, kind, by_mask):
    """Every backend = upsample-then-mask in float64, forward and both gradients, element-wise;
    non-integer scales (3 x 5 -> 10 x 13), rows sharing an image, a row without boxes."""
    require(backend)
    dt = _dtype(backend)
    gen = torch.Generator().manual_seed(3)
    (n, k, h, w), image = (3, 4, 3, 5), (10, 13)
    rows = torch.tensor([0, 2, 2, 0])
    f = torch.randn(n, k, h, w, generator=gen, dtype=torch.float64)
    g = torch.randn(4, k, h, w, generator=gen, dtype=torch.float64)
    corners = (torch.rand(4, 2, 4, generator=gen, dtype=torch.float64) * torch.tensor([*image, *image])).round()
    boxes = torch.cat([torch.minimum(corners[..., :2], corners[..., 2:]),
                       torch.maximum(corners[..., :2], corners[..., 2:])], -1)
    boxes[3] = 0  # no boxes: energy 1 - 0
    mask = _pixel_mask(boxes, image)
    fx, gx = (t.detach().clone().requires_grad_() for t in (f, g))
    want = _explicit(fx, gx, rows, mask, kind)
    up = torch.randn(4, generator=gen, dtype=torch.float64)
    wf, wg = torch.autograd.grad(want, (fx, gx), up)
    fb, gb = (t.to(dt).to(DEVICE).requires_grad_() for t in (f, g))
    given = dict(mask=mask.to(DEVICE)) if by_mask else dict(boxes=boxes.to(DEVICE), image_size=image)
    with attnfast.use_backend(backend):
        got = attnfast.guidance_loss(fb, gb, rows=rows.to(DEVICE), attention=kind, upsample="bilinear",
                                     reduction="none", **given)
    df, dg = torch.autograd.grad(got, (fb, gb), up.to(got))
    tol = dict(rtol=1e-4, atol=1e-6) if dt == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.double().cpu(), want.detach(), **tol)
    torch.testing.assert_close(df.double().cpu(), wf, **tol)
    torch.testing.assert_close(dg.double().cpu(), wg, **tol)


def test_area_default_differs_from_bilinear():
    """The option is not the default: on the pinned case the area energy is 1 - 2/7 (cells of
    4/3 px: the box covers cell 0 and 1/2 of cell 1), not 1 - 21/75."""
    f = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64).view(1, 1, 3, 1)
    e = attnfast.guidance_loss(f, torch.ones_like(f), torch.tensor([[[0.0, 0, 2, 1]]]),
                               image_size=(4, 1), attention="ixg")
    assert abs(float(e) - (1 - 2 / 7)) <= 1e-12, float(e)


@pytest.mark.parametrize("bad, match", [
    (dict(loss="l1"), 'upsample="bilinear" is defined for loss="energy" only'),
    (dict(loss="rrr"), 'upsample="bilinear" is defined for loss="energy" only'),
    (dict(upsample="nearest"), "upsample must be one of"),
])
def test_bad_options(bad, match):
    kw = dict(dict(image_size=(8, 8), upsample="bilinear"), **bad)
    with pytest.raises(ValueError, match=match):
        attnfast.guidance_loss(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4),
                               torch.tensor([[[0.0, 0, 2, 2]]]), **kw)
