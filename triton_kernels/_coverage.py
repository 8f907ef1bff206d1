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
Cost per cell: (2B + 2)^2 rectangles, each a test over the B boxes (B is small).
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
def _band(edges, valid, a):
    """(lo, hi) of band a: lo = edges[a], hi = the next edge in the order (value, index), lo if
    there is none (the last band is empty)."""
    idx = tl.arange(0, edges.shape[0])
    lo = tl.sum(tl.where(idx == a, edges, 0.0), axis=0)
    after = valid & ((edges > lo) | ((edges == lo) & (idx > a)))
    hi = tl.min(tl.where(after, edges, float("inf")), axis=0)
    return lo, tl.where(hi == float("inf"), lo, hi)


@triton.jit
def _cell_share(lo, hi, cell, step):
    """Length of [lo, hi) inside cells [cell * step, (cell + 1) * step), over step."""
    top = tl.minimum(hi, (cell + 1.0) * step)
    bottom = tl.maximum(lo, cell * step)
    return tl.maximum(top - bottom, 0.0) / step


@triton.jit
def box_cover(box_ptr, r, B, p, valid, W, image_h, image_w, ch, cw,
              BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr):
    """Coverage of row r's boxes at cells p = i * W + j (0 where not valid): the sum over the
    covered elementary rectangles of their overlap with each cell, over ch cw."""
    i = (p // W).to(tl.float32)
    j = (p % W).to(tl.float32)
    ys, y_valid = _axis_edges(box_ptr, r, B, image_h, 0, BLOCK_E)
    xs, x_valid = _axis_edges(box_ptr, r, B, image_w, 1, BLOCK_E)
    b = tl.arange(0, BLOCK_B)
    bmask = b < B
    base = box_ptr + (r * B + b) * 4
    y0 = _clip(tl.load(base, mask=bmask, other=0.0), image_h)
    x0 = _clip(tl.load(base + 1, mask=bmask, other=0.0), image_w)
    y1 = _clip(tl.load(base + 2, mask=bmask, other=0.0), image_h)
    x1 = _clip(tl.load(base + 3, mask=bmask, other=0.0), image_w)
    acc = tl.zeros(p.shape, tl.float32)
    for a in range(2 * B + 2):
        ylo, yhi = _band(ys, y_valid, a)
        cy = 0.5 * (ylo + yhi)
        in_y = bmask & (y0 <= cy) & (cy < y1)
        share_y = _cell_share(ylo, yhi, i, ch)
        for c in range(2 * B + 2):
            xlo, xhi = _band(xs, x_valid, c)
            cx = 0.5 * (xlo + xhi)
            hit = tl.max(tl.where(in_y & (x0 <= cx) & (cx < x1), 1.0, 0.0), axis=0)
            acc += hit * share_y * _cell_share(xlo, xhi, j, cw)
    return tl.where(valid, acc, 0.0)


def cover_blocks(n_boxes):
    """(BLOCK_B, BLOCK_E) of box_cover for rows of ``n_boxes`` boxes."""
    return triton.next_power_of_2(max(n_boxes, 1)), triton.next_power_of_2(2 * n_boxes + 2)
