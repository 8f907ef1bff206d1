// soft_iou: v[n] = 2 sum_p min(a,b) M / (sum_p (a + b) + eps) -- Sharpen Focus Eq. 6.
// An empty `mask` (numel 0) means M = 1 (then its gradient is empty too).
// backward: common/maps.h soft_iou_backward_add (ties of min split 1/2 - 1/2).
#include "common/maps.h"
#include "cpu/kernels.h"

namespace attnfast::cpu {

// The three maps in the accumulation dtype; mask stays empty when "no mask".
static std::tuple<Tensor, Tensor, Tensor> iou_inputs(const Tensor& attn_a, const Tensor& attn_b,
                                                     const Tensor& mask) {
  check_dim(attn_a, "attn_a", 3, "N x H x W (a map)");
  check_shape(attn_b, "attn_b", attn_a.sizes());
  if (mask.numel() != 0) check_shape(mask, "mask", attn_a.sizes());
  const auto acc = acc_dtype(attn_a);
  return {small(attn_a, acc), small(attn_b, acc), small(mask, acc)};
}

Tensor soft_iou(const Tensor& attn_a, const Tensor& attn_b, const Tensor& mask, double eps) {
  Tensor a, b, m;
  std::tie(a, b, m) = iou_inputs(attn_a, attn_b, mask);
  const int64_t N = a.size(0), P = a.size(1) * a.size(2);
  Tensor out = at::empty({N}, a.options());
  ATTNFAST_DISPATCH_ACC(a.scalar_type(), "attnfast::soft_iou", [&] {
    using T = scalar_t;
    const T *ap = a.const_data_ptr<T>(), *bp = b.const_data_ptr<T>();
    const T* mp = m.numel() ? m.const_data_ptr<T>() : nullptr;
    T* op = out.mutable_data_ptr<T>();
    for_each_sample<T>(N, P, 0, [&](int64_t n, T*) {
      op[n] = attnfast::soft_iou(ap + n * P, bp + n * P, mp ? mp + n * P : nullptr, P, T(eps));
    });
  });
  return out;
}

Tensor3 soft_iou_backward(const Tensor& grad, const Tensor& attn_a, const Tensor& attn_b,
                          const Tensor& mask, double eps) {
  Tensor a, b, m;
  std::tie(a, b, m) = iou_inputs(attn_a, attn_b, mask);
  const int64_t N = a.size(0), P = a.size(1) * a.size(2);
  check_shape(grad, "grad", {N});
  const Tensor g = small(grad, a.scalar_type());
  Tensor da = at::zeros_like(a), db = at::zeros_like(a), dm = at::zeros_like(m);
  ATTNFAST_DISPATCH_ACC(a.scalar_type(), "attnfast::soft_iou_backward", [&] {
    using T = scalar_t;
    const T *ap = a.const_data_ptr<T>(), *bp = b.const_data_ptr<T>(), *gp = g.const_data_ptr<T>();
    const T* mp = m.numel() ? m.const_data_ptr<T>() : nullptr;
    T *dap = da.mutable_data_ptr<T>(), *dbp = db.mutable_data_ptr<T>();
    T* dmp = m.numel() ? dm.mutable_data_ptr<T>() : nullptr;
    for_each_sample<T>(N, P, 0, [&](int64_t n, T*) {
      soft_iou_backward_add(gp[n], ap + n * P, bp + n * P, mp ? mp + n * P : nullptr, P, T(eps),
                            dap + n * P, dbp + n * P, dmp ? dmp + n * P : nullptr);
    });
  });
  return {da, db, dm};
}

}  // namespace attnfast::cpu
