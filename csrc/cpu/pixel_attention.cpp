// pixel_attention: A[n,p] = ReLU(z[n,p] / K), z = sum_k G[n,k,p] F[n,k,p]  (Sharpen Focus Eq. 5).
// backward: e = grad * [A > 0] / K; dF = e G; dG = e F.
#include <torch/library.h>

#include "cpu/cpu_common.h"
#include "host/attention.h"

namespace attnfast::cpu {
namespace {

void run(const host::PixelAttention& a) {
  const Big b(a.f);
  ATTNFAST_DISPATCH_BIG(a.f.scalar_type(), "attnfast::pixel_attention", [&] {
    const scalar_t *f = a.f.const_data_ptr<scalar_t>(), *g = a.g.const_data_ptr<scalar_t>();
    acc_t* out = a.attn.mutable_data_ptr<acc_t>();
    parallel_blocks(b.N, b.P, kBlock, kBlock * b.K, [&](int64_t n, int64_t p0, int64_t p1) {
      acc_t z[kBlock] = {};
      const int64_t base = n * b.L.sn;
      visit(b.L, 0, b.K, p0, p1, [&](int64_t, int64_t p, int64_t off) {
        z[p - p0] += static_cast<acc_t>(g[base + off]) * static_cast<acc_t>(f[base + off]);
      });
      const acc_t k = static_cast<acc_t>(b.K);
      for (int64_t p = p0; p < p1; ++p) out[n * b.P + p] = relu(z[p - p0] / k);
    });
  });
}

void run(const host::PixelAttentionBackward& a) {
  const Big b(a.f);
  ATTNFAST_DISPATCH_BIG(a.f.scalar_type(), "attnfast::pixel_attention_backward", [&] {
    const scalar_t *f = a.f.const_data_ptr<scalar_t>(), *g = a.g.const_data_ptr<scalar_t>();
    scalar_t *df = a.df.work.mutable_data_ptr<scalar_t>(),
             *dg = a.dg.work.mutable_data_ptr<scalar_t>();
    const acc_t *up = a.grad.const_data_ptr<acc_t>(), *ap = a.attn.const_data_ptr<acc_t>();
    parallel_blocks(b.N, b.P, kBlock, kBlock * b.K, [&](int64_t n, int64_t p0, int64_t p1) {
      acc_t e[kBlock];
      for (int64_t p = p0; p < p1; ++p)
        e[p - p0] = relu_backward(up[n * b.P + p], ap[n * b.P + p]) / static_cast<acc_t>(b.K);
      const int64_t base = n * b.L.sn;
      visit(b.L, 0, b.K, p0, p1, [&](int64_t, int64_t p, int64_t off) {
        const acc_t fv = static_cast<acc_t>(f[base + off]), gv = static_cast<acc_t>(g[base + off]);
        df[base + off] = static_cast<scalar_t>(e[p - p0] * gv);
        dg[base + off] = static_cast<scalar_t>(e[p - p0] * fv);
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CPU, m) { ATTNFAST_IMPL(m, kCpu, pixel_attention, run); }

}  // namespace attnfast::cpu
