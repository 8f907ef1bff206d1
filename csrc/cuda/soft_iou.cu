// soft_iou: v[n] = 2 I / S, I = sum_p min(a,b) M, S = sum_p (a + b) + eps -- Eq. 6 (M = 1 when
// the mask is null). One block per sample: a two-value block sum, then (backward) the
// per-pixel gradient; ties of min split 1/2 - 1/2 (min_grad).
#include "cuda/sample.cuh"

namespace attnfast {
namespace cuda {
namespace {

struct IouMaps {
  const float *a, *b, *m;
  int64_t p;
  // {I, S - eps} of sample n.
  __device__ void sums(int64_t n, float (&v)[2]) const {
    const int64_t o = n * p;
    v[0] = v[1] = 0.f;
    ATTNFAST_BLOCK_LOOP(i, p) {
      const float x = a[o + i], y = b[o + i];
      v[0] += m ? min2(x, y) * m[o + i] : min2(x, y);
      v[1] += x + y;
    }
    block_sum(v);
  }
};

struct IouForward {
  IouMaps in;
  float eps;
  float* out;
  __device__ void operator()(int64_t n, float*) const {
    float v[2];
    in.sums(n, v);
    if (threadIdx.x == 0) out[n] = iou_value(v[0], v[1], eps);
  }
};

struct IouBackward {
  IouMaps in;
  float eps;
  const float* g;
  float *da, *db, *dm;
  __device__ void operator()(int64_t n, float*) const {
    float v[2];
    in.sums(n, v);
    const IouGrad c = iou_grad(g[n], v[0], v[1], eps);
    const int64_t o = n * in.p;
    ATTNFAST_BLOCK_LOOP(i, in.p) {
      const float x = in.a[o + i], y = in.b[o + i], mk = in.m ? in.m[o + i] : 1.f;
      da[o + i] = iou_grad_a(c, x, y, mk);
      db[o + i] = iou_grad_a(c, y, x, mk);
      if (dm) dm[o + i] = c.gi * min2(x, y);
    }
  }
};

}  // namespace

cudaError_t soft_iou(int64_t n, int64_t p, const float* a, const float* b, const float* mask,
                     float eps, float* out, cudaStream_t stream) {
  return run_per_sample(IouForward{{a, b, mask, p}, eps, out}, n, 0, nullptr, stream);
}

cudaError_t soft_iou_backward(int64_t n, int64_t p, const float* grad, const float* a,
                              const float* b, const float* mask, float eps, float* d_a,
                              float* d_b, float* d_mask, cudaStream_t stream) {
  return run_per_sample(IouBackward{{a, b, mask, p}, eps, grad, d_a, d_b, mask ? d_mask : nullptr},
                        n, 0, nullptr, stream);
}

}  // namespace cuda
}  // namespace attnfast
