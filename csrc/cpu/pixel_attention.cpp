// pixel_attention: A[n,p] = ReLU(z[n,p] / K), z = sum_k G[n,k,p] F[n,k,p]  (Sharpen Focus Eq. 5).
// backward: e = grad * [A > 0] / K; dF = e G; dG = e F.
#include "cpu/kernels.h"

namespace attnfast::cpu {

Tensor pixel_attention(const Tensor& features, const Tensor& grads) {
  check_big(features, "features");
  check_same_big(features, "features", grads, "grads");
  const Tensor F = dense(features), G = like_layout(grads, F);
  const int64_t N = F.size(0), K = F.size(1), P = pixels(F);
  const Layout L = layout_of(F);
  Tensor A = at::empty({N, F.size(2), F.size(3)}, F.options().dtype(acc_dtype(F)));
  ATTNFAST_DISPATCH_BIG(F.scalar_type(), "attnfast::pixel_attention", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *f = F.const_data_ptr<scalar_t>(), *g = G.const_data_ptr<scalar_t>();
    acc_t* a = A.mutable_data_ptr<acc_t>();
    parallel_blocks(N, P, kBlock, kBlock * K, [&](int64_t n, int64_t p0, int64_t p1) {
      acc_t z[kBlock] = {};
      const int64_t base = n * L.sn;
      visit(L, 0, K, p0, p1, [&](int64_t, int64_t p, int64_t off) {
        z[p - p0] += static_cast<acc_t>(g[base + off]) * static_cast<acc_t>(f[base + off]);
      });
      for (int64_t p = p0; p < p1; ++p) a[n * P + p] = relu(z[p - p0] / static_cast<acc_t>(K));
    });
  });
  return A;
}

Tensor2 pixel_attention_backward(const Tensor& grad, const Tensor& features, const Tensor& grads,
                                 const Tensor& attn) {
  check_big(features, "features");
  check_same_big(features, "features", grads, "grads");
  const Tensor F = dense(features), G = like_layout(grads, F);
  const int64_t N = F.size(0), K = F.size(1), P = pixels(F);
  const Layout L = layout_of(F);
  const auto acc = acc_dtype(F);
  check_shape(grad, "grad", {N, F.size(2), F.size(3)});
  check_shape(attn, "attn", {N, F.size(2), F.size(3)});
  const Tensor g_up = small(grad, acc), A = small(attn, acc);
  BigOut dF(features, F), dG(grads, F);
  ATTNFAST_DISPATCH_BIG(F.scalar_type(), "attnfast::pixel_attention_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *f = F.const_data_ptr<scalar_t>(), *g = G.const_data_ptr<scalar_t>();
    scalar_t *df = dF.work.mutable_data_ptr<scalar_t>(), *dg = dG.work.mutable_data_ptr<scalar_t>();
    const acc_t *up = g_up.const_data_ptr<acc_t>(), *ap = A.const_data_ptr<acc_t>();
    parallel_blocks(N, P, kBlock, kBlock * K, [&](int64_t n, int64_t p0, int64_t p1) {
      acc_t e[kBlock];
      for (int64_t p = p0; p < p1; ++p)
        e[p - p0] = up[n * P + p] * relu_grad(ap[n * P + p]) / static_cast<acc_t>(K);
      const int64_t base = n * L.sn;
      visit(L, 0, K, p0, p1, [&](int64_t, int64_t p, int64_t off) {
        const acc_t fv = static_cast<acc_t>(f[base + off]), gv = static_cast<acc_t>(g[base + off]);
        df[base + off] = static_cast<scalar_t>(e[p - p0] * gv);
        dg[base + off] = static_cast<scalar_t>(e[p - p0] * fv);
      });
    });
  });
  return {dF.done(), dG.done()};
}

}  // namespace attnfast::cpu
