// ggam_loss: L[n] = 0.5 (KL(p'||q') + KL(q'||p')), p = S, q = sigmoid(beta) / sum_k sigmoid(beta),
// clamped at eps -- GGAM Eq. 5; backward w.r.t. S and beta: common/ggam.h.
#include "common/ggam.h"
#include "cpu/kernels.h"

namespace attnfast::cpu {

static std::tuple<Tensor, Tensor> ggam_inputs(const Tensor& channel_weights,
                                              const Tensor& gradcam_weights) {
  check_dim(channel_weights, "channel_weights", 2, "N x K");
  check_shape(gradcam_weights, "gradcam_weights", channel_weights.sizes());
  const auto acc = channel_weights.scalar_type() == at::kDouble ||
                           gradcam_weights.scalar_type() == at::kDouble
                       ? at::kDouble
                       : at::kFloat;
  return {small(channel_weights, acc), small(gradcam_weights, acc)};
}

Tensor ggam_loss(const Tensor& channel_weights, const Tensor& gradcam_weights, double eps) {
  Tensor s, beta;
  std::tie(s, beta) = ggam_inputs(channel_weights, gradcam_weights);
  const int64_t N = s.size(0), K = s.size(1);
  Tensor out = at::empty({N}, s.options());
  ATTNFAST_DISPATCH_ACC(s.scalar_type(), "attnfast::ggam_loss", [&] {
    using T = scalar_t;
    const T *sp = s.const_data_ptr<T>(), *bp = beta.const_data_ptr<T>();
    T* op = out.mutable_data_ptr<T>();
    for_each_sample<T>(N, 8 * K, 0, [&](int64_t n, T*) {
      op[n] = ggam_kl(sp + n * K, bp + n * K, K, T(eps));
    });
  });
  return out;
}

Tensor2 ggam_loss_backward(const Tensor& grad, const Tensor& channel_weights,
                           const Tensor& gradcam_weights, double eps) {
  Tensor s, beta;
  std::tie(s, beta) = ggam_inputs(channel_weights, gradcam_weights);
  const int64_t N = s.size(0), K = s.size(1);
  check_shape(grad, "grad", {N});
  const Tensor g = small(grad, s.scalar_type());
  Tensor ds = at::empty_like(s), dbeta = at::empty_like(beta);
  ATTNFAST_DISPATCH_ACC(s.scalar_type(), "attnfast::ggam_loss_backward", [&] {
    using T = scalar_t;
    const T *sp = s.const_data_ptr<T>(), *bp = beta.const_data_ptr<T>(), *gp = g.const_data_ptr<T>();
    T *dsp = ds.mutable_data_ptr<T>(), *dbp = dbeta.mutable_data_ptr<T>();
    for_each_sample<T>(N, 16 * K, 0, [&](int64_t n, T*) {
      ggam_kl_backward(gp[n], sp + n * K, bp + n * K, K, T(eps), dsp + n * K, dbp + n * K);
    });
  });
  return {ds, dbeta};
}

}  // namespace attnfast::cpu
