"""Box coverage of a map's cells, computed in-kernel (guidance_loss: no R x h x w coverage
tensor is ever built).

Row r has B boxes (y0, x0, y1, x1) in image pixels (R x B x 4, contiguous), each clipped to
[0, image_h] x [0, image_w]. The edges {0, extent, every clipped box edge} of an axis cut it into
elementary bands: band a runs from edge a to the next edge in the order (value, index), so each
gap between consecutive sorted edges is one band and a repeated edge makes an empty one (no sort
needed). A rectangle of a y band and an x band lies inside the union of the boxes iff its centre
does (y0 <= cy < y1 and x0 <= cx < x1 for some box); cell (i, j) spans [i ch, (i + 1) ch) x
[j cw, (j + 1) cw) and its coverage is the area of the covered rectangles inside it over ch cw,
as attnfast.reference.box_coverage (docs/SPEC.md decision 20).
Cost per chunk of cells: O(B^3) for the covered matrix of the (2B + 2)^2 rectangles, O(B^2 w)
for its product with the column shares, then O(B) per cell (B is small).
"""
import triton
import triton.language as tl


@triton.jit
def _clip(v, extent):
    """v clipped to [0, extent] (v finite)."""
    return tl.minimum(tl.maximum(v, 0.0), extent)


@triton.jit
def _axis_edges(box_ptr, r, B, extent, LOW: tl.constexpr, BLOCK_E: tl.constexpr):
    """(edges, valid) of one axis of row r: 0, extent, then each box's low and high edge
    (columns LOW and LOW + 2 of a box: 0 for y, 1 for x), clipped; BLOCK_E >= 2B + 2."""
    e = tl.arange(0, BLOCK_E)
    valid = e < 2 * B + 2
    is_box = valid & (e >= 2)
    b = tl.where(is_box, e - 2, 0) // 2
    col = LOW + 2 * (tl.where(is_box, e - 2, 0) % 2)
    v = tl.load(box_ptr + (r * B + b) * 4 + col, mask=is_box, other=0.0)
    return tl.where(e == 1, extent, _clip(v, extent)), valid


@triton.jit
def _bands(edges, valid):
    """(lo, hi) of every band: lo = the edge, hi = the next edge in the order (value, index),
    lo when there is none: the last band and the padding past 2B + 2 edges are empty."""
    idx = tl.arange(0, edges.shape[0])
    after = valid[None, :] & ((edges[None, :] > edges[:, None]) |
                              ((edges[None, :] == edges[:, None]) & (idx[None, :] > idx[:, None])))
    hi = tl.min(tl.where(after, edges[None, :], float("inf")), axis=1)
    return edges, tl.where(valid & (hi != float("inf")), hi, edges)


@triton.jit
def _cell_share(lo, hi, cell, step):
    """Length of [lo, hi) inside cells [cell * step, (cell + 1) * step), over step."""
    top = tl.minimum(hi, (cell + 1.0) * step)
    bottom = tl.maximum(lo, cell * step)
    return tl.maximum(top - bottom, 0.0) / step


@triton.jit
def _pick(x, idx, a, AXIS: tl.constexpr):
    """Row (AXIS 0) or column (AXIS 1) a of a matrix, or entry a of a vector (AXIS 0)."""
    if len(x.shape) == 1:
        v = tl.sum(tl.where(idx == a, x, 0.0), axis=0)
    elif AXIS == 0:
        v = tl.sum(tl.where(idx[:, None] == a, x, 0.0), axis=0)
    else:
        v = tl.sum(tl.where(idx[None, :] == a, x, 0.0), axis=1)
    return v


@triton.jit
def box_cover(box_ptr, r, B, p, valid, W, image_h, image_w, ch, cw,
              BLOCK_B: tl.constexpr, BLOCK_W: tl.constexpr):
    """Coverage of row r's boxes at cells p = i * W + j (0 where not valid), separably:
    cov(i, j) = sum_a share_y(a, i) T(a, j), T(a, j) = sum_c covered(a, c) share_x(c, j), the
    shares being the overlaps of band a (c) with cell row i (column j) over the cell size.
    covered (bands x bands) is built by a loop over the boxes, T (bands x columns, BLOCK_W >= W)
    by a loop over the x bands, then a loop over the y bands gathers T at each cell's column.
    Nothing larger than (bands x columns) or one value per cell is held. Edge vectors hold
    4 BLOCK_B >= 2B + 2 entries."""
    BLOCK_E: tl.constexpr = 4 * BLOCK_B
    idx = tl.arange(0, BLOCK_E)
    ys, y_valid = _axis_edges(box_ptr, r, B, image_h, 0, BLOCK_E)
    xs, x_valid = _axis_edges(box_ptr, r, B, image_w, 1, BLOCK_E)
    ylo, yhi = _bands(ys, y_valid)
    xlo, xhi = _bands(xs, x_valid)
    cy = 0.5 * (ylo + yhi)
    cx = 0.5 * (xlo + xhi)
    covered = tl.zeros([BLOCK_E, BLOCK_E], tl.float32)
    for b in range(B):
        base = box_ptr + (r * B + b) * 4
        y0 = _clip(tl.load(base), image_h)
        x0 = _clip(tl.load(base + 1), image_w)
        y1 = _clip(tl.load(base + 2), image_h)
        x1 = _clip(tl.load(base + 3), image_w)
        in_y = (y0 <= cy) & (cy < y1)
        in_x = (x0 <= cx) & (cx < x1)
        covered = tl.where(in_y[:, None] & in_x[None, :], 1.0, covered)
    col = tl.arange(0, BLOCK_W).to(tl.float32)
    t = tl.zeros([BLOCK_E, BLOCK_W], tl.float32)                                # (a, column)
    for c in range(2 * B + 2):
        share_x = _cell_share(_pick(xlo, idx, c, 0), _pick(xhi, idx, c, 0), col, cw)
        t += _pick(covered, idx, c, 1)[:, None] * share_x[None, :]
    j = tl.where(valid, p % W, 0)
    i = (p // W).to(tl.float32)
    acc = tl.zeros(p.shape, tl.float32)
    for a in range(2 * B + 2):
        share_y = _cell_share(_pick(ylo, idx, a, 0), _pick(yhi, idx, a, 0), i, ch)
        acc += share_y * tl.gather(_pick(t, idx, a, 0), j, 0)
    return tl.where(valid, acc, 0.0)


def cover_blocks(n_boxes, width):
    """(BLOCK_B, BLOCK_W) of box_cover for rows of ``n_boxes`` boxes on maps ``width`` wide."""
    return triton.next_power_of_2(max(n_boxes, 1)), triton.next_power_of_2(width)
