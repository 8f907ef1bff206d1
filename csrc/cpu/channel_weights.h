// The per-sample core of channel_weights, shared with the fused sharpen_focus_loss.
#pragma once

#include "cpu/cpu_common.h"

namespace attnfast::cpu {

// out[k] += sum_p ReLU(g[k,p]) (positive) or sum_p g[k,p], k in [k0, k1), for one sample whose
// elements sit at g[k * L.sk + p * L.sp].
template <class S, class A>
void add_channel_sums(const S* g, const Layout& L, int64_t k0, int64_t k1, int64_t P,
                      bool positive, A* out) {
  for_tiles(L, k0, k1, 0, P, [&](int64_t kb, int64_t ke, int64_t pb, int64_t pe) {
    A sum[kTile];
    std::fill(sum, sum + (ke - kb), A(0));
    visit(L, kb, ke, pb, pe, [&](int64_t k, int64_t, int64_t off) {
      sum[k - kb] += weight_term(positive, static_cast<A>(g[off]));
    });
    for (int64_t k = kb; k < ke; ++k) out[k] += sum[k - kb];
  });
}

}  // namespace attnfast::cpu
