"""guidance_loss on the Triton backend (triton_kernels/guidance_loss.py) against the eager
reference (issue 18). The op's main tests, with hand-computed values, are in
tests/test_guidance.py; here the Triton kernels must agree with autograd of attnfast.reference in
float64, element by element (conftest.check: outputs, then d_features and d_grads for the same
random upstream gradient): every map kind x loss, NCHW / channels_last / mixed layouts, R x K
gradients, rows repeated and images without rows, R = 0, B = 0, coverage given (a mask) or
computed in-kernel from boxes that cut cells, overlap, stick out of or lie outside the image,
h = 1 < w and w = 1 < h, maps walked in several chunks (MAP_TILE lowered) and split reductions,
half precision, ties at the max and the all-zero map, NaN placement. Under the interpreter
(no GPU: conftest sets TRITON_INTERPRET=1) the shapes are small.

Covering designs instead of full products (the interpreter is slow). The loss reaches the
kernels only through the per-row program (dL/dA, and whether the ReLU mask applies: all but ixg
with rrr); the kind picks the map and backward passes, the layout and R x K gradients their
loads. So every kind x loss pair runs once in full (test_every_kind_and_loss), and the other
axes meet every kind and every loss without repeating the 16 pairs:
* R x K gradients: the diagonal kind x loss (pixel/energy, channel/l1, gradcam/ppce, ixg/rrr:
  every kind and every loss once, ixg/rrr the unmasked backward);
* layouts: each (F, G) layout pair with a kind of each backward path (pixel or ixg: G read per
  pixel; channel or gradcam: the weights path), every kind at least once;
* chunked maps and split reductions: every loss once, gradcam and ixg alternating;
* NaN placement: every kind x loss pair once, the NaN in F or in G alternating, so that every
  kind and every loss has it in both;
* coverage of every cell: every map (plain, h = 1, w = 1, chunked, unit cells) with the most
  boxes (B = 5: every kind of box, padded edge vectors), the other box counts (padded in a
  smaller block, not padded) on the plain and the chunked map.
"""
import importlib

import pytest
import torch

import attnfast
from attnfast import reference as ref
from helpers import BACKENDS, DEVICE, big, check, check_rule, close, kink_free, require

pytestmark = pytest.mark.skipif("triton" not in BACKENDS, reason="triton is not tested here")

KINDS = ("pixel", "channel", "gradcam", "ixg")
LOSSES = ("energy", "l1", "ppce", "rrr")
IMAGE = (15, 18)       # image pixels: on a 4 x 5 map a cell is 3.75 x 3.6 pixels
N, K, H, W = 3, 5, 4, 5
ROWS = [0, 2, 0, 2, 2]  # image 1 has no row, images 0 and 2 several
# Boxes (y0, x0, y1, x1) per row, padded with empty ones: cutting cells at non-grid positions,
# overlapping, sticking out of the image, entirely outside it, covering it all, zero-height,
# tiny (inside one cell), none at all.
BOX_TABLE = [
    [[1.5, 2.0, 7.25, 9.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
    [[3.0, 1.0, 12.0, 5.0], [4.0, 4.0, 10.0, 11.5], [6.0, 0.0, 9.0, 18.0]],
    [[-5.0, 3.0, 4.0, 30.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 0.0, 0.0]],
    [[0.0, 0.0, 15.0, 18.0], [2.0, 2.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0]],
    [[7.5, 9.0, 7.5, 12.0], [2.0, 2.0, 2.5, 2.5], [0.0, 0.0, 0.0, 0.0]],
    [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
]


def _boxes(r, first=0):
    """R x 3 x 4 boxes, row i taking BOX_TABLE[(first + i) % 6]."""
    rows = [BOX_TABLE[(first + i) % len(BOX_TABLE)] for i in range(r)]
    return torch.tensor(rows, device=DEVICE).view(r, 3, 4)


@pytest.fixture
def tiles(monkeypatch):
    """Set MAP_TILE (pixels per chunk of the per-row program) and force split reductions."""
    common = importlib.import_module("attnfast.triton_kernels._common")

    def set_knobs(tile=None, split=False):
        if tile:
            monkeypatch.setattr(common, "MAP_TILE", tile)
        if split:
            monkeypatch.setitem(common.TUNING, "target_programs", 256)
            monkeypatch.setitem(common.TUNING, "min_chunk", 4)
        return common
    return set_knobs


def _pre(kind, f, g, rows):
    """The map of ``kind`` before its ReLU (R x h x w), rows gathered."""
    f = f[rows]
    if g.dim() == 2:
        g = g[:, :, None, None].expand_as(f)
    if kind == "ixg":
        return (f * g).sum(1)
    if kind == "pixel":
        return (f * g).mean(1)
    w = (torch.relu(g) if kind == "channel" else g).mean((2, 3))
    return torch.einsum("rkhw,rk->rhw", f, w)


def _inputs(kind, dtype=torch.float32, shape=(N, K, H, W), rows=ROWS, f_fmt="nchw",
            g_fmt="channels_last", per_channel=False):
    """Seeded, kink-free F (N x K x h x w), G (R x K x h x w, or R x K), rows."""
    rows_t = torch.tensor(rows, dtype=torch.long, device=DEVICE)
    r = len(rows)

    def make():
        f = big(shape, dtype, f_fmt)
        g = torch.randn(r, shape[1], device=DEVICE) if per_channel else \
            big((r, *shape[1:]), dtype, g_fmt)
        return f, g
    f, g = kink_free(make, lambda f, g: _pre(kind, f, g, rows_t))
    return f, g, rows_t


def _op(kind, loss, boxes=None, rows=None, mask=None, image=IMAGE):
    return lambda f, g: attnfast.guidance_loss(f, g, boxes, rows, image_size=image, mask=mask,
                                               attention=kind, loss=loss, reduction="none")


def _check(kind, loss, f, g, rows, boxes=None, mask=None, image=IMAGE):
    boxes = _boxes(len(rows)) if boxes is None and mask is None else boxes
    return check(_op(kind, loss, boxes, rows, mask, image), [f, g], "triton")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_and_loss(kind, loss):
    """F NCHW, G channels_last (different strides), boxes computed in-kernel, rows repeated and
    an image without rows (its d_features must be 0)."""
    f, g, rows = _inputs(kind)
    _check(kind, loss, f, g, rows)


@pytest.mark.parametrize("kind,loss", list(zip(KINDS, LOSSES)))
def test_per_channel_grads(kind, loss):
    """R x K gradients (GAP + linear head), features channels_last."""
    f, g, rows = _inputs(kind, f_fmt="channels_last", per_channel=True)
    _check(kind, loss, f, g, rows)


LAYOUTS = [("nchw", "nchw"), ("channels_last", "channels_last"), ("channels_last", "nchw")]


@pytest.mark.parametrize("kind,fmts", [(kind, fmts) for j, fmts in enumerate(LAYOUTS)
                                       for i, kind in enumerate(KINDS) if (i + j) % 2 == 0],
                         ids=lambda x: x if isinstance(x, str) else "-".join(x))
def test_layouts(kind, fmts):
    f, g, rows = _inputs(kind, f_fmt=fmts[0], g_fmt=fmts[1])
    out = _check(kind, "l1", f, g, rows)
    assert out[0].dtype == torch.float32


@pytest.mark.parametrize("kind,loss", [(("gradcam", "ixg")[j % 2], loss)
                                       for j, loss in enumerate(LOSSES)])
def test_chunked_maps_and_split_reductions(kind, loss, tiles):
    """Maps of 6 x 7 = 42 pixels walked in chunks of 8 (coverage recomputed per chunk), the
    channel sums and the backward's pixel sums split over programs (partial sums); gradcam
    takes the weights path of the backward, ixg the pixel-wise one (pixel's is the same)."""
    tiles(tile=8, split=True)
    f, g, rows = _inputs(kind, shape=(N, 9, 6, 7))
    _check(kind, loss, f, g, rows, image=(23, 30))


@pytest.mark.parametrize("loss", LOSSES)
def test_mask_coverage_given(loss):
    """A dense mask: the coverage reaches the kernel as a tensor (not from boxes)."""
    f, g, rows = _inputs("gradcam")
    mask = (torch.rand(len(ROWS), 9, 11, device=DEVICE) > 0.6).float()
    mask[0] = 0.0  # a row without any coverage (ppce: 0)
    _check("gradcam", loss, f, g, rows, mask=mask)


@pytest.mark.parametrize("loss", LOSSES)
def test_coverage_given_equals_boxes(loss):
    """The kernel op with the coverage as a tensor gives what it gives from the boxes."""
    require("triton")
    f, g, rows = _inputs("pixel")
    boxes = _boxes(len(ROWS))
    cov = ref.box_coverage(boxes, IMAGE, (H, W)).float().contiguous()
    ops, code = torch.ops.attnfast_triton, attnfast._schema.LOSS_CODES[loss]
    empty = cov.new_empty((0,))
    from_boxes = ops.guidance_loss(f, g, boxes, rows, empty, empty, 0, code, *IMAGE, 1e-6)
    given = ops.guidance_loss(f, g, boxes[:, :0], rows, cov, empty, 0, code, *IMAGE, 1e-6)
    close(from_boxes[0], given[0], "loss", 1e-5, 1e-6)


def _coverage_from_kernel(boxes, image, size, tiles=None):
    """The coverage the kernel computes from ``boxes``, read back through the op: for ixg and
    rrr with F = G = 1 (K = 1) and upstream 1, d_grads = 2 (1 - cov)."""
    r = boxes.shape[0]
    f = torch.ones(1, 1, *size, device=DEVICE)
    g = torch.ones(r, 1, *size, device=DEVICE, requires_grad=True)
    rows = torch.zeros(r, dtype=torch.long, device=DEVICE)
    with attnfast.use_backend("triton"):
        out = attnfast.guidance_loss(f, g, boxes, rows, image_size=image, attention="ixg",
                                     loss="rrr", reduction="sum")
    out.backward()
    return 1.0 - g.grad[:, 0] / 2.0


COVER_MAPS = {"4x5": ((4, 5), IMAGE, None), "h1": ((1, 7), IMAGE, None),
              "w1": ((6, 1), IMAGE, None), "6x7-chunked": ((6, 7), (23, 30), 8),
              "3x3-unit-cells": ((3, 3), (3, 3), None)}
# every map with B = 5 (all the kinds of box of the table; 12 edges padded to 16), and B = 2
# (6 edges padded to 8) and B = 3 (8 edges, no padding) on the plain and the chunked map
COVER_CASES = [(m, 5) for m in COVER_MAPS] + [(m, b) for m in ("4x5", "6x7-chunked") for b in (2, 3)]


@pytest.mark.parametrize("map_id,n_boxes", COVER_CASES, ids=[f"{m}-B{b}" for m, b in COVER_CASES])
def test_box_coverage_per_cell(map_id, n_boxes, tiles):
    """Coverage of every cell against reference.box_coverage in float64, element by element:
    boxes cutting cells, overlapping, sticking out, outside, zero-height, tiny, absent; B = 2
    and 5 leave the kernel's edge vectors padded (2B + 2 = 6, 12 edges in blocks of 8, 16)."""
    size, image, tile = COVER_MAPS[map_id]
    require("triton")
    tiles(tile=tile)
    boxes = _boxes(len(BOX_TABLE))
    boxes = torch.cat([boxes, _boxes(len(BOX_TABLE), first=3)], dim=1)[:, :n_boxes].contiguous()
    got = _coverage_from_kernel(boxes, image, size)
    want = ref.box_coverage(boxes.double(), image, size)
    close(got, want, "coverage", 1e-5, 1e-6)


def test_box_coverage_pinned():
    """3 x 3 cells of 1 x 1 pixel, boxes (0, 0, 2, 1.5) and (1, 1, 3, 2) (overlap at
    [1, 2) x [1, 1.5)): union per cell computed by hand."""
    require("triton")
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 1.5], [1.0, 1.0, 3.0, 2.0]]], device=DEVICE)
    got = _coverage_from_kernel(boxes, (3, 3), (3, 3))
    want = torch.tensor([[[1.0, 0.5, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]])
    close(got, want, "coverage", 0.0, 1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_one_row_per_image_and_no_boxes(kind):
    """R = N with the default rows, and B = 0 (no box: coverage 0 everywhere)."""
    f, g, _ = _inputs(kind, rows=[0, 1, 2])
    boxes = torch.zeros(N, 0, 4, device=DEVICE)
    for loss in ("energy", "ppce"):
        check(lambda a, b: attnfast.guidance_loss(a, b, boxes, image_size=IMAGE, attention=kind,
                                                  loss=loss, reduction="none"), [f, g], "triton")


@pytest.mark.parametrize("loss", LOSSES)
def test_no_rows(loss):
    """R = 0: empty losses, d_features 0."""
    require("triton")
    f = torch.randn(N, K, H, W, device=DEVICE, requires_grad=True)
    g = torch.randn(0, K, H, W, device=DEVICE, requires_grad=True)
    rows = torch.zeros(0, dtype=torch.long, device=DEVICE)
    with attnfast.use_backend("triton"):
        out = attnfast.guidance_loss(f, g, _boxes(0), rows, image_size=IMAGE, loss=loss,
                                     attention="pixel", reduction="none")
    assert out.shape == (0,)
    (out.sum() + (f * 0).sum()).backward()
    assert torch.equal(f.grad, torch.zeros_like(f))
    assert g.grad.shape == g.shape


@pytest.mark.parametrize("shape", [(2, 3, 1, 6), (2, 3, 7, 1)], ids=["h1", "w1"])
@pytest.mark.parametrize("kind", ["channel", "ixg"])
def test_thin_maps(kind, shape):
    f, g, rows = _inputs(kind, shape=shape, rows=[1, 0, 1])
    for loss in ("l1", "energy"):
        _check(kind, loss, f, g, rows)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["pixel", "gradcam", "ixg"])
def test_half_precision(kind, dtype):
    f, g, rows = _inputs(kind, dtype=dtype)
    out = _check(kind, "energy", f, g, rows)
    assert out[0].dtype == torch.float32


@pytest.mark.parametrize("loss", ["l1", "ppce"])
def test_ties_at_the_max(loss, tiles):
    """Two pixels tied at the map's max (one in a later chunk): the normalization's gradient
    splits evenly between them."""
    tiles(tile=8)
    f, g, rows = _inputs("gradcam", rows=[0, 1, 2], per_channel=True, shape=(N, K, 4, 5))
    for r in range(N):
        top = 3.0 * torch.sign(g[r])
        f[r, :, 0, 1] = top.to(f.dtype)
        f[r, :, 3, 2] = top.to(f.dtype)
    _check("gradcam", loss, f, g, rows)


@pytest.mark.parametrize("loss", LOSSES)
def test_all_zero_maps(loss):
    """G = 0: every map is exactly 0 (the ReLU kink; energy 1 with sum(A+) < eps)."""
    f, _, rows = _inputs("gradcam")
    g = torch.zeros(len(ROWS), K, H, W, device=DEVICE)
    _check("gradcam", loss, f, g, rows)


@pytest.mark.parametrize("kind,loss,which", [
    (kind, loss, ("features", "grads")[(i + j) % 2])
    for i, kind in enumerate(["pixel", "gradcam", "ixg"]) for j, loss in enumerate(LOSSES)])
def test_nan_lands_where_eager_puts_it(kind, loss, which):
    """docs/SPEC.md decision 15: a NaN in F (image 0, used by rows 0 and 2) or in G (row 1)
    reaches exactly the outputs and gradients eager autograd of the reference carries it to."""
    f, g, rows = _inputs(kind)
    if which == "features":
        f[0, 1, 1, 2] = float("nan")
    else:
        g[1, 1, 1, 2] = float("nan")
    check_rule("triton", _op(kind, loss, _boxes(len(ROWS)), rows), [f, g])


def test_opcheck():
    """Schema, fake kernel and autograd registration of the Triton op (4-D and R x K grads,
    boxes and a coverage tensor)."""
    require("triton")
    ops = torch.ops.attnfast_triton
    f, g, rows = _inputs("pixel")
    boxes = _boxes(len(ROWS))
    cov = torch.rand(len(ROWS), H, W, device=DEVICE)
    empty = cov.new_empty((0,))
    cell = torch.rand(H, W, device=DEVICE) + 0.5  # cell_weights (the bilinear energy's t)
    for args in [(f, g, boxes, rows, empty, empty, 0, 1, *IMAGE, 1e-6),
                 (f, g[:, :, 0, 0].float().contiguous(), boxes, rows, cov, empty, 1, 2, *IMAGE,
                  1e-6),
                 (f, g, boxes, rows, cov, empty, 3, 3, *IMAGE, 1e-6),
                 (f, g, boxes, rows, cov, cell, 2, 0, *IMAGE, 1e-6)]:
        args = tuple(x.detach().requires_grad_() if i < 2 else x for i, x in enumerate(args))
        torch.library.opcheck(ops.guidance_loss.default, args,
                              test_utils=("test_schema", "test_autograd_registration",
                                          "test_faketensor"))
