// normalize_attention: u[n,p] = A[n,p] / (max(max_q A[n,q], 0) + eps); backward: the normalize
// backward of common/maps.h (even split among ties at the max, nothing through a max < 0).
#include "common/maps.h"
#include "cpu/kernels.h"

namespace attnfast::cpu {

Tensor normalize_attention(const Tensor& attn, double eps) {
  check_dim(attn, "attn", 3, "N x H x W (a map)");
  const Tensor a = small(attn, acc_dtype(attn));
  const int64_t N = a.size(0), P = a.size(1) * a.size(2);
  Tensor out = at::empty_like(a);
  ATTNFAST_DISPATCH_ACC(a.scalar_type(), "attnfast::normalize_attention", [&] {
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for_each_sample<scalar_t>(N, P, 0, [&](int64_t n, scalar_t*) {
      normalize(ap + n * P, P, static_cast<scalar_t>(eps), op + n * P);
    });
  });
  return out;
}

Tensor normalize_attention_backward(const Tensor& grad, const Tensor& attn, double eps) {
  check_dim(attn, "attn", 3, "N x H x W (a map)");
  check_shape(grad, "grad", attn.sizes());
  const Tensor a = small(attn, acc_dtype(attn)), g = small(grad, a.scalar_type());
  const int64_t N = a.size(0), P = a.size(1) * a.size(2);
  Tensor da = at::zeros_like(a);
  ATTNFAST_DISPATCH_ACC(a.scalar_type(), "attnfast::normalize_attention_backward", [&] {
    const scalar_t *ap = a.const_data_ptr<scalar_t>(), *gp = g.const_data_ptr<scalar_t>();
    scalar_t* dp = da.mutable_data_ptr<scalar_t>();
    for_each_sample<scalar_t>(N, P, 0, [&](int64_t n, scalar_t*) {
      normalize_backward_add(gp + n * P, ap + n * P, P, static_cast<scalar_t>(eps), dp + n * P);
    });
  });
  return da;
}

}  // namespace attnfast::cpu
