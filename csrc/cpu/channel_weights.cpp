// channel_weights: w[n,k] = mean_p ReLU(G[n,k,p]) (positive) or mean_p G[n,k,p] (Grad-CAM).
// backward:        dG[n,k,p] = grad[n,k] / P * (positive ? [G[n,k,p] > 0] : 1).
#include "cpu/channel_weights.h"
#include "cpu/kernels.h"

namespace attnfast::cpu {

Tensor channel_weights(const Tensor& grads, bool positive) {
  check_big(grads, "grads");
  const Tensor G = dense(grads);
  const int64_t N = G.size(0), K = G.size(1), P = pixels(G);
  const Layout L = layout_of(G);
  Tensor w = at::empty({N, K}, G.options().dtype(acc_dtype(G)));
  ATTNFAST_DISPATCH_BIG(G.scalar_type(), "attnfast::channel_weights", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = G.const_data_ptr<scalar_t>();
    acc_t* out = w.mutable_data_ptr<acc_t>();
    parallel_blocks(N, K, kChannels, kChannels * P, [&](int64_t n, int64_t k0, int64_t k1) {
      acc_t* on = out + n * K;
      std::fill(on + k0, on + k1, acc_t(0));
      add_channel_sums(g + n * L.sn, L, k0, k1, P, positive, on);
      for (int64_t k = k0; k < k1; ++k) on[k] /= static_cast<acc_t>(P);
    });
  });
  return w;
}

Tensor channel_weights_backward(const Tensor& grad, const Tensor& grads, bool positive) {
  check_big(grads, "grads");
  const Tensor G = dense(grads);
  const int64_t N = G.size(0), K = G.size(1), P = pixels(G);
  const Layout L = layout_of(G);
  check_shape(grad, "grad", {N, K});
  const Tensor gw = small(grad, acc_dtype(G));
  BigOut dG(grads, G);
  ATTNFAST_DISPATCH_BIG(G.scalar_type(), "attnfast::channel_weights_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = G.const_data_ptr<scalar_t>();
    const acc_t* up = gw.const_data_ptr<acc_t>();
    scalar_t* d = dG.work.mutable_data_ptr<scalar_t>();
    parallel_blocks(N, K, kChannels, kChannels * P, [&](int64_t n, int64_t k0, int64_t k1) {
      acc_t u[kChannels];  // grad / P of the block's channels, in a local (non-aliased) array
      for (int64_t k = k0; k < k1; ++k) u[k - k0] = up[n * K + k] / static_cast<acc_t>(P);
      const int64_t base = n * L.sn;
      visit(L, k0, k1, 0, P, [&](int64_t k, int64_t, int64_t off) {
        d[base + off] = static_cast<scalar_t>(
            u[k - k0] * weight_term_grad(positive, static_cast<acc_t>(g[base + off])));
      });
    });
  });
  return dG.done();
}

}  // namespace attnfast::cpu
