// normalize_attention: u[n,p] = a[n,p] / d_n, d_n = max(max_p a[n,p], 0) + eps (docs/SPEC.md decisions 7, 12).
// One block per sample: a block max, then the division; the backward adds the d-term at the
// pixels tied at the max (split evenly, as torch.amax), where the max is >= 0.
#include "cuda/sample.cuh"

namespace attnfast {
namespace cuda {
namespace {

struct NormalizeForward {
  const float* a;
  float* out;
  int64_t p;
  float eps;
  __device__ void operator()(int64_t n, float*) const {
    const float* an = a + n * p;
    const MapStat s = map_stat(an, p, eps);
    ATTNFAST_BLOCK_LOOP(i, p) out[n * p + i] = an[i] / s.d;
  }
};

struct NormalizeBackward {
  const float *g, *a;
  float* da;
  int64_t p;
  float eps;
  __device__ void operator()(int64_t n, float*) const {
    const float *an = a + n * p, *gn = g + n * p;
    const MapStat s = map_stat(an, p, eps);
    float v[2] = {0.f, 0.f};  // sum g a, ties at the max
    ATTNFAST_BLOCK_LOOP(i, p) {
      v[0] += gn[i] * an[i];
      v[1] += an[i] == s.mx ? 1.f : 0.f;
    }
    block_sum(v);
    const float share = norm_share(s, v[0], v[1]);
    ATTNFAST_BLOCK_LOOP(i, p) da[n * p + i] = norm_grad(gn[i], an[i], s, share);
  }
};

}  // namespace

cudaError_t normalize_attention(int64_t n, int64_t p, const float* attn, float eps, float* out,
                                cudaStream_t stream) {
  return run_per_sample(NormalizeForward{attn, out, p, eps}, n, 0, nullptr, stream);
}

cudaError_t normalize_attention_backward(int64_t n, int64_t p, const float* grad,
                                         const float* attn, float eps, float* d_attn,
                                         cudaStream_t stream) {
  return run_per_sample(NormalizeBackward{grad, attn, d_attn, p, eps}, n, 0, nullptr, stream);
}

}  // namespace cuda
}  // namespace attnfast
