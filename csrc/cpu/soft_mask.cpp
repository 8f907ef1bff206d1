// soft_mask: M = sigmoid(omega (R(normalize(A)) - sigma)), R the bilinear resize
// (align_corners=False) of each h x w map to out_h x out_w (identity when equal) -- Eq. 7.
// backward: dz = grad omega M (1 - M), R^T, then the normalize backward (common/maps.h).
#include "common/maps.h"
#include "cpu/kernels.h"

namespace attnfast::cpu {

static Tensor check_mask_input(const Tensor& attn, int64_t out_h, int64_t out_w) {
  check_dim(attn, "attn", 3, "N x H x W (a map)");
  TORCH_CHECK(out_h > 0 && out_w > 0, "attnfast: soft_mask output size must be positive, got (",
              out_h, ", ", out_w, ")");
  return small(attn, acc_dtype(attn));
}

Tensor soft_mask(const Tensor& attn, double sigma, double omega, int64_t out_h, int64_t out_w,
                 double eps) {
  const Tensor a = check_mask_input(attn, out_h, out_w);
  const int64_t N = a.size(0), h = a.size(1), w = a.size(2), Q = out_h * out_w;
  Tensor out = at::empty({N, out_h, out_w}, a.options());
  ATTNFAST_DISPATCH_ACC(a.scalar_type(), "attnfast::soft_mask", [&] {
    using T = scalar_t;
    const T* ap = a.const_data_ptr<T>();
    T* op = out.mutable_data_ptr<T>();
    for_each_sample<T>(N, h * w + Q, h * w, [&](int64_t n, T* u) {
      attnfast::soft_mask(ap + n * h * w, h, w, out_h, out_w, T(sigma), T(omega), T(eps), u,
                          op + n * Q);
    });
  });
  return out;
}

Tensor soft_mask_backward(const Tensor& grad, const Tensor& attn, double sigma, double omega,
                          int64_t out_h, int64_t out_w, double eps) {
  const Tensor a = check_mask_input(attn, out_h, out_w);
  const int64_t N = a.size(0), h = a.size(1), w = a.size(2), Q = out_h * out_w;
  check_shape(grad, "grad", {N, out_h, out_w});
  const Tensor g = small(grad, a.scalar_type());
  Tensor da = at::zeros_like(a);
  ATTNFAST_DISPATCH_ACC(a.scalar_type(), "attnfast::soft_mask_backward", [&] {
    using T = scalar_t;
    const T *ap = a.const_data_ptr<T>(), *gp = g.const_data_ptr<T>();
    T* dp = da.mutable_data_ptr<T>();
    for_each_sample<T>(N, h * w + Q, soft_mask_scratch(h, w, out_h, out_w), [&](int64_t n, T* s) {
      soft_mask_backward_add(gp + n * Q, ap + n * h * w, h, w, out_h, out_w, T(sigma), T(omega),
                             T(eps), s, dp + n * h * w);
    });
  });
  return da;
}

}  // namespace attnfast::cpu
