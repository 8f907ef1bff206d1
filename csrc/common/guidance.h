// Guidance from boxes (Rao et al., ICCV 2023): the per-row math of guidance_loss, framework-free
// (CPU and CUDA). A row is one (image, class); its map A has P = h * w values in the accumulation
// type T; cov is the share of each layer cell inside the union of the row's boxes.
//
//   coverage  cell (i, j) spans [i ch, (i+1) ch) x [j cw, (j+1) cw), ch = H_img / h, cw = W_img / w;
//             cov = area of the cell inside the union of the boxes (clipped to the image) / (ch cw)
//             (docs/SPEC.md decision 20)
//   A+ = max(A, 0),  Â = A+ / (max(max A+, 0) + eps)
//   energy    1 - sum(A+ cov) / sum(A+), 1 when sum(A+) < eps     (decision 21)
//   l1        mean |Â - cov|                                      (d|x| = sign x, 0 at 0)
//   ppce      -sum(cov log(Â + eps)) / sum(cov), 0 when sum(cov) = 0
//   rrr       sum((1 - cov) A^2)
#pragma once

#include "common/maps.h"

namespace attnfast {

// The `loss` argument of guidance_loss (attnfast/_schema.py LOSS_CODES).
enum GuidanceLoss : int64_t { kEnergy = 0, kL1 = 1, kPpce = 2, kRrr = 3 };

// The non-tensor arguments of guidance_loss, in T.
template <class T> struct GuidanceOptions {
  int64_t kind, loss;
  T image_h, image_w, eps;
};

// ---------------------------------------------------------------- box coverage
// The union of B boxes cut along all their edges: ys, xs (n = 2B + 2 sorted edges each, the image
// borders included) bound elementary rectangles (ys[a], ys[a+1]) x (xs[c], xs[c+1]), and
// in[a * (n-1) + c] is 1 when that rectangle lies inside the union (its centre is in some box).
ATTNFAST_HD inline int64_t box_grid_size(int64_t B) { return 2 * (2 * B + 2) + (2 * B + 1) * (2 * B + 1); }

template <class T> ATTNFAST_HD inline T clip(T v, T hi) { return v < T(0) ? T(0) : (v > hi ? hi : v); }

template <class T> ATTNFAST_HD inline void sort_small(T* x, int64_t n) {
  for (int64_t i = 1; i < n; ++i) {
    const T v = x[i];
    int64_t j = i - 1;
    for (; j >= 0 && x[j] > v; --j) x[j + 1] = x[j];
    x[j + 1] = v;
  }
}

// Fills grid (box_grid_size(B) elements) from boxes (B x 4: y0, x0, y1, x1, image pixels).
template <class T>
ATTNFAST_HD inline void box_grid(const T* boxes, int64_t B, T img_h, T img_w, T* grid) {
  const int64_t n = 2 * B + 2;
  T *ys = grid, *xs = grid + n, *in = grid + 2 * n;
  ys[0] = T(0), ys[1] = img_h, xs[0] = T(0), xs[1] = img_w;
  for (int64_t b = 0; b < B; ++b) {
    ys[2 + 2 * b] = clip(boxes[4 * b], img_h), ys[3 + 2 * b] = clip(boxes[4 * b + 2], img_h);
    xs[2 + 2 * b] = clip(boxes[4 * b + 1], img_w), xs[3 + 2 * b] = clip(boxes[4 * b + 3], img_w);
  }
  sort_small(ys, n);
  sort_small(xs, n);
  for (int64_t a = 0; a + 1 < n; ++a) {
    const T cy = (ys[a] + ys[a + 1]) / T(2);
    for (int64_t c = 0; c + 1 < n; ++c) {
      const T cx = (xs[c] + xs[c + 1]) / T(2);
      T hit = T(0);
      for (int64_t b = 0; b < B && hit == T(0); ++b) {
        const T y0 = clip(boxes[4 * b], img_h), x0 = clip(boxes[4 * b + 1], img_w);
        const T y1 = clip(boxes[4 * b + 2], img_h), x1 = clip(boxes[4 * b + 3], img_w);
        if (y0 <= cy && cy < y1 && x0 <= cx && cx < x1) hit = T(1);
      }
      in[a * (n - 1) + c] = hit;
    }
  }
}

// |[lo, hi) ∩ [a, b)| / (b - a): the share of the cell [a, b) that [lo, hi) covers.
template <class T> ATTNFAST_HD inline T cell_share(T lo, T hi, T a, T b) {
  const T top = hi < b ? hi : b, bottom = lo > a ? lo : a;
  return top > bottom ? (top - bottom) / (b - a) : T(0);
}

// cov of cell (i, j) of an h x w layer, from a grid of B boxes.
template <class T>
ATTNFAST_HD inline T cell_coverage(const T* grid, int64_t B, T img_h, T img_w, int64_t h,
                                   int64_t w, int64_t i, int64_t j) {
  const int64_t n = 2 * B + 2;
  const T *ys = grid, *xs = grid + n, *in = grid + 2 * n;
  const T ch = img_h / T(h), cw = img_w / T(w);
  const T y_lo = T(i) * ch, y_hi = T(i + 1) * ch, x_lo = T(j) * cw, x_hi = T(j + 1) * cw;
  T cov = T(0);
  for (int64_t a = 0; a + 1 < n; ++a) {
    const T sy = cell_share(ys[a], ys[a + 1], y_lo, y_hi);
    if (sy == T(0)) continue;
    T row = T(0);
    for (int64_t c = 0; c + 1 < n; ++c)
      if (in[a * (n - 1) + c] != T(0)) row += cell_share(xs[c], xs[c + 1], x_lo, x_hi);
    cov += sy * row;
  }
  return cov;
}

// cov (h x w) of one row; grid: box_grid_size(B) scratch.
template <class T>
ATTNFAST_HD inline void box_coverage(const T* boxes, int64_t B, T img_h, T img_w, int64_t h,
                                     int64_t w, T* grid, T* cov) {
  box_grid(boxes, B, img_h, img_w, grid);
  for (int64_t i = 0; i < h; ++i)
    for (int64_t j = 0; j < w; ++j) cov[i * w + j] = cell_coverage(grid, B, img_h, img_w, h, w, i, j);
}

// ---------------------------------------------------------------- the losses
// The pieces below are the per-pixel terms and per-row finishes of the four losses; the serial
// guidance_value / guidance_backward and the block-parallel CUDA kernels are built from them.

// sign(x): 1, -1, or 0 at 0 and NaN (as torch.sgn, the derivative torch gives |x|).
template <class T> ATTNFAST_HD inline T sign(T x) { return T(x > T(0)) - T(x < T(0)); }

// rrr: the term (1 - cov) a^2 of pixel p, and its derivative times g.
template <class T> ATTNFAST_HD inline T rrr_term(T a, T cov) { return (T(1) - cov) * a * a; }
template <class T> ATTNFAST_HD inline T rrr_grad(T g, T a, T cov) { return T(2) * g * (T(1) - cov) * a; }

// t_p: the weight of cell p in the energy's total sum A+ t: 1, or given (the bilinear option,
// decision 24: the cell's share of the map upsampled to the image; t null means 1).
template <class T> ATTNFAST_HD inline T cell_weight(const T* t, int64_t p) { return t ? t[p] : T(1); }

// energy from s = sum A+ t and inside = sum A+ cov: 1 when s < eps (a NaN s is not: NaN).
template <class T> ATTNFAST_HD inline T energy_value(T s, T inside, T eps) {
  return s < eps ? T(1) : T(1) - inside / s;
}
// g dL/dA+_p = gi cov_p + gs t_p (0 when s < eps).
template <class T> struct EnergyGrad {
  T gi, gs;
};
template <class T> ATTNFAST_HD inline EnergyGrad<T> energy_grad(T g, T s, T inside, T eps) {
  const bool low = s < eps;
  return {low ? T(0) : -g / s, low ? T(0) : g * inside / (s * s)};
}

// l1 / ppce (losses of the normalized map u = Â): the term of pixel p, the row's value from the
// term sum s and c = sum cov, and g dL/du_p.
template <class T> ATTNFAST_HD inline T norm_loss_term(int64_t loss, T u, T cov, T eps) {
  using std::log;
  if (loss == kL1) {
    const T d = u - cov;
    return d < T(0) ? -d : d;
  }
  return cov * log(u + eps);
}
template <class T> ATTNFAST_HD inline T norm_loss_value(int64_t loss, T s, T c, int64_t P) {
  return loss == kL1 ? s / T(P) : (c > T(0) ? -s / c : T(0));
}
template <class T>
ATTNFAST_HD inline T norm_loss_grad(int64_t loss, T g, T u, T cov, T c, int64_t P, T eps) {
  if (loss == kL1) return g * sign(u - cov) / T(P);
  return c > T(0) ? -g / c * cov / (u + eps) : T(0);
}

// normalize_backward_add (common/maps.h) pixel by pixel, for block-parallel callers: da_p of
// u = a / (max(m, 0) + eps) given m = max_q a_q and the sums over the pixels g_tied = sum of g_q
// over the pixels tied at the max, ties = their number, rest = sum of g_q a_q over the others
// (the cancellation-free form at the tied pixels, NaN rules included).
template <class T>
ATTNFAST_HD inline T normalize_grad_at(T g, T a, T m, T eps, T g_tied, T ties, T rest) {
  if (m != m) return m;
  if (!(m >= T(0))) return g / eps;
  const T d = m + eps, d2 = d * d;
  const T spread = (rest + m * g_tied) / d2;
  if (spread != spread) return spread;
  return a == m ? (g * eps + m * (g - g_tied / ties) - rest / ties) / d2 : g / d;
}

// The loss of one row; ap: P scratch (A+, then Â for l1/ppce).
template <class T>
ATTNFAST_HD inline T guidance_value(const T* a, const T* cov, const T* t, int64_t P, int64_t loss,
                                    T eps, T* ap) {
  if (loss == kRrr) {
    T s = T(0);
    for (int64_t p = 0; p < P; ++p) s += rrr_term(a[p], cov[p]);
    return s;
  }
  for (int64_t p = 0; p < P; ++p) ap[p] = relu(a[p]);
  if (loss == kEnergy) {
    T s = T(0), inside = T(0);
    for (int64_t p = 0; p < P; ++p) s += ap[p] * cell_weight(t, p), inside += ap[p] * cov[p];
    return energy_value(s, inside, eps);
  }
  normalize(ap, P, eps, ap);
  T s = T(0), c = T(0);
  for (int64_t p = 0; p < P; ++p) s += norm_loss_term(loss, ap[p], cov[p], eps), c += cov[p];
  return norm_loss_value(loss, s, c, P);
}

// Scratch elements guidance_backward needs.
ATTNFAST_HD inline int64_t guidance_scratch(int64_t P) { return 2 * P; }

// da = g dL/dA of one row (written, not added); scratch: guidance_scratch(P).
template <class T>
ATTNFAST_HD inline void guidance_backward(T g, const T* a, const T* cov, const T* t, int64_t P,
                                          int64_t loss, T eps, T* scratch, T* da) {
  if (loss == kRrr) {
    for (int64_t p = 0; p < P; ++p) da[p] = rrr_grad(g, a[p], cov[p]);
    return;
  }
  T *ap = scratch, *dn = scratch + P;
  for (int64_t p = 0; p < P; ++p) ap[p] = relu(a[p]);
  if (loss == kEnergy) {
    T s = T(0), inside = T(0);
    for (int64_t p = 0; p < P; ++p) s += ap[p] * cell_weight(t, p), inside += ap[p] * cov[p];
    const EnergyGrad<T> e = energy_grad(g, s, inside, eps);
    for (int64_t p = 0; p < P; ++p)
      da[p] = relu_backward(e.gi * cov[p] + e.gs * cell_weight(t, p), a[p]);
    return;
  }
  const T d = norm_denominator(ap, P, eps);
  T c = T(0);
  for (int64_t p = 0; p < P; ++p) c += cov[p];
  for (int64_t p = 0; p < P; ++p) dn[p] = norm_loss_grad(loss, g, ap[p] / d, cov[p], c, P, eps);
  fill(da, P, T(0));
  normalize_backward_add(dn, ap, P, eps, da);
  for (int64_t p = 0; p < P; ++p) da[p] = relu_backward(da[p], a[p]);
}

}  // namespace attnfast
