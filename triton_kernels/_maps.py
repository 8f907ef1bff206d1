"""Device helpers of the per-sample map programs (normalize, soft mask, soft-IoU, consistency,
the fused loss's map math, GGAM's per-sample parts).

A map is N x H x W float32, contiguous; one program owns one sample n and makes a few passes
over it. A map of at most ``_common.MAP_TILE`` pixels is one register tile (``ONE_TILE``):
loaded once, before the passes, by ``map_tile``; a larger one is walked in chunks of BLOCK
pixels, once per pass. Each pass asks ``map_chunk`` for its chunk, which returns the cached tile
or loads the chunk now, so a kernel reads the same whatever the map's size.
Subgradients follow attnfast.reference: ties at a map's max share its gradient evenly
(torch.amax), ties of min(a, b) split it 1/2-1/2, the clamp of the max at 0 passes the gradient
where max >= 0. NaN follows eager PyTorch (docs/SPEC.md decision 15): a map's max is NaN when any
pixel is (``chunk_max``, ``nan_max``), min(a, b) is NaN when either is (``nan_min``); written with
comparisons because tl.max / tl.maximum / tl.minimum may drop a NaN.
"""
import numpy as np
import triton
import triton.language as tl


@triton.jit
def map_tile(LOAD: tl.constexpr, src, offs, ONE_TILE: tl.constexpr,
             OPT1: tl.constexpr = False, OPT2: tl.constexpr = False):
    """The whole map as one register tile, ``LOAD(src, 0, offs, OPT1, OPT2)``, when ONE_TILE;
    else 0 (a placeholder that ``map_chunk`` never reads)."""
    if ONE_TILE:
        tile = LOAD(src, 0, offs, OPT1, OPT2)
    else:
        tile = 0
    return tile


@triton.jit
def map_chunk(tile, LOAD: tl.constexpr, src, start, offs, ONE_TILE: tl.constexpr,
              OPT1: tl.constexpr = False, OPT2: tl.constexpr = False):
    """The values of a pass at pixels start + offs: the cached ``tile`` (from ``map_tile``) when
    the map is ONE_TILE, else loaded now by ``LOAD(src, start, offs, OPT1, OPT2)``.

    A loader is a jit function (src, start, offs, OPT1, OPT2) -> tuple of values at those pixels
    (maps, their validity, anything derived from them); ``src`` is a tuple of the runtime values
    it needs, OPT1 and OPT2 its compile-time options (a tuple cannot carry constexprs).
    Passing a jit function to a jit function needs Triton >= 3.3 (triton-lang/triton#5723).
    """
    if ONE_TILE:
        values = tile
    else:
        values = LOAD(src, start, offs, OPT1, OPT2)
    return values


@triton.jit
def load_map(ptr, n, start, offs, HW):
    """(x, valid): pixels start + offs of map n of an N x HW float32 map, 0 past HW."""
    p = start + offs
    valid = p < HW
    x = tl.load(ptr + n * HW + p, mask=valid, other=0.0).to(tl.float32)
    return x, valid


@triton.jit
def map_values(src, start, offs, OPT1: tl.constexpr, OPT2: tl.constexpr):
    """Loader (see map_chunk) of one map, src = (ptr, n, HW): (x, valid)."""
    ptr, n, HW = src
    return load_map(ptr, n, start, offs, HW)


@triton.jit
def map_max(tile, src, offs, BLOCK: tl.constexpr, ONE_TILE: tl.constexpr):
    """(max, number of pixels at the max) of the map src = (ptr, n, HW), one pass;
    ``tile``: ``map_tile(map_values, src, offs, ONE_TILE)``."""
    HW = src[2]
    mx = -float("inf")
    cnt = 0.0
    for start in range(0, HW, BLOCK):
        x, valid = map_chunk(tile, map_values, src, start, offs, ONE_TILE)
        mx, cnt = max_count(x, valid, mx, cnt)
    return mx, cnt


@triton.jit
def nan_max(a, b):
    """max(a, b), NaN when a or b is (torch.maximum)."""
    return tl.where((a > b) | (a != a), a, b)


@triton.jit
def nan_min(a, b):
    """min(a, b), NaN when a or b is (torch.minimum)."""
    return tl.where((a < b) | (a != a), a, b)


@triton.jit
def chunk_max(x, valid):
    """Max of the valid x of a chunk (-inf when none); NaN when any of them is NaN."""
    cmx = tl.max(tl.where(valid, x, -float("inf")), axis=0)
    return cmx + tl.sum(tl.where(valid & (x != x), x, 0.0), axis=0)  # + NaN, or + 0


@triton.jit
def max_count(x, valid, mx, cnt):
    """Fold a chunk into the running (max, number of pixels at the max) of a map."""
    cmx = chunk_max(x, valid)
    ccnt = tl.sum(tl.where(valid & (x == cmx), 1.0, 0.0), axis=0)
    cnt = tl.where(cmx > mx, ccnt, tl.where(cmx == mx, cnt + ccnt, cnt))
    return nan_max(cmx, mx), cnt


@triton.jit
def norm_den(mx, eps):
    """max(mx, 0) + eps: the divisor of normalize_attention (mx = the map's max; NaN stays)."""
    return tl.where(mx < 0, 0.0, mx) + eps


@triton.jit
def tie_sums(g, x, valid, mx):
    """(sum of g over the pixels at mx, sum of g x over the other valid pixels) of a chunk."""
    tie = valid & (x == mx)
    return (tl.sum(tl.where(tie, g, 0.0), axis=0),
            tl.sum(tl.where(valid & (x != mx), g * x, 0.0), axis=0))


@triton.jit
def tie_fold(g, x, valid, mx, cnt, g_tied, rest):
    """Fold a chunk into the running (mx, cnt, g_tied, rest) of a map for norm_grad: mx = max,
    cnt = number of pixels at mx, g_tied = sum of g over them, rest = sum of g x over the pixels
    below mx. A larger chunk max moves the old ties into rest (mx g_tied; none while cnt = 0)."""
    cmx = chunk_max(x, valid)
    ccnt = tl.sum(tl.where(valid & (x == cmx), 1.0, 0.0), axis=0)
    cg, crest = tie_sums(g, x, valid, cmx)
    old = tl.where(cnt > 0, mx, 0.0) * g_tied
    new = tl.where(ccnt > 0, cmx, 0.0) * cg
    up = cmx > mx
    eq = cmx == mx
    rest += crest + tl.where(up, old, tl.where(eq, 0.0, new))
    g_tied = tl.where(up, cg, tl.where(eq, g_tied + cg, g_tied))
    cnt = tl.where(up, ccnt, tl.where(eq, cnt + ccnt, cnt))
    return nan_max(cmx, mx), cnt, g_tied, rest


@triton.jit
def norm_grad(g, x, mx, cnt, g_tied, rest, eps):
    """dL/dx of a = x / d, d = max(m, 0) + eps, m = max_p x, from g = dL/da, written without
    cancellation (as csrc/common/maps.h normalize_backward_add): with c = cnt ties at m,
    g_mean = g_tied / c, r_mean = rest / c (rest = sum of g x below m),
      dL/dx = (g eps + m (g - g_mean) - r_mean) / d^2  at x == m >= 0,  g / d  elsewhere
    (= g / d - [x == m] [m >= 0] sum_p g x / (c d^2)); m < 0: d = eps is constant, g / eps.
    When sum_p g x / d^2 is NaN (an Inf in the map) every pixel gets NaN, as autograd's amax
    backward spreads it (NaN * 0)."""
    d = norm_den(mx, eps)
    tied = (g * eps + mx * (g - g_tied / cnt) - rest / cnt) / (d * d)
    r = tl.where(x == mx, tl.where(mx >= 0, tied, g / d), g / d)
    spread = (rest + mx * g_tied) / (d * d)
    return tl.where((mx >= 0) & (spread != spread), spread, r)


@triton.jit
def sigmoid_mask(r, sigma, omega):
    """sigmoid(omega * (r - sigma)) -- Sharpen Focus Eq. 7 on a normalized (resized) map r."""
    return tl.sigmoid(omega * (r - sigma))


@triton.jit
def bilinear_src(dst, in_size, scale):
    """torch's bilinear source of output index dst (align_corners=False): (i0, i1, l0, l1) with
    src = max(scale * (dst + 0.5) - 0.5, 0), scale = in/out, i0 = floor(src),
    i1 = min(i0 + 1, in - 1), l1 = src - i0, l0 = 1 - l1."""
    src = tl.maximum(scale * (dst.to(tl.float32) + 0.5) - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.int32), in_size - 1)
    i1 = tl.minimum(i0 + 1, in_size - 1)
    l1 = src - i0.to(tl.float32)
    return i0, i1, 1.0 - l1, l1


@triton.jit
def mask_at(x_ptr, n, p, valid, den, in_h, in_w, out_w, scale_h, scale_w, sigma, omega,
            RESIZE: tl.constexpr):
    """M[p] = sigmoid(omega * (R(x / den)[p] - sigma)) at pixels p of the (out_h, out_w) grid,
    R = bilinear resize from (in_h, in_w) (identity unless RESIZE); x is map n, gathered."""
    base = x_ptr + n * (in_h * in_w)
    oi = p // out_w
    oj = p % out_w
    if RESIZE:
        i0, i1, a0, a1 = bilinear_src(oi, in_h, scale_h)
        j0, j1, b0, b1 = bilinear_src(oj, in_w, scale_w)
        v00 = tl.load(base + i0 * in_w + j0, mask=valid, other=0.0) / den
        v01 = tl.load(base + i0 * in_w + j1, mask=valid, other=0.0) / den
        v10 = tl.load(base + i1 * in_w + j0, mask=valid, other=0.0) / den
        v11 = tl.load(base + i1 * in_w + j1, mask=valid, other=0.0) / den
        r = a0 * (b0 * v00 + b1 * v01) + a1 * (b0 * v10 + b1 * v11)
    else:
        r = tl.load(base + oi * in_w + oj, mask=valid, other=0.0) / den
    return sigmoid_mask(r, sigma, omega)


@triton.jit
def _adjoint_weight(t, a, in_size, scale):
    """Weight of input index a in the bilinear row of output index t (0 if it does not use a)."""
    i0, i1, l0, l1 = bilinear_src(t, in_size, scale)
    return tl.where(i0 == a, l0, 0.0) + tl.where(i1 == a, l1, 0.0)


@triton.jit
def resize_adjoint(gz_ptr, n, p, valid, in_h, in_w, out_h, out_w, scale_h, scale_w,
                   inv_h, inv_w, taps_h, taps_w):
    """sum_{i,j} W_h[i, a] W_w[j, b] gz[n, i, j] at input pixels p = a * in_w + b: the transpose
    of the bilinear resize, as a gather (deterministic). Output rows that use input row a lie in
    [floor((a - 0.5) * out/in - 0.5) - 1, +taps_h); same for columns."""
    a = p // in_w
    b = p % in_w
    i_first = tl.maximum(tl.floor((a.to(tl.float32) - 0.5) * inv_h - 0.5).to(tl.int32) - 1, 0)
    j_first = tl.maximum(tl.floor((b.to(tl.float32) - 0.5) * inv_w - 0.5).to(tl.int32) - 1, 0)
    base = gz_ptr + n * (out_h * out_w)
    acc = tl.zeros(p.shape, tl.float32)
    for ti in range(taps_h):
        i = i_first + ti
        wh = tl.where(i < out_h, _adjoint_weight(i, a, in_h, scale_h), 0.0)
        for tj in range(taps_w):
            j = j_first + tj
            wgt = wh * tl.where(j < out_w, _adjoint_weight(j, b, in_w, scale_w), 0.0)
            g = tl.load(base + i * out_w + j, mask=valid & (wgt != 0.0), other=0.0)
            acc += wgt * g
    return acc


def resize_args(in_h, in_w, out_h, out_w):
    """Host-side constants of a bilinear resize (in_h, in_w) -> (out_h, out_w):
    scale_h, scale_w = in/out rounded to float32 exactly as torch does, inv_h, inv_w = out/in,
    taps_h, taps_w = bound on the output rows/columns that read one input row/column."""
    pairs = ((in_h, out_h), (in_w, out_w))
    scale = [float(np.float32(i) / np.float32(max(o, 1))) for i, o in pairs]
    inv = [o / max(i, 1) for i, o in pairs]
    taps = [-(-2 * o // max(i, 1)) + 3 for i, o in pairs]
    return (*scale, *inv, *taps)


@triton.jit
def min_share(a, b):
    """d min(a, b) / da as torch.minimum: 1/2 at ties, 0 where a > b, else 1 (also at a NaN)."""
    return tl.where(a == b, 0.5, tl.where(a > b, 0.0, 1.0))


@triton.jit
def iou_grads(a, b, m, inter, den):
    """(d/da, d/db, d/dM) of 2 * inter / den, inter = sum min(a, b) M, den = sum (a + b) + eps."""
    common = 2.0 * inter / (den * den)
    ga = 2.0 * min_share(a, b) * m / den - common
    gb = 2.0 * min_share(b, a) * m / den - common
    return ga, gb, 2.0 * nan_min(a, b) / den


@triton.jit
def consistency_grads(a, m, num, den):
    """(d/da, d/dM) of alpha - num / den, num = sum a M, den = sum a + eps."""
    return num / (den * den) - m / den, -a / den
