// ggam_loss: L[n] = 0.5 (KL(p'||q') + KL(q'||p')), p = S, q = sigmoid(beta) / sum_k sigmoid(beta),
// x' = max(x, eps) -- GGAM Eq. 5. One block per sample over its K channels; the per-channel
// rules (clamps, dL/dp', dL/dq') are common/ggam.h's.
#include "common/ggam.h"
#include "cuda/sample.cuh"

namespace attnfast {
namespace cuda {
namespace {

// sum_k sigmoid(beta_k) of one sample.
__device__ float sigmoid_total(const float* beta, int64_t k) {
  float v[1] = {0.f};
  ATTNFAST_BLOCK_LOOP(i, k) v[0] += sigmoid(beta[i]);
  block_sum(v);
  return v[0];
}

struct GgamForward {
  const float *s, *beta;
  int64_t k;
  float eps;
  float* out;
  __device__ void operator()(int64_t n, float*) const {
    const float *sn = s + n * k, *bn = beta + n * k;
    const float total = sigmoid_total(bn, k);
    float v[1] = {0.f};
    ATTNFAST_BLOCK_LOOP(i, k) {
      const float pc = clamp_eps(sn[i], eps), qc = clamp_eps(sigmoid(bn[i]) / total, eps);
      v[0] += (pc - qc) * (logf(pc) - logf(qc));
    }
    block_sum(v);
    if (threadIdx.x == 0) out[n] = 0.5f * v[0];
  }
};

struct GgamBackward {
  const float *s, *beta, *g;
  int64_t k;
  float eps;
  float *ds, *dbeta;
  __device__ void operator()(int64_t n, float*) const {
    const int64_t o = n * k;
    const float total = sigmoid_total(beta + o, k);
    float v[1] = {0.f};  // sum_k dL/dq_k q_k
    ATTNFAST_BLOCK_LOOP(i, k) {
      const float q = sigmoid(beta[o + i]) / total;
      v[0] += ggam_kl_grads_at(g[n], s[o + i], q, eps, ds + o + i) * q;
    }
    block_sum(v);
    ATTNFAST_BLOCK_LOOP(i, k) {
      const float sg = sigmoid(beta[o + i]), q = sg / total;
      const float dq = ggam_kl_grads_at(g[n], s[o + i], q, eps, static_cast<float*>(nullptr));
      dbeta[o + i] = (dq - v[0]) / total * sg * (1.f - sg);
    }
  }
};

}  // namespace

cudaError_t ggam_loss(int64_t n, int64_t k, const float* channel_weights,
                      const float* gradcam_weights, float eps, float* out, cudaStream_t stream) {
  return run_per_sample(GgamForward{channel_weights, gradcam_weights, k, eps, out}, n, 0, nullptr,
                        stream);
}

cudaError_t ggam_loss_backward(int64_t n, int64_t k, const float* grad,
                               const float* channel_weights, const float* gradcam_weights,
                               float eps, float* d_channel_weights, float* d_gradcam_weights,
                               cudaStream_t stream) {
  return run_per_sample(GgamBackward{channel_weights, gradcam_weights, grad, k, eps,
                                     d_channel_weights, d_gradcam_weights},
                        n, 0, nullptr, stream);
}

}  // namespace cuda
}  // namespace attnfast
