// weighted_attention: A[n,p] = ReLU(z[n,p]), z = sum_k w[n,k] F[n,k,p]  (CAM form).
// backward: e = grad * [A > 0]; dF[n,k,p] = e[n,p] w[n,k]; dw[n,k] = sum_p e[n,p] F[n,k,p].
#include <torch/library.h>

#include "cpu/cpu_common.h"
#include "host/attention.h"

namespace attnfast::cpu {
namespace {

void run(const host::WeightedAttention& a) {
  const Big b(a.f);
  ATTNFAST_DISPATCH_BIG(a.f.scalar_type(), "attnfast::weighted_attention", [&] {
    const scalar_t* f = a.f.const_data_ptr<scalar_t>();
    const acc_t* wp = a.w.const_data_ptr<acc_t>();
    acc_t* out = a.attn.mutable_data_ptr<acc_t>();
    parallel_blocks(b.N, b.P, kBlock, kBlock * b.K, [&](int64_t n, int64_t p0, int64_t p1) {
      acc_t z[kBlock] = {};
      const scalar_t* fn = f + n * b.L.sn;
      const acc_t* wn = wp + n * b.K;
      visit(b.L, 0, b.K, p0, p1, [&](int64_t k, int64_t p, int64_t off) {
        z[p - p0] += wn[k] * static_cast<acc_t>(fn[off]);
      });
      for (int64_t p = p0; p < p1; ++p) out[n * b.P + p] = relu(z[p - p0]);
    });
  });
}

void run(const host::WeightedAttentionBackward& a) {
  const Big b(a.f);
  ATTNFAST_DISPATCH_BIG(a.f.scalar_type(), "attnfast::weighted_attention_backward", [&] {
    const scalar_t* f = a.f.const_data_ptr<scalar_t>();
    scalar_t* df = a.df.work.mutable_data_ptr<scalar_t>();
    const acc_t *wp = a.w.const_data_ptr<acc_t>(), *gp = a.grad.const_data_ptr<acc_t>(),
                *ap = a.attn.const_data_ptr<acc_t>();
    acc_t* dwp = a.dw.mutable_data_ptr<acc_t>();
    parallel_blocks(b.N, b.K, kChannels, kChannels * b.P, [&](int64_t n, int64_t k0, int64_t k1) {
      acc_t r[kChannels] = {};
      const int64_t base = n * b.L.sn;
      const acc_t *gn = gp + n * b.P, *an = ap + n * b.P, *wn = wp + n * b.K;
      visit(b.L, k0, k1, 0, b.P, [&](int64_t k, int64_t p, int64_t off) {
        const acc_t e = relu_backward(gn[p], an[p]);
        r[k - k0] += e * static_cast<acc_t>(f[base + off]);
        df[base + off] = static_cast<scalar_t>(e * wn[k]);
      });
      for (int64_t k = k0; k < k1; ++k) dwp[n * b.K + k] = r[k - k0];
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CPU, m) { ATTNFAST_IMPL(m, kCpu, weighted_attention, run); }

}  // namespace attnfast::cpu
