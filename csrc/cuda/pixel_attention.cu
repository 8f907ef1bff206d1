// pixel_attention: A[n,p] = ReLU((1/K) sum_k G[n,k,p] F[n,k,p]) -- Eq. 5. One pass over F and G
// (tile_ops "contract"); backward one elementwise pass: r = g [A > 0] / K, dF = r G, dG = r F
// (tile_ops "scatter" with a big V).
#include "cuda/tile_ops.h"

namespace attnfast {
namespace cuda {

static float inv(int64_t k) { return k > 0 ? 1.f / static_cast<float>(k) : 0.f; }

cudaError_t pixel_attention(DType dt, const Geometry& g, const void* features, const void* grads,
                            float* attn, Scratch scratch, cudaStream_t stream) {
  ContractArgs a{};
  a.geo = g, a.f = features, a.g[0] = grads, a.attn = attn, a.scale = inv(g.k);
  return contract(dt, a, scratch, stream, nullptr);
}

cudaError_t pixel_attention_backward(DType dt, const Geometry& g, const float* grad,
                                     const void* features, const void* grads, const float* attn,
                                     void* d_features, void* d_grads, Scratch scratch,
                                     cudaStream_t stream) {
  ScatterArgs a{};
  a.geo = g, a.f = features, a.g[0] = grads;
  a.r[0] = grad, a.gate[0] = attn, a.scale[0] = inv(g.k);
  a.d_f = d_features, a.d_g[0] = d_grads;
  return scatter(dt, a, scratch, stream);
}

}  // namespace cuda
}  // namespace attnfast
