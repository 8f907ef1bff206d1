// The four passes over big N x K x P tensors that every attnfast CUDA op is built from
// (csrc/cuda/tile_ops.cu). Each reads its big inputs once and writes its big outputs once;
// reductions are deterministic (fixed-order trees, split work summed in a fixed order).
//
//   contract        c_j[n,p] = sum_k F[n,k,p] V_j[n,k,p]                     (per-pixel maps)
//   scatter         the adjoint of contract for per-pixel r_j[n,p]:
//                     dF = sum_j r_j V_j,  dG_j = r_j F (big V_j),  dw_j = sum_p r_j F (small V_j)
//   weights         w_j[n,k] = (1/P) sum_p term(G_j[n,k,p]), term = ReLU or identity
//   weights_backward  dG_j[n,k,p] = dw_j[n,k] / P * term'(G_j[n,k,p])
//
// with j < 2 (the target and confuser class of a layer) and V_j either a big tensor G_j or
// small per-channel weights w_j[n,k] broadcast over pixels (a gradient constant over pixels
// never becomes N x K x P).
#pragma once

#include "cuda/api.h"

namespace attnfast {
namespace cuda {

// Per-split partial sums a pass leaves for its consumer: slot j, sample n, index i (a pixel
// for contract) summed over the splits in a fixed order.
struct Partials {
  const float* ptr;
  int64_t splits, per_split, n, kept;  // per_split = slots * n * kept
  ATTNFAST_HD float sum(int j, int64_t sample, int64_t i) const {
    const float* q = ptr + (j * n + sample) * kept + i;
    float v = 0.f;
    for (int64_t s = 0; s < splits; ++s) v += q[s * per_split];
    return v;
  }
};

// A small per-channel weight w_j: used as is (kind < 0), or an N x K gradient constant over
// pixels mapped through const_grad_weight(kind, g, 1/K) (common/defs.h).
struct SmallV {
  const float* w;  // null: the class is not small
  int64_t kind;
};

// All big pointers of one pass share the layout geo.lay (null: not read / not written).
struct ContractArgs {
  Geometry geo;
  const void* f;
  const void* g[2];  // big V_j; null: the class is small (v[j]) or absent
  SmallV v[2];
  float* attn;       // non-null: a standalone attention map, attn = ReLU(scale * c_0)
  float scale;
};
// With attn null, the sums are left in `sums` (must be non-null then).
cudaError_t contract(DType dt, const ContractArgs& a, Scratch scratch, cudaStream_t stream,
                     Partials* sums);

struct ScatterArgs {
  Geometry geo;
  const void* f;         // read when d_g or d_w is wanted
  const void* g[2];      // big V_j, read when d_f is wanted
  SmallV v[2];
  const float* r[2];     // r_j[n,p]; null: class absent
  const float* gate[2];  // non-null: r_j *= ReLU'(gate_j[n,p])
  float scale[2];        // r_j *= scale_j
  void* d_f;
  void* d_g[2];
  float* d_w[2];
};
cudaError_t scatter(DType dt, const ScatterArgs& a, Scratch scratch, cudaStream_t stream);

struct WeightsArgs {
  Geometry geo;
  const void* g[2];  // null: class absent
  bool positive;
  float* w[2];
};
cudaError_t weights(DType dt, const WeightsArgs& a, Scratch scratch, cudaStream_t stream);

struct WeightsBackwardArgs {
  Geometry geo;
  const void* g[2];  // read only when positive (for ReLU')
  bool positive;
  const float* d_w[2];
  void* d_g[2];
};
cudaError_t weights_backward(DType dt, const WeightsBackwardArgs& a, Scratch scratch,
                             cudaStream_t stream);

}  // namespace cuda
}  // namespace attnfast
