// weighted_attention: A[n,p] = ReLU(sum_k w[n,k] F[n,k,p]) (CAM form). One pass over F
// (tile_ops "contract" with small weights); backward one pass over F: with r = g [A > 0],
// dF = r w (written once) and dw[n,k] = sum_p r F (tile_ops "scatter").
#include "cuda/tile_ops.h"

namespace attnfast {
namespace cuda {

cudaError_t weighted_attention(DType dt, const Geometry& g, const void* features,
                               const float* weights, float* attn, Scratch scratch,
                               cudaStream_t stream) {
  ContractArgs a{};
  a.geo = g, a.f = features, a.v[0] = {weights, -1}, a.attn = attn, a.scale = 1.f;
  return contract(dt, a, scratch, stream, nullptr);
}

cudaError_t weighted_attention_backward(DType dt, const Geometry& g, const float* grad,
                                        const void* features, const float* weights,
                                        const float* attn, void* d_features, float* d_weights,
                                        Scratch scratch, cudaStream_t stream) {
  ScatterArgs a{};
  a.geo = g, a.f = features, a.v[0] = {weights, -1};
  a.r[0] = grad, a.gate[0] = attn, a.scale[0] = 1.f;
  a.d_f = d_features, a.d_w[0] = d_weights;
  return scatter(dt, a, scratch, stream);
}

}  // namespace cuda
}  // namespace attnfast
