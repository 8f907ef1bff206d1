// channel_weights: w[n,k] = mean_p ReLU(G[n,k,p]) (positive) or mean_p G[n,k,p] (Grad-CAM).
// backward:        dG[n,k,p] = grad[n,k] / P * (positive ? [G[n,k,p] > 0] : 1).
#include <torch/library.h>

#include "cpu/channel_weights.h"
#include "host/attention.h"

namespace attnfast::cpu {
namespace {

void run(const host::ChannelWeights& a) {
  const Big b(a.g);
  ATTNFAST_DISPATCH_BIG(a.g.scalar_type(), "attnfast::channel_weights", [&] {
    const scalar_t* g = a.g.const_data_ptr<scalar_t>();
    acc_t* out = a.w.mutable_data_ptr<acc_t>();
    parallel_blocks(b.N, b.K, kChannels, kChannels * b.P, [&](int64_t n, int64_t k0, int64_t k1) {
      acc_t* on = out + n * b.K;
      std::fill(on + k0, on + k1, acc_t(0));
      add_channel_sums(g + n * b.L.sn, b.L, k0, k1, b.P, a.positive, on);
      for (int64_t k = k0; k < k1; ++k) on[k] /= static_cast<acc_t>(b.P);
    });
  });
}

void run(const host::ChannelWeightsBackward& a) {
  const Big b(a.g);
  ATTNFAST_DISPATCH_BIG(a.g.scalar_type(), "attnfast::channel_weights_backward", [&] {
    const scalar_t* g = a.g.const_data_ptr<scalar_t>();
    const acc_t* up = a.grad.const_data_ptr<acc_t>();
    scalar_t* d = a.dg.work.mutable_data_ptr<scalar_t>();
    parallel_blocks(b.N, b.K, kChannels, kChannels * b.P, [&](int64_t n, int64_t k0, int64_t k1) {
      acc_t u[kChannels];  // grad / P of the block's channels, in a local (non-aliased) array
      for (int64_t k = k0; k < k1; ++k) u[k - k0] = up[n * b.K + k] / static_cast<acc_t>(b.P);
      const int64_t base = n * b.L.sn;
      visit(b.L, k0, k1, 0, b.P, [&](int64_t k, int64_t, int64_t off) {
        d[base + off] = static_cast<scalar_t>(
            weight_term_backward(a.positive, u[k - k0], static_cast<acc_t>(g[base + off])));
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CPU, m) { ATTNFAST_IMPL(m, kCpu, channel_weights, run); }

}  // namespace attnfast::cpu
