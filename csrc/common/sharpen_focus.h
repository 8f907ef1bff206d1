// The map-level math of the fused sharpen_focus_loss for ONE sample, framework-free.
//
// Inputs are the four raw attention maps: target/confuser at the inner layer (hi x wi) and at
// the last layer (hl x wl). With n(x) = normalize(x) when `normalize`, else x:
//   M_i = soft_mask(A_lt, size hi x wi),  M_l = soft_mask(A_lt)        (docs/SPEC.md decisions 1, 4)
//   inner_iou   = soft_iou(n(A_it), n(A_ic), M_i)
//   last_iou    = soft_iou(n(A_lt), n(A_lc), M_l)
//   consistency = alpha - sum n(A_it) M_i / (sum n(A_it) + eps)
// The masks carry a gradient (into A_lt) only when `mask_grad` (decision 2).
#pragma once

#include "common/maps.h"

namespace attnfast {

struct SfShape {
  int64_t hi, wi, hl, wl;
  ATTNFAST_HD int64_t pi() const { return hi * wi; }
  ATTNFAST_HD int64_t pl() const { return hl * wl; }
};

// Scratch elements sf_forward / sf_backward need.
ATTNFAST_HD inline int64_t sf_scratch_size(const SfShape& s) {
  const int64_t pi = s.pi(), pl = s.pl(), mx = pi > pl ? pi : pl;
  return (3 * pi + 4 * pl) + (3 * pi + 3 * pl) + (2 * pl + mx);
}

// The maps the losses see: n(A) and the two masks.
template <class T> struct SfMaps {
  const T *ti, *ci, *tl, *cl;
  T *mi, *ml;
};

// Builds the masks and normalized maps in scratch[0 : 3 pi + 4 pl].
template <class T>
ATTNFAST_HD inline SfMaps<T> sf_prepare(const T* a_ti, const T* a_ci, const T* a_tl, const T* a_cl,
                                        const SfShape& s, const SfOptions<T>& o, T* scratch) {
  const int64_t pi = s.pi(), pl = s.pl();
  T* mi = scratch;
  T* ml = mi + pi;
  T* u = ml + pl;
  T* nrm = u + pl;
  soft_mask(a_tl, s.hl, s.wl, s.hi, s.wi, o.sigma, o.omega, o.eps, u, mi);
  soft_mask(a_tl, s.hl, s.wl, s.hl, s.wl, o.sigma, o.omega, o.eps, u, ml);
  if (!o.normalize) return {a_ti, a_ci, a_tl, a_cl, mi, ml};
  normalize(a_ti, pi, o.eps, nrm);
  normalize(a_ci, pi, o.eps, nrm + pi);
  normalize(a_tl, pl, o.eps, nrm + 2 * pi);
  normalize(a_cl, pl, o.eps, nrm + 2 * pi + pl);
  return {nrm, nrm + pi, nrm + 2 * pi, nrm + 2 * pi + pl, mi, ml};
}

// out = {inner_iou, last_iou, consistency}.
template <class T>
ATTNFAST_HD inline void sf_forward(const T* a_ti, const T* a_ci, const T* a_tl, const T* a_cl,
                                   const SfShape& s, const SfOptions<T>& o, T* scratch, T* out) {
  const SfMaps<T> mp = sf_prepare(a_ti, a_ci, a_tl, a_cl, s, o, scratch);
  out[0] = soft_iou(mp.ti, mp.ci, mp.mi, s.pi(), o.eps);
  out[1] = soft_iou(mp.tl, mp.cl, mp.ml, s.pl(), o.eps);
  out[2] = consistency(mp.ti, mp.mi, s.pi(), o.alpha, o.eps);
}

// dx += d n(x) applied to g: the normalize backward, or identity.
template <class T>
ATTNFAST_HD inline void sf_unnormalize_add(bool normalize, const T* g, const T* a, int64_t P, T eps,
                                           T* da) {
  if (normalize) {
    normalize_backward_add(g, a, P, eps, da);
  } else {
    for (int64_t p = 0; p < P; ++p) da[p] += g[p];
  }
}

// Writes the gradients of the three per-sample values (weighted by g_inner, g_last, g_cons)
// w.r.t. the four raw maps into d_ti, d_ci (pi each), d_tl, d_cl (pl each).
template <class T>
ATTNFAST_HD inline void sf_backward(T g_inner, T g_last, T g_cons, const T* a_ti, const T* a_ci,
                                    const T* a_tl, const T* a_cl, const SfShape& s,
                                    const SfOptions<T>& o, T* scratch, T* d_ti, T* d_ci, T* d_tl,
                                    T* d_cl) {
  const int64_t pi = s.pi(), pl = s.pl();
  const SfMaps<T> mp = sf_prepare(a_ti, a_ci, a_tl, a_cl, s, o, scratch);
  T* dn_ti = scratch + 3 * pi + 4 * pl;  // gradients w.r.t. n(A) and the masks
  T* dn_ci = dn_ti + pi;
  T* dm_i = dn_ci + pi;
  T* dn_tl = dm_i + pi;
  T* dn_cl = dn_tl + pl;
  T* dm_l = dn_cl + pl;
  T* mask_scratch = dm_l + pl;
  fill(dn_ti, 3 * pi + 3 * pl, T(0));
  soft_iou_backward_add(g_inner, mp.ti, mp.ci, mp.mi, pi, o.eps, dn_ti, dn_ci,
                        o.mask_grad ? dm_i : nullptr);
  soft_iou_backward_add(g_last, mp.tl, mp.cl, mp.ml, pl, o.eps, dn_tl, dn_cl,
                        o.mask_grad ? dm_l : nullptr);
  consistency_backward_add(g_cons, mp.ti, mp.mi, pi, o.eps, dn_ti, o.mask_grad ? dm_i : nullptr);
  fill(d_ti, pi, T(0));
  fill(d_ci, pi, T(0));
  fill(d_tl, pl, T(0));
  fill(d_cl, pl, T(0));
  sf_unnormalize_add(o.normalize, dn_ti, a_ti, pi, o.eps, d_ti);
  sf_unnormalize_add(o.normalize, dn_ci, a_ci, pi, o.eps, d_ci);
  sf_unnormalize_add(o.normalize, dn_tl, a_tl, pl, o.eps, d_tl);
  sf_unnormalize_add(o.normalize, dn_cl, a_cl, pl, o.eps, d_cl);
  if (!o.mask_grad) return;
  soft_mask_backward_add(dm_i, a_tl, s.hl, s.wl, s.hi, s.wi, o.sigma, o.omega, o.eps,
                         mask_scratch, d_tl);
  soft_mask_backward_add(dm_l, a_tl, s.hl, s.wl, s.hl, s.wl, o.sigma, o.omega, o.eps,
                         mask_scratch, d_tl);
}

}  // namespace attnfast
