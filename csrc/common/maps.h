// Per-sample map math of Sharpen Focus, framework-free (CPU and CUDA): one map is P = h * w
// values in the accumulation type T (float, or double for float64 inputs), row-major.
//
//   normalize      u = a / d,  d = max(max_p a_p, 0) + eps            (docs/SPEC.md decisions 7, 12)
//   resize         bilinear, align_corners=False, as torch.nn.functional.interpolate
//   soft mask      M = sigmoid(omega (R(normalize(a)) - sigma))        (Eq. 7)
//   soft-IoU       v = 2 sum_p min(a,b) M / (sum_p (a + b) + eps)      (Eq. 6)
//   consistency    v = alpha - sum_p a M / (sum_p a + eps)             (Eq. 8)
//
// Every `*_backward_add` ADDS the gradient of its inputs into the given buffers (callers zero
// them), so contributions of several terms compose. Subgradients (docs/SPEC.md decision 6): ties of
// min(a, b) split 1/2 - 1/2; ties at the max split evenly; the clamp of the max at 0 passes the
// gradient where max >= 0.
#pragma once

#include "common/defs.h"

namespace attnfast {

template <class T> ATTNFAST_HD inline void fill(T* x, int64_t n, T v) {
  for (int64_t i = 0; i < n; ++i) x[i] = v;
}

// max_p a_p (the first value for P = 1; 0 for P = 0); NaN when any a_p is (torch.amax).
template <class T> ATTNFAST_HD inline T map_max(const T* a, int64_t P) {
  T m = P > 0 ? a[0] : T(0);
  for (int64_t p = 1; p < P; ++p) m = nan_max(a[p], m);
  return m;
}

// d = max(max_p a_p, 0) + eps
template <class T> ATTNFAST_HD inline T norm_denominator(const T* a, int64_t P, T eps) {
  return relu(map_max(a, P)) + eps;
}

template <class T> ATTNFAST_HD inline void normalize(const T* a, int64_t P, T eps, T* out) {
  const T d = norm_denominator(a, P, eps);
  for (int64_t p = 0; p < P; ++p) out[p] = a[p] / d;
}

// u_p = a_p / d: da_p += g_p / d - [p at the max] (sum_q g_q a_q) / (c d^2) with c the number of
// pixels tied at the max m, when m >= 0 (else d = eps is a constant). For a tied pixel this is
// evaluated as (g_p eps + m (g_p - mean_tied g) - (sum_{q not tied} g_q a_q) / c) / d^2, which
// equals it exactly (d - m = eps) without the cancellation of g_p / d against m g_p / d^2.
template <class T>
ATTNFAST_HD inline void normalize_backward_add(const T* g, const T* a, int64_t P, T eps, T* da) {
  const T m = map_max(a, P);
  if (m != m) {  // a NaN max: d is NaN, so is every gradient (as autograd of the reference)
    for (int64_t p = 0; p < P; ++p) da[p] += m;
    return;
  }
  if (!(m >= T(0))) {
    for (int64_t p = 0; p < P; ++p) da[p] += g[p] / eps;
    return;
  }
  const T d = m + eps;
  T g_tied = T(0), rest = T(0);
  int64_t ties = 0;
  for (int64_t p = 0; p < P; ++p) {
    if (a[p] == m) {
      g_tied += g[p];
      ++ties;
    } else {
      rest += g[p] * a[p];
    }
  }
  const T g_mean = g_tied / T(ties), r_mean = rest / T(ties), d2 = d * d;
  const T spread = (rest + m * g_tied) / d2;  // d L / d(max): NaN for an Inf in the map, and
  if (spread != spread) {                     // autograd's amax backward spreads it (NaN * 0)
    for (int64_t p = 0; p < P; ++p) da[p] += spread;
    return;
  }
  for (int64_t p = 0; p < P; ++p)
    da[p] += a[p] == m ? (g[p] * eps + m * (g[p] - g_mean) - r_mean) / d2 : g[p] / d;
}

// One output coordinate of a 1-D linear resize (align_corners=False, no scale factor), exactly
// PyTorch's rule: src = max(in/out * (i + 0.5) - 0.5, 0), i0 = min(floor(src), in-1),
// i1 = i0 + (i0 < in-1), l1 = clamp(src - i0, 0, 1), l0 = 1 - l1; identity when in == out.
template <class T> struct Lerp {
  int64_t i0, i1;
  T l0, l1;
};

template <class T> ATTNFAST_HD inline Lerp<T> lerp_at(int64_t i, int64_t in, int64_t out) {
  if (in == out) return {i, i, T(1), T(0)};
  using std::floor;
  T src = T(in) / T(out) * (T(i) + T(0.5)) - T(0.5);
  src = src < T(0) ? T(0) : src;
  int64_t i0 = static_cast<int64_t>(floor(src));
  i0 = i0 < in - 1 ? i0 : in - 1;
  T l1 = src - T(i0);
  l1 = l1 < T(0) ? T(0) : (l1 > T(1) ? T(1) : l1);
  return {i0, i0 + (i0 < in - 1 ? 1 : 0), T(1) - l1, l1};
}

// out (oh x ow) = bilinear resize of x (h x w).
template <class T>
ATTNFAST_HD inline void resize(const T* x, int64_t h, int64_t w, T* out, int64_t oh, int64_t ow) {
  for (int64_t i = 0; i < oh; ++i) {
    const Lerp<T> y = lerp_at<T>(i, h, oh);
    const T* r0 = x + y.i0 * w;
    const T* r1 = x + y.i1 * w;
    for (int64_t j = 0; j < ow; ++j) {
      const Lerp<T> c = lerp_at<T>(j, w, ow);
      out[i * ow + j] = y.l0 * (c.l0 * r0[c.i0] + c.l1 * r0[c.i1]) +
                        y.l1 * (c.l0 * r1[c.i0] + c.l1 * r1[c.i1]);
    }
  }
}

// Adjoint of `resize`: dx (h x w) += R^T g (g is oh x ow).
template <class T>
ATTNFAST_HD inline void resize_backward_add(const T* g, int64_t oh, int64_t ow, T* dx, int64_t h,
                                            int64_t w) {
  for (int64_t i = 0; i < oh; ++i) {
    const Lerp<T> y = lerp_at<T>(i, h, oh);
    for (int64_t j = 0; j < ow; ++j) {
      const Lerp<T> c = lerp_at<T>(j, w, ow);
      const T v = g[i * ow + j];
      dx[y.i0 * w + c.i0] += y.l0 * c.l0 * v;
      dx[y.i0 * w + c.i1] += y.l0 * c.l1 * v;
      dx[y.i1 * w + c.i0] += y.l1 * c.l0 * v;
      dx[y.i1 * w + c.i1] += y.l1 * c.l1 * v;
    }
  }
}

// M (oh x ow) = sigmoid(omega (R(normalize(a)) - sigma)), a is h x w; u: h*w scratch.
template <class T>
ATTNFAST_HD inline void soft_mask(const T* a, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                  T sigma, T omega, T eps, T* u, T* out) {
  normalize(a, h * w, eps, u);
  resize(u, h, w, out, oh, ow);
  for (int64_t q = 0; q < oh * ow; ++q) out[q] = sigmoid(omega * (out[q] - sigma));
}

// Scratch elements `soft_mask_backward_add` needs.
ATTNFAST_HD inline int64_t soft_mask_scratch(int64_t h, int64_t w, int64_t oh, int64_t ow) {
  return 2 * h * w + oh * ow;
}

// da += d soft_mask / da applied to g (oh x ow): dz = g omega M (1 - M), du = R^T dz, then the
// normalize backward.
template <class T>
ATTNFAST_HD inline void soft_mask_backward_add(const T* g, const T* a, int64_t h, int64_t w,
                                               int64_t oh, int64_t ow, T sigma, T omega, T eps,
                                               T* scratch, T* da) {
  T* u = scratch;
  T* du = u + h * w;
  T* m = du + h * w;
  soft_mask(a, h, w, oh, ow, sigma, omega, eps, u, m);
  for (int64_t q = 0; q < oh * ow; ++q) m[q] = g[q] * omega * m[q] * (T(1) - m[q]);
  fill(du, h * w, T(0));
  resize_backward_add(m, oh, ow, du, h, w);
  normalize_backward_add(du, a, h * w, eps, da);
}

// d min(a, b) / da: 1 if a < b, 1/2 on a tie, 0 if a > b; 1 when either is NaN (neither
// comparison holds), as the autograd of torch.minimum.
template <class T> ATTNFAST_HD inline T min_grad(T a, T b) {
  return a == b ? T(0.5) : (a > b ? T(0) : T(1));
}

// Soft-IoU; `m` may be null (M = 1).
template <class T>
ATTNFAST_HD inline T soft_iou(const T* a, const T* b, const T* m, int64_t P, T eps) {
  T inter = T(0), total = T(0);
  for (int64_t p = 0; p < P; ++p) {
    const T mn = nan_min(a[p], b[p]);
    inter += m ? mn * m[p] : mn;
    total += a[p] + b[p];
  }
  return T(2) * inter / (total + eps);
}

// v = 2 I / S: da_p += g (2/S M_p dmin/da_p - 2 I / S^2), same for b, dm_p += g 2/S min(a,b).
// `m` null means M = 1; `dm` may be null (no mask gradient wanted).
template <class T>
ATTNFAST_HD inline void soft_iou_backward_add(T g, const T* a, const T* b, const T* m, int64_t P,
                                              T eps, T* da, T* db, T* dm) {
  T inter = T(0), total = T(0);
  for (int64_t p = 0; p < P; ++p) {
    const T mn = nan_min(a[p], b[p]);
    inter += m ? mn * m[p] : mn;
    total += a[p] + b[p];
  }
  const T s = total + eps, gi = T(2) * g / s, gs = -T(2) * g * inter / (s * s);
  for (int64_t p = 0; p < P; ++p) {
    const T mp = m ? m[p] : T(1);
    da[p] += gi * mp * min_grad(a[p], b[p]) + gs;
    db[p] += gi * mp * min_grad(b[p], a[p]) + gs;
    if (dm) dm[p] += gi * nan_min(a[p], b[p]);
  }
}

template <class T>
ATTNFAST_HD inline T consistency(const T* a, const T* m, int64_t P, T alpha, T eps) {
  T num = T(0), den = T(0);
  for (int64_t p = 0; p < P; ++p) {
    num += a[p] * m[p];
    den += a[p];
  }
  return alpha - num / (den + eps);
}

// v = alpha - N / S: da_p += g (N / S^2 - m_p / S), dm_p += -g a_p / S; `dm` may be null.
template <class T>
ATTNFAST_HD inline void consistency_backward_add(T g, const T* a, const T* m, int64_t P, T eps,
                                                 T* da, T* dm) {
  T num = T(0), den = T(0);
  for (int64_t p = 0; p < P; ++p) {
    num += a[p] * m[p];
    den += a[p];
  }
  const T s = den + eps, gs = g * num / (s * s), gm = -g / s;
  for (int64_t p = 0; p < P; ++p) {
    da[p] += gm * m[p] + gs;
    if (dm) dm[p] += gm * a[p];
  }
}

}  // namespace attnfast
