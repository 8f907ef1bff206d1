// soft_mask: M = sigmoid(omega (R(normalize(A)) - sigma)), R the bilinear resize
// (align_corners=False) of each h x w map to out_h x out_w (identity when equal) -- Eq. 7.
// backward: dz = grad omega M (1 - M), R^T, then the normalize backward (common/maps.h).
#include <torch/library.h>

#include "common/maps.h"
#include "cpu/cpu_common.h"
#include "host/maps.h"

namespace attnfast::cpu {
namespace {

void run(const host::SoftMask& a) {
  const int64_t N = a.attn.size(0), h = a.attn.size(1), w = a.attn.size(2),
                Q = a.out_h * a.out_w;
  ATTNFAST_DISPATCH_ACC(a.attn.scalar_type(), "attnfast::soft_mask", [&] {
    using T = scalar_t;
    const T* ap = a.attn.const_data_ptr<T>();
    T* op = a.out.mutable_data_ptr<T>();
    for_each_sample<T>(N, h * w + Q, h * w, [&](int64_t n, T* u) {
      soft_mask(ap + n * h * w, h, w, a.out_h, a.out_w, T(a.sigma), T(a.omega), T(a.eps), u,
                op + n * Q);
    });
  });
}

void run(const host::SoftMaskBackward& a) {
  const host::SoftMask& m = a.m;
  const int64_t N = m.attn.size(0), h = m.attn.size(1), w = m.attn.size(2),
                Q = m.out_h * m.out_w;
  ATTNFAST_DISPATCH_ACC(m.attn.scalar_type(), "attnfast::soft_mask_backward", [&] {
    using T = scalar_t;
    const T *ap = m.attn.const_data_ptr<T>(), *gp = a.grad.const_data_ptr<T>();
    T* dp = a.d_attn.mutable_data_ptr<T>();
    const int64_t scratch = soft_mask_scratch(h, w, m.out_h, m.out_w);
    for_each_sample<T>(N, h * w + Q, scratch, [&](int64_t n, T* s) {
      fill(dp + n * h * w, h * w, T(0));
      soft_mask_backward_add(gp + n * Q, ap + n * h * w, h, w, m.out_h, m.out_w, T(m.sigma),
                             T(m.omega), T(m.eps), s, dp + n * h * w);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CPU, m) { ATTNFAST_IMPL(m, kCpu, soft_mask, run); }

}  // namespace attnfast::cpu
