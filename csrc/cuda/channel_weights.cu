// channel_weights: w[n,k] = (1/P) sum_p ReLU(G[n,k,p]) (positive) or (1/P) sum_p G (Grad-CAM).
// One pass over G (tile_ops "weights"); backward one write pass: dG = g[n,k] / P * term'(G),
// G read only for the ReLU' of the positive form.
#include "cuda/tile_ops.h"

namespace attnfast {
namespace cuda {

cudaError_t channel_weights(DType dt, const Geometry& g, const void* grads, bool positive,
                            float* weights, Scratch scratch, cudaStream_t stream) {
  WeightsArgs a{};
  a.geo = g, a.g[0] = grads, a.positive = positive, a.w[0] = weights;
  return attnfast::cuda::weights(dt, a, scratch, stream);
}

cudaError_t channel_weights_backward(DType dt, const Geometry& g, const float* grad,
                                     const void* grads, bool positive, void* d_grads,
                                     Scratch scratch, cudaStream_t stream) {
  WeightsBackwardArgs a{};
  a.geo = g, a.g[0] = grads, a.positive = positive, a.d_w[0] = grad, a.d_g[0] = d_grads;
  return weights_backward(dt, a, scratch, stream);
}

}  // namespace cuda
}  // namespace attnfast
