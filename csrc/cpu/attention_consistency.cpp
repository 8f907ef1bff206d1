// attention_consistency: v[n] = alpha - sum_p A M / (sum_p A + eps) -- Sharpen Focus Eq. 8.
// backward: common/maps.h consistency_backward_add.
#include "common/maps.h"
#include "cpu/kernels.h"

namespace attnfast::cpu {

static std::tuple<Tensor, Tensor> consistency_inputs(const Tensor& attn, const Tensor& mask) {
  check_dim(attn, "attn", 3, "N x H x W (a map)");
  check_shape(mask, "mask", attn.sizes());
  const auto acc = acc_dtype(attn);
  return {small(attn, acc), small(mask, acc)};
}

Tensor attention_consistency(const Tensor& attn, const Tensor& mask, double alpha, double eps) {
  Tensor a, m;
  std::tie(a, m) = consistency_inputs(attn, mask);
  const int64_t N = a.size(0), P = a.size(1) * a.size(2);
  Tensor out = at::empty({N}, a.options());
  ATTNFAST_DISPATCH_ACC(a.scalar_type(), "attnfast::attention_consistency", [&] {
    using T = scalar_t;
    const T *ap = a.const_data_ptr<T>(), *mp = m.const_data_ptr<T>();
    T* op = out.mutable_data_ptr<T>();
    for_each_sample<T>(N, P, 0, [&](int64_t n, T*) {
      op[n] = consistency(ap + n * P, mp + n * P, P, T(alpha), T(eps));
    });
  });
  return out;
}

Tensor2 attention_consistency_backward(const Tensor& grad, const Tensor& attn, const Tensor& mask,
                                       double alpha, double eps) {
  Tensor a, m;
  std::tie(a, m) = consistency_inputs(attn, mask);
  const int64_t N = a.size(0), P = a.size(1) * a.size(2);
  check_shape(grad, "grad", {N});
  const Tensor g = small(grad, a.scalar_type());
  Tensor da = at::zeros_like(a), dm = at::zeros_like(m);
  ATTNFAST_DISPATCH_ACC(a.scalar_type(), "attnfast::attention_consistency_backward", [&] {
    using T = scalar_t;
    const T *ap = a.const_data_ptr<T>(), *mp = m.const_data_ptr<T>(), *gp = g.const_data_ptr<T>();
    T *dap = da.mutable_data_ptr<T>(), *dmp = dm.mutable_data_ptr<T>();
    for_each_sample<T>(N, P, 0, [&](int64_t n, T*) {
      consistency_backward_add(gp[n], ap + n * P, mp + n * P, P, T(eps), dap + n * P, dmp + n * P);
    });
  });
  (void)alpha;  // the constant alpha has no gradient
  return {da, dm};
}

}  // namespace attnfast::cpu
