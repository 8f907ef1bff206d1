// attention_consistency: v[n] = alpha - N / S, N = sum_p a M, S = sum_p a + eps -- Eq. 8.
// One block per sample: a two-value block sum, then (backward) the per-pixel gradient.
#include "cuda/sample.cuh"

namespace attnfast {
namespace cuda {
namespace {

// {N, S - eps} of sample n.
__device__ void cons_sums(const float* a, const float* m, int64_t o, int64_t p, float (&v)[2]) {
  v[0] = v[1] = 0.f;
  ATTNFAST_BLOCK_LOOP(i, p) {
    v[0] += a[o + i] * m[o + i];
    v[1] += a[o + i];
  }
  block_sum(v);
}

struct ConsForward {
  const float *a, *m;
  int64_t p;
  float alpha, eps;
  float* out;
  __device__ void operator()(int64_t n, float*) const {
    float v[2];
    cons_sums(a, m, n * p, p, v);
    if (threadIdx.x == 0) out[n] = cons_value(v[0], v[1], alpha, eps);
  }
};

struct ConsBackward {
  const float *a, *m;
  int64_t p;
  float eps;
  const float* g;
  float *da, *dm;
  __device__ void operator()(int64_t n, float*) const {
    float v[2];
    const int64_t o = n * p;
    cons_sums(a, m, o, p, v);
    const ConsGrad c = cons_grad(g[n], v[0], v[1], eps);
    ATTNFAST_BLOCK_LOOP(i, p) {
      da[o + i] = c.gm * m[o + i] + c.gs;
      if (dm) dm[o + i] = c.gm * a[o + i];
    }
  }
};

}  // namespace

cudaError_t attention_consistency(int64_t n, int64_t p, const float* attn, const float* mask,
                                  float alpha, float eps, float* out, cudaStream_t stream) {
  return run_per_sample(ConsForward{attn, mask, p, alpha, eps, out}, n, 0, nullptr, stream);
}

cudaError_t attention_consistency_backward(int64_t n, int64_t p, const float* grad,
                                           const float* attn, const float* mask, float eps,
                                           float* d_attn, float* d_mask, cudaStream_t stream) {
  return run_per_sample(ConsBackward{attn, mask, p, eps, grad, d_attn, d_mask}, n, 0, nullptr,
                        stream);
}

}  // namespace cuda
}  // namespace attnfast
