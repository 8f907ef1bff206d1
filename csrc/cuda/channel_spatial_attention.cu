// channel_spatial_attention (GGAM Eq. 1-3): c[n,p] = sum_k S[n,k] F[n,k,p],
// T = c / (sum_p c + eps), D = F T (T broadcast over channels).
// Forward: contract (c) -> one block per sample (T) -> scatter (D): F is read twice, because
// T needs a sum over every channel AND pixel of the sample before any D can be written.
// Backward, with u[n,p] = sum_k dD F and dT = grad_T + u:
//   dc_p = dT_p / Z - sum_q dT_q c_q / Z^2  (Z = sum_p c + eps),
//   dF = dD T + dc S,  dS[n,k] = sum_p dc F:
// contract (c and u in one pass over F, dD) -> per sample (dc) -> scatter (dF, dS).
#include "cuda/sample.cuh"
#include "cuda/tile_ops.h"

namespace attnfast {
namespace cuda {
namespace {

// c (and u) of sample n from the contract sums into buf[0:P] (and buf[P:2P]); returns Z.
__device__ float column_sums(const Partials& sums, int64_t n, int64_t p, int slots, float eps,
                             float* buf) {
  float z[1] = {0.f};
  ATTNFAST_BLOCK_LOOP(i, p) {
    for (int j = 0; j < slots; ++j) buf[j * p + i] = sums.sum(j, n, i);
    z[0] += buf[i];
  }
  block_sum(z);  // also makes buf visible to the block
  return z[0] + eps;
}

struct SpatialForward {
  Partials sums;
  int64_t p;
  float eps;
  float* spatial;
  __device__ void operator()(int64_t n, float* buf) const {
    const float z = column_sums(sums, n, p, 1, eps, buf);
    ATTNFAST_BLOCK_LOOP(i, p) spatial[n * p + i] = buf[i] / z;
  }
};

struct SpatialBackward {
  Partials sums;
  int64_t p;
  float eps;
  const float* grad_spatial;
  float* dc;
  __device__ void operator()(int64_t n, float* buf) const {
    const float z = column_sums(sums, n, p, 2, eps, buf);
    const float *c = buf, *u = buf + p, *gs = grad_spatial + n * p;
    float s[1] = {0.f};  // sum_q dT_q c_q
    ATTNFAST_BLOCK_LOOP(i, p) s[0] += (gs[i] + u[i]) * c[i];
    block_sum(s);
    ATTNFAST_BLOCK_LOOP(i, p) dc[n * p + i] = (gs[i] + u[i]) / z - s[0] / (z * z);
  }
};

}  // namespace

cudaError_t channel_spatial_attention(DType dt, const Geometry& g, const void* features,
                                      const float* channel_weights, float eps, void* out,
                                      float* spatial, Scratch scratch, cudaStream_t stream) {
  ContractArgs c{};
  c.geo = g, c.f = features, c.v[0] = {channel_weights, -1};
  Partials sums{};
  ATTNFAST_CUDA_TRY(contract(dt, c, scratch, stream, &sums));
  ATTNFAST_CUDA_TRY(run_per_sample(SpatialForward{sums, g.p(), eps, spatial}, g.n, g.p(),
                                   &scratch, stream));
  ScatterArgs d{};  // D = T F: F as the big V of class 0
  d.geo = g, d.g[0] = features, d.r[0] = spatial, d.scale[0] = 1.f, d.d_f = out;
  return scatter(dt, d, scratch, stream);
}

cudaError_t channel_spatial_attention_backward(DType dt, const Geometry& g, const void* grad_out,
                                               const float* grad_spatial, const void* features,
                                               const float* channel_weights,
                                               const float* spatial, float eps, void* d_features,
                                               float* d_channel_weights, Scratch scratch,
                                               cudaStream_t stream) {
  ContractArgs c{};  // slot 0: c = sum_k S F, slot 1: u = sum_k dD F
  c.geo = g, c.f = features, c.v[0] = {channel_weights, -1}, c.g[1] = grad_out;
  Partials sums{};
  ATTNFAST_CUDA_TRY(contract(dt, c, scratch, stream, &sums));
  float* dc = scratch.floats(g.n * g.p());
  if (!dc) return cudaErrorMemoryAllocation;
  ATTNFAST_CUDA_TRY(run_per_sample(SpatialBackward{sums, g.p(), eps, grad_spatial, dc}, g.n,
                                   2 * g.p(), &scratch, stream));
  ScatterArgs d{};  // dF = T dD (class 0, big V = dD) + dc S (class 1, small); dS = sum_p dc F
  d.geo = g, d.f = features;
  d.g[0] = grad_out, d.r[0] = spatial, d.scale[0] = 1.f;
  d.v[1] = {channel_weights, -1}, d.r[1] = dc, d.scale[1] = 1.f;
  d.d_f = d_features, d.d_w[1] = d_channel_weights;
  return scatter(dt, d, scratch, stream);
}

}  // namespace cuda
}  // namespace attnfast
