// weighted_attention: A[n,p] = ReLU(z[n,p]), z = sum_k w[n,k] F[n,k,p]  (CAM form).
// backward: e = grad * [A > 0]; dF[n,k,p] = e[n,p] w[n,k]; dw[n,k] = sum_p e[n,p] F[n,k,p].
#include <torch/library.h>

#include "cpu/cpu_common.h"
#include "host/attention.h"

namespace attnfast::cpu {
namespace {

void run(const host::WeightedAttention& a) {
  const int64_t N = a.f.size(0), K = a.f.size(1), P = pixels(a.f);
  const Layout L = layout_of(a.f);
  ATTNFAST_DISPATCH_BIG(a.f.scalar_type(), "attnfast::weighted_attention", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* f = a.f.const_data_ptr<scalar_t>();
    const acc_t* wp = a.w.const_data_ptr<acc_t>();
    acc_t* out = a.attn.mutable_data_ptr<acc_t>();
    parallel_blocks(N, P, kBlock, kBlock * K, [&](int64_t n, int64_t p0, int64_t p1) {
      acc_t z[kBlock] = {};
      const scalar_t* fn = f + n * L.sn;
      const acc_t* wn = wp + n * K;
      visit(L, 0, K, p0, p1, [&](int64_t k, int64_t p, int64_t off) {
        z[p - p0] += wn[k] * static_cast<acc_t>(fn[off]);
      });
      for (int64_t p = p0; p < p1; ++p) out[n * P + p] = relu(z[p - p0]);
    });
  });
}

void run(const host::WeightedAttentionBackward& a) {
  const int64_t N = a.f.size(0), K = a.f.size(1), P = pixels(a.f);
  const Layout L = layout_of(a.f);
  ATTNFAST_DISPATCH_BIG(a.f.scalar_type(), "attnfast::weighted_attention_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* f = a.f.const_data_ptr<scalar_t>();
    scalar_t* df = a.df.work.mutable_data_ptr<scalar_t>();
    const acc_t *wp = a.w.const_data_ptr<acc_t>(), *gp = a.grad.const_data_ptr<acc_t>(),
                *ap = a.attn.const_data_ptr<acc_t>();
    acc_t* dwp = a.dw.mutable_data_ptr<acc_t>();
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
}

}  // namespace
}  // namespace attnfast::cpu

TORCH_LIBRARY_IMPL(attnfast, CPU, m) {
  using namespace attnfast;
  m.impl("weighted_attention", &host::weighted_attention<host::kCpu, cpu::run>);
  m.impl("weighted_attention_backward", &host::weighted_attention_backward<host::kCpu, cpu::run>);
}
