// weighted_attention: A[n,p] = ReLU(z[n,p]), z = sum_k w[n,k] F[n,k,p]  (CAM form).
// backward: e = grad * [A > 0]; dF[n,k,p] = e[n,p] w[n,k]; dw[n,k] = sum_p e[n,p] F[n,k,p].
#include "cpu/kernels.h"

namespace attnfast::cpu {

Tensor weighted_attention(const Tensor& features, const Tensor& weights) {
  check_big(features, "features");
  const Tensor F = dense(features);
  const int64_t N = F.size(0), K = F.size(1), P = pixels(F);
  const Layout L = layout_of(F);
  check_shape(weights, "weights", {N, K});
  const Tensor w = small(weights, acc_dtype(F));
  Tensor A = at::empty({N, F.size(2), F.size(3)}, w.options());
  ATTNFAST_DISPATCH_BIG(F.scalar_type(), "attnfast::weighted_attention", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* f = F.const_data_ptr<scalar_t>();
    const acc_t* wp = w.const_data_ptr<acc_t>();
    acc_t* a = A.mutable_data_ptr<acc_t>();
    parallel_blocks(N, P, kBlock, kBlock * K, [&](int64_t n, int64_t p0, int64_t p1) {
      acc_t z[kBlock] = {};
      const scalar_t* fn = f + n * L.sn;
      const acc_t* wn = wp + n * K;
      visit(L, 0, K, p0, p1, [&](int64_t k, int64_t p, int64_t off) {
        z[p - p0] += wn[k] * static_cast<acc_t>(fn[off]);
      });
      for (int64_t p = p0; p < p1; ++p) a[n * P + p] = relu(z[p - p0]);
    });
  });
  return A;
}

Tensor2 weighted_attention_backward(const Tensor& grad, const Tensor& features,
                                    const Tensor& weights, const Tensor& attn) {
  check_big(features, "features");
  const Tensor F = dense(features);
  const int64_t N = F.size(0), K = F.size(1), P = pixels(F);
  const Layout L = layout_of(F);
  const auto acc = acc_dtype(F);
  check_shape(weights, "weights", {N, K});
  check_shape(grad, "grad", {N, F.size(2), F.size(3)});
  check_shape(attn, "attn", {N, F.size(2), F.size(3)});
  const Tensor w = small(weights, acc), g = small(grad, acc), A = small(attn, acc);
  BigOut dF(features, F);
  Tensor dw = at::empty({N, K}, w.options());
  ATTNFAST_DISPATCH_BIG(F.scalar_type(), "attnfast::weighted_attention_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* f = F.const_data_ptr<scalar_t>();
    scalar_t* df = dF.work.mutable_data_ptr<scalar_t>();
    const acc_t *wp = w.const_data_ptr<acc_t>(), *gp = g.const_data_ptr<acc_t>(),
                *ap = A.const_data_ptr<acc_t>();
    acc_t* dwp = dw.mutable_data_ptr<acc_t>();
    parallel_blocks(N, K, kChannels, kChannels * P, [&](int64_t n, int64_t k0, int64_t k1) {
      acc_t r[kChannels] = {};
      const int64_t base = n * L.sn;
      const acc_t *gn = gp + n * P, *an = ap + n * P, *wn = wp + n * K;
      visit(L, k0, k1, 0, P, [&](int64_t k, int64_t p, int64_t off) {
        const acc_t e = gn[p] * relu_grad(an[p]);
        r[k - k0] += e * static_cast<acc_t>(f[base + off]);
        df[base + off] = static_cast<scalar_t>(e * wn[k]);
      });
      for (int64_t k = k0; k < k1; ++k) dwp[n * K + k] = r[k - k0];
    });
  });
  return {dF.done(), dw};
}

}  // namespace attnfast::cpu
