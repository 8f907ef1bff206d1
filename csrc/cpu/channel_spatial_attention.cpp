// channel_spatial_attention (GGAM Eq. 1-3), per sample n:
//   c[p] = sum_k S[k] F[k,p],  T[p] = c[p] / (sum_q c[q] + eps),  D[k,p] = F[k,p] T[p].
// backward (grad_out = dD, grad_spatial = dT_direct):
//   dT = grad_spatial + sum_k dD[k,p] F[k,p];  dc = (dT - sum_q dT[q] T[q]) / (sum_q c[q] + eps)
//   dF[k,p] = dD[k,p] T[p] + dc[p] S[k];       dS[k] = sum_p dc[p] F[k,p].
#include <torch/library.h>

#include "cpu/cpu_common.h"
#include "host/ggam.h"

namespace attnfast::cpu {
namespace {

// T[p] = c[p] / (sum_q c[q] + eps) in place; returns the denominator.
template <class T> T spatial_from_colsum(T* c, int64_t P, T eps) {
  T total = T(0);
  for (int64_t p = 0; p < P; ++p) total += c[p];
  const T den = total + eps;
  for (int64_t p = 0; p < P; ++p) c[p] /= den;
  return den;
}

void run(const host::ChannelSpatialAttention& a) {
  const Tensor& F = a.f;
  const Big b(F);
  ATTNFAST_DISPATCH_BIG(F.scalar_type(), "attnfast::channel_spatial_attention", [&] {
    const scalar_t* f = F.const_data_ptr<scalar_t>();
    scalar_t* d = a.out.work.mutable_data_ptr<scalar_t>();
    const acc_t* s = a.s.const_data_ptr<acc_t>();
    acc_t* t = a.spatial.mutable_data_ptr<acc_t>();
    parallel_blocks(b.N, b.P, kBlock, kBlock * b.K, [&](int64_t n, int64_t p0, int64_t p1) {
      acc_t c[kBlock] = {};
      const int64_t base = n * b.L.sn;
      visit(b.L, 0, b.K, p0, p1, [&](int64_t k, int64_t p, int64_t off) {
        c[p - p0] += s[n * b.K + k] * static_cast<acc_t>(f[base + off]);
      });
      std::copy(c, c + (p1 - p0), t + n * b.P + p0);
    });
    for_each_sample<acc_t>(b.N, b.P, 0, [&](int64_t n, acc_t*) {
      spatial_from_colsum(t + n * b.P, b.P, static_cast<acc_t>(a.eps));
    });
    parallel_blocks(b.N, b.P, kBlock, kBlock * b.K, [&](int64_t n, int64_t p0, int64_t p1) {
      const int64_t base = n * b.L.sn;
      visit(b.L, 0, b.K, p0, p1, [&](int64_t, int64_t p, int64_t off) {
        d[base + off] = static_cast<scalar_t>(static_cast<acc_t>(f[base + off]) * t[n * b.P + p]);
      });
    });
  });
}

// `spatial` is not read: T is recomputed from F and S.
void run(const host::ChannelSpatialAttentionBackward& a) {
  const Tensor& F = a.f;
  const Big b(F);
  const auto scratch = F.options().dtype(a.ds.scalar_type());
  Tensor tmap = at::empty({b.N, b.P}, scratch), dcol = at::empty({b.N, b.P}, scratch);
  ATTNFAST_DISPATCH_BIG(F.scalar_type(), "attnfast::channel_spatial_attention_backward", [&] {
    const scalar_t *f = F.const_data_ptr<scalar_t>(), *gd = a.grad_out.const_data_ptr<scalar_t>();
    scalar_t* df = a.df.work.mutable_data_ptr<scalar_t>();
    const acc_t *s = a.s.const_data_ptr<acc_t>(), *gt = a.grad_spatial.const_data_ptr<acc_t>();
    acc_t *t = tmap.mutable_data_ptr<acc_t>(), *dc = dcol.mutable_data_ptr<acc_t>();
    acc_t* ds = a.ds.mutable_data_ptr<acc_t>();
    // pass 1: c[p] (into t) and sum_k dD F (into dc)
    parallel_blocks(b.N, b.P, kBlock, kBlock * b.K, [&](int64_t n, int64_t p0, int64_t p1) {
      acc_t c[kBlock] = {}, h[kBlock] = {};
      const int64_t base = n * b.L.sn;
      visit(b.L, 0, b.K, p0, p1, [&](int64_t k, int64_t p, int64_t off) {
        const acc_t fv = static_cast<acc_t>(f[base + off]);
        c[p - p0] += s[n * b.K + k] * fv;
        h[p - p0] += static_cast<acc_t>(gd[base + off]) * fv;
      });
      std::copy(c, c + (p1 - p0), t + n * b.P + p0);
      std::copy(h, h + (p1 - p0), dc + n * b.P + p0);
    });
    // per sample: T, then dc = (dT - sum dT T) / den
    for_each_sample<acc_t>(b.N, 4 * b.P, 0, [&](int64_t n, acc_t*) {
      acc_t *tn = t + n * b.P, *dn = dc + n * b.P;
      const acc_t den = spatial_from_colsum(tn, b.P, static_cast<acc_t>(a.eps));
      acc_t dot = acc_t(0);
      for (int64_t p = 0; p < b.P; ++p) {
        dn[p] += gt[n * b.P + p];
        dot += dn[p] * tn[p];
      }
      for (int64_t p = 0; p < b.P; ++p) dn[p] = (dn[p] - dot) / den;
    });
    // pass 2: dF and dS
    parallel_blocks(b.N, b.K, kChannels, kChannels * b.P, [&](int64_t n, int64_t k0, int64_t k1) {
      acc_t r[kChannels] = {};
      const int64_t base = n * b.L.sn;
      const acc_t *tn = t + n * b.P, *dn = dc + n * b.P;
      visit(b.L, k0, k1, 0, b.P, [&](int64_t k, int64_t p, int64_t off) {
        r[k - k0] += dn[p] * static_cast<acc_t>(f[base + off]);
        df[base + off] = static_cast<scalar_t>(static_cast<acc_t>(gd[base + off]) * tn[p] +
                                               dn[p] * s[n * b.K + k]);
      });
      for (int64_t k = k0; k < k1; ++k) ds[n * b.K + k] = r[k - k0];
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CPU, m) { ATTNFAST_IMPL(m, kCpu, channel_spatial_attention, run); }

}  // namespace attnfast::cpu
