"""guidance_loss (guidance from boxes, Rao et al. ICCV 2023): pinned hand-computed values on every
backend, every backend against the float64 reference (kinds x losses x layouts x per-channel
grads, rows shared by an image), gradcheck, empty and outside boxes, dense masks, bad input."""
import math

import pytest
import torch

import attnfast
from attnfast import reference
from helpers import BACKENDS, DEVICE, big, backend_params, check, kink_free, require

EPS = 1e-6
KINDS = ("gradcam", "ixg", "pixel", "channel")
LOSSES = ("energy", "l1", "ppce", "rrr")
ALL = ["torch", *BACKENDS]

# Two overlapping boxes on a 32 x 32 image, 4 x 4 layer (8 px cells), plus a padding box and one
# outside the image: box 1 rows 4-20, cols 4-12; box 2 rows 12-16, cols 8-40 (clipped to 32).
BOXES = [[4, 4, 20, 12], [12, 8, 16, 40], [0, 0, 0, 0], [40, 40, 50, 50]]
# cov by hand: cell (1, 1) = (box 1: 8 x 4 + box 2: 4 x 8 - both: 4 x 4) / 64 = 48 / 64
COVERAGE = [[.25, .25, 0, 0], [.5, .75, .5, .5], [.25, .25, 0, 0], [0, 0, 0, 0]]


def _ixg_rows(maps):
    """F (1 x 1 x h x w ones) and G (R x 1 x h x w = the maps): with ixg, A[r] = maps[r] exactly."""
    g = torch.tensor(maps, dtype=torch.float64, device=DEVICE)[:, None]
    return torch.ones(1, 1, *g.shape[-2:], dtype=torch.float64, device=DEVICE), g


@pytest.mark.parametrize("backend", ALL)
def test_pinned_coverage_of_every_cell(backend):
    """A one-hot map at cell c has energy 1 - cov(c): the coverage of every cell of two
    overlapping boxes (one cutting cells, one clipped), a padding box and one outside the image,
    through the kernels, 16 rows of one image."""
    require(backend)
    onehot = torch.eye(16, dtype=torch.float64).reshape(16, 4, 4).tolist()
    f, g = _ixg_rows(onehot)
    boxes = torch.tensor([BOXES] * 16, dtype=torch.float64, device=DEVICE)
    dt = torch.float32 if backend == "triton" else torch.float64
    with attnfast.use_backend(backend):
        e = attnfast.guidance_loss(f.to(dt), g.to(dt), boxes, torch.zeros(16, dtype=torch.long, device=DEVICE),
                                   image_size=(32, 32), attention="ixg", reduction="none")
    want = 1 - torch.tensor(COVERAGE, dtype=torch.float64).flatten()
    torch.testing.assert_close(e.double().cpu(), want, rtol=0, atol=1e-6)


# A = [[1, 0, 2, 0], 0, 0, [0, 0, 0, -1]] against COVERAGE of box 1 only: by hand
_A = [[[1., 0, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, -1]]]
_COV1 = [[.25, .25, 0, 0], [.5, .5, 0, 0], [.25, .25, 0, 0], [0, 0, 0, 0]]
_U = 1 / (2 + EPS)  # Â of the pixel of value 1; the 2 becomes 2 / (2 + eps)
PINNED = {
    "energy": 1 - 0.25 / 3,
    "l1": (abs(_U - .25) + .25 + 2 * _U + .5 + .5 + .25 + .25) / 16,
    "ppce": -(.25 * math.log(_U + EPS) + (.25 + .5 + .5 + .25 + .25) * math.log(EPS)) / 2.0,
    "rrr": .75 * 1 + 1 * 4 + 1 * 1,
}


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("backend", ALL)
def test_pinned_losses(backend, loss):
    """Each loss on a 4 x 4 map (one negative value) with a box that cuts cells, by hand."""
    require(backend)
    f, g = _ixg_rows(_A)
    dt = torch.float32 if backend == "triton" else torch.float64
    boxes = torch.tensor([[BOXES[0]]], dtype=torch.float64, device=DEVICE)
    with attnfast.use_backend(backend):
        v = attnfast.guidance_loss(f.to(dt), g.to(dt), boxes, image_size=(32, 32), attention="ixg",
                                   loss=loss)
    tol = 1e-5 if dt == torch.float32 else 1e-12
    assert abs(float(v) - PINNED[loss]) <= tol * abs(PINNED[loss]), (loss, float(v), PINNED[loss])


def test_reference_coverage_is_pinned():
    """The reference's coverage itself, and a dense mask of the same boxes area-averaged."""
    cov = reference.box_coverage(torch.tensor([BOXES], dtype=torch.float64), (32, 32), (4, 4))
    torch.testing.assert_close(cov[0], torch.tensor(COVERAGE, dtype=torch.float64), rtol=0, atol=1e-12)
    mask = torch.zeros(1, 32, 32, dtype=torch.float64)
    for y0, x0, y1, x1 in BOXES:
        mask[0, y0:y1, x0:x1] = 1
    torch.testing.assert_close(reference.mask_coverage(mask, (4, 4))[0], cov[0], rtol=0, atol=1e-12)
    # a 3 x 3 layer on a 32 x 32 image: cells of 32/3 px; a box (0, 0, 16, 16) covers cell (0, 0)
    # fully, cell (0, 1) for (16 - 32/3) / (32/3) = 1/2 of its width, cell (1, 1) 1/4
    c3 = reference.box_coverage(torch.tensor([[[0., 0, 16, 16]]], dtype=torch.float64), (32, 32), (3, 3))[0]
    torch.testing.assert_close(c3, torch.tensor([[1, .5, 0], [.5, .25, 0], [0, 0, 0]], dtype=torch.float64))


def _inputs(shape, dtype, fmt, kind, flat, r_per_image=(2, 0, 1), gen_boxes=True):
    """F (N x K x h x w), G (R x K x h x w or R x K), rows (image 0 twice, image 1 none, ...),
    boxes R x 3 x 4 on a 40 x 36 image (random, some empty, one outside)."""
    n, k, h, w = shape
    rows = torch.tensor([i % n for i, c in enumerate(r_per_image * n) for _ in range(c)][: 2 * n + 1],
                        device=DEVICE)
    r = rows.numel()
    gen = torch.Generator().manual_seed(7)
    y = torch.rand(r, 3, 2, generator=gen).sort(-1).values * 48 - 4
    x = torch.rand(r, 3, 2, generator=gen).sort(-1).values * 44 - 4
    boxes = torch.stack([y[..., 0], x[..., 0], y[..., 1], x[..., 1]], -1).round().to(DEVICE)
    boxes[:, 2] = torch.tensor([50., 50, 60, 60])  # outside the image
    if r > 1:
        boxes[1] = 0  # a row with only padding
    f = big(shape, dtype, fmt)
    g = torch.randn(r, k, device=DEVICE).to(dtype) if flat else big((r, k, h, w), dtype, "nchw")
    return f, g, rows, boxes


def _pre(kind, rows):
    """The map before its ReLU (the kink test of conftest.kink_free)."""
    def pre(f, g):
        f = f[rows]
        if g.dim() == 2:
            g = g[:, :, None, None].expand_as(f)
        if kind == "pixel":
            return (f * g).mean(1)
        if kind == "ixg":
            return (f * g).sum(1)
        w = (torch.relu(g) if kind == "channel" else g).mean((2, 3))
        return torch.einsum("nkhw,nk->nhw", f, w)
    return pre


SHAPES = [(3, 5, 4, 6), (2, 7, 1, 9), (2, 4, 9, 1), (1, 1, 1, 1), (3, 13, 7, 7)]
SHAPES_SMALL = [(3, 5, 4, 6), (2, 3, 1, 5)]


def compiled_cases(shapes, *, all_dtypes=True):
    """``backend_params`` without the interpreted Triton backend: tests/test_guidance_triton.py runs every
    kind x loss, layout and per-channel case of it (the interpreter is slow; CI time)."""
    return [p for p in backend_params(shapes, shapes, all_dtypes=all_dtypes)
            if not (p.values[0] == "triton" and DEVICE == "cpu")]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend,dtype,shape", compiled_cases(SHAPES, all_dtypes=False))
def test_against_reference(backend, dtype, shape, kind, loss):
    """Per-row losses and the gradients of F and G, float32, NCHW F with NCHW G."""
    f, g, rows, boxes = _inputs(shape, dtype, "nchw", kind, False)
    f, g = kink_free(lambda: (big(shape, dtype, "nchw"), big(g.shape, dtype, "nchw")), _pre(kind, rows))
    check(lambda f, g: attnfast.guidance_loss(f, g, boxes, rows, image_size=(40, 36), attention=kind,
                                              loss=loss, reduction="none"), [f, g], backend)


@pytest.mark.parametrize("flat", [False, True], ids=["4d", "per_channel"])
@pytest.mark.parametrize("fmt", ["channels_last", "strided"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend,dtype,shape", compiled_cases([(3, 6, 5, 7)]))
def test_layouts_dtypes_and_per_channel_grads(backend, dtype, shape, kind, fmt, flat):
    """Every dtype, channels_last / strided F with NCHW G, and R x K grads (GAP + linear head)."""
    f, g, rows, boxes = _inputs(shape, dtype, fmt, kind, flat)
    make = (lambda: (big(shape, dtype, fmt), torch.randn(g.shape, device=DEVICE).to(dtype))) if flat else \
        (lambda: (big(shape, dtype, fmt), big(g.shape, dtype, "nchw")))
    f, g = kink_free(make, _pre(kind, rows))
    check(lambda f, g: attnfast.guidance_loss(f, g, boxes, rows, image_size=(40, 36), attention=kind,
                                              loss="energy", reduction="none"), [f, g], backend)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind, loss):
    """float64 gradcheck of the C++ CPU kernels in F and G (rows repeated, a mask given)."""
    require("cpu")
    f = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([1, 0, 1])
    mask = torch.rand(3, 7, 9, dtype=torch.float64)
    with attnfast.use_backend("cpu"):
        assert torch.autograd.gradcheck(
            lambda f, g: attnfast.guidance_loss(f, g, rows=rows, mask=mask, attention=kind, loss=loss,
                                                reduction="none"), (f, g))


@pytest.mark.parametrize("backend", ALL)
def test_empty_rows_boxes_and_mean(backend):
    """R = 0 gives no rows and a mean of 0 (nothing to guide); B = 0 covers nothing (energy 1,
    ppce 0); a row whose only box lies outside the image is covered nowhere."""
    require(backend)
    f = torch.randn(2, 3, 4, 4, device=DEVICE, requires_grad=True)
    with attnfast.use_backend(backend):
        none = attnfast.guidance_loss(f, torch.randn(0, 3, 4, 4, device=DEVICE),
                                      torch.zeros(0, 1, 4, device=DEVICE),
                                      torch.zeros(0, dtype=torch.long, device=DEVICE), image_size=(8, 8))
        assert float(none) == 0.0
        none.backward()
        assert f.grad is not None and not f.grad.any()
        g = torch.rand(2, 3, 4, 4, device=DEVICE) + 0.1
        for boxes in (torch.zeros(2, 0, 4, device=DEVICE),
                      torch.tensor([[[9., 9, 12, 12]], [[0, 20, 8, 30]]], device=DEVICE)):
            e = attnfast.guidance_loss(f.detach().abs(), g, boxes, image_size=(8, 8), reduction="none")
            p = attnfast.guidance_loss(f.detach().abs(), g, boxes, image_size=(8, 8), loss="ppce",
                                       reduction="none")
            assert e.tolist() == [1.0, 1.0] and p.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("backend", ALL)
def test_dense_mask_equals_boxes(backend):
    """A dense mask of integer boxes at image resolution gives the boxes' loss (area average).
    Image, mask and layer are not square (32 x 40 pixels, 4 x 5 cells): the area average cannot
    mix up the axes of the mask, whose coverage the other backends take from the same function."""
    require(backend)
    f, g = torch.randn(2, 4, 4, 5, device=DEVICE), torch.randn(2, 4, 4, 5, device=DEVICE)
    boxes = torch.tensor([[BOXES[0], BOXES[1]], [[0, 0, 32, 8], [0, 0, 0, 0]]], device=DEVICE).float()
    mask = torch.zeros(2, 32, 40, device=DEVICE)
    for r in range(2):
        for y0, x0, y1, x1 in boxes[r].long().tolist():  # non-negative; slices stop at the edge
            mask[r, y0:y1, x0:x1] = 1
    with attnfast.use_backend(backend):
        for loss in LOSSES:
            a = attnfast.guidance_loss(f, g, boxes, image_size=(32, 40), loss=loss, reduction="none")
            b = attnfast.guidance_loss(f, g, mask=mask, loss=loss, reduction="none")
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ALL)
def test_energy_at_eps(backend):
    """sum(A+) < eps: energy 1 with no gradient (decision 21); sum(A+) exactly eps: the formula
    (eps = 2^-20, a uniform 2 x 2 map, one of four cells covered: 1 - 1/4)."""
    require(backend)
    dt = torch.float32 if backend == "triton" else torch.float64
    eps = 2.0 ** -20
    for pixel, want in ((0.0, 1.0), (2.0 ** -23, 1.0), (2.0 ** -22, 0.75)):
        f = torch.ones(1, 1, 2, 2, dtype=dt, device=DEVICE)
        g = torch.full((1, 1, 2, 2), pixel, dtype=dt, device=DEVICE, requires_grad=True)
        with attnfast.use_backend(backend):
            e = attnfast.guidance_loss(f, g, torch.tensor([[[0., 0, 1, 1]]], device=DEVICE),
                                       image_size=(2, 2), attention="ixg", eps=eps)
            e.backward()
        assert float(e) == want, (pixel, float(e))
        if want == 1.0:
            assert not g.grad.any(), "no gradient below eps"
        else:
            assert g.grad.abs().sum() > 0


def test_rows_default_and_several_rows_per_image():
    """rows=None means row r is image r; an image with two rows gets the sum of both rows'
    gradients in dF (checked against one call per row)."""
    f = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    boxes = torch.tensor([[BOXES[0]], [BOXES[1]], [[0, 0, 16, 16]]], dtype=torch.float64)
    rows = torch.tensor([0, 0, 1])
    kw = dict(image_size=(32, 32), reduction="sum")
    (d_all,) = torch.autograd.grad(attnfast.guidance_loss(f, g, boxes, rows, **kw), f)
    d_sum = sum(torch.autograd.grad(attnfast.guidance_loss(f, g[[r]], boxes[[r]], rows[[r]], **kw), f)[0]
                for r in range(3))
    torch.testing.assert_close(d_all, d_sum)
    both = attnfast.guidance_loss(f, g[:2], boxes[:2], **kw)
    torch.testing.assert_close(both, attnfast.guidance_loss(f, g[:2], boxes[:2], torch.tensor([0, 1]), **kw))


@pytest.mark.parametrize("backend", ALL)
def test_nan_reaches_only_its_rows(backend):
    """A NaN in image 1's features makes the rows of image 1 NaN, as eager autograd does, and no
    other row (decision 15)."""
    require(backend)
    f = torch.randn(3, 4, 4, 4, device=DEVICE)
    f[1, 2, 1, 1] = float("nan")
    g = torch.randn(4, 4, 4, 4, device=DEVICE)
    rows = torch.tensor([0, 1, 2, 1], device=DEVICE)
    boxes = torch.tensor([[BOXES[0]]] * 4, device=DEVICE).float()
    for loss in LOSSES:
        outs = []
        for be in (backend, "torch"):
            fl = f.clone().requires_grad_()
            with attnfast.use_backend(be):
                v = attnfast.guidance_loss(fl, g, boxes, rows, image_size=(32, 32), loss=loss,
                                           reduction="none")
            (d,) = torch.autograd.grad(v.sum(), fl)
            outs.append((v.detach(), d))
        (v, d), (ve, de) = outs
        assert torch.equal(torch.isnan(v), torch.isnan(ve)), (loss, v, ve)
        assert torch.isnan(v[[1, 3]]).all() and not torch.isnan(v[[0, 2]]).any(), loss
        assert torch.equal(torch.isnan(d), torch.isnan(de)), loss
        torch.testing.assert_close(d[[0, 2]], de[[0, 2]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad, kind, match", [
    (dict(boxes=torch.zeros(2, 3)), ValueError, "boxes must be R x B x 4"),
    (dict(boxes=torch.zeros(2, 1, 4, dtype=torch.bool)), TypeError, "boxes must be a real"),
    (dict(boxes=torch.tensor([[[5., 0, 2, 4]], [[0, 0, 1, 1]]])), ValueError, r"boxes\[0, 0\].*inverted"),
    (dict(boxes=torch.tensor([[[0., 0, float("nan"), 4]], [[0, 0, 1, 1]]])), ValueError, "boxes must be finite"),
    (dict(rows=torch.tensor([0, 2])), ValueError, r"rows must index images in \[0, 2\)"),
    (dict(rows=torch.tensor([0., 1.])), TypeError, "rows must be an integer tensor"),
    (dict(rows=torch.tensor([0])), ValueError, "rows must be 1-D with one image index per row"),
    (dict(image_size=None), ValueError, "image_size"),
    (dict(mask=torch.zeros(2, 4, 4)), ValueError, "exactly one of boxes"),
    (dict(attention="hirescam"), ValueError, "attention must be one of"),
    (dict(loss="bce"), ValueError, "loss must be one of"),
    (dict(grads=torch.zeros(2, 4, 4, 4)), ValueError, "grads must be R x K x h x w"),
    (dict(grads=torch.zeros(2, 5)), ValueError, "grads given per channel must be R x K"),
])
def test_bad_input_names_the_argument(bad, kind, match):
    kw = dict(features=torch.randn(2, 3, 4, 4), grads=torch.randn(2, 3, 4, 4),
              boxes=torch.tensor([[[0., 0, 2, 2]], [[1, 1, 3, 3]]]), rows=torch.tensor([0, 1]),
              image_size=(8, 8))
    kw.update(bad)
    with pytest.raises(kind, match=match):
        attnfast.guidance_loss(kw.pop("features"), kw.pop("grads"), kw.pop("boxes"), kw.pop("rows"), **kw)


def test_mask_values_checked():
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 1\]"):
        attnfast.guidance_loss(torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2), mask=torch.full((1, 4, 4), 2.0))
