// soft_mask: M = sigmoid(omega (R(a / d) - sigma)), d = max(max a, 0) + eps, R the bilinear
// resize h x w -> out_h x out_w (align_corners=False, identity at equal size) -- Eq. 7.
// One block per sample. Backward: dz = g omega M (1 - M), du = R^T dz (two separable gathers,
// deterministic), then the normalize backward; its buffers (dz, t, du) sit in shared memory.
#include "cuda/sample.cuh"

namespace attnfast {
namespace cuda {
namespace {

struct MaskForward {
  const float* a;
  float* out;
  MaskGeom m;
  float eps;
  __device__ void operator()(int64_t n, float*) const {
    const int64_t p = m.h * m.w, q = m.oh * m.ow;
    const float* an = a + n * p;
    const MapStat s = map_stat(an, p, eps);
    ATTNFAST_BLOCK_LOOP(i, q) out[n * q + i] = mask_at(an, s.d, m, i);
  }
};

struct MaskBackward {
  const float *g, *a;
  float* da;
  MaskGeom m;
  float eps;
  static int64_t buf_floats(const MaskGeom& m) { return m.oh * m.ow + m.oh * m.w + m.h * m.w; }
  __device__ void operator()(int64_t n, float* buf) const {
    const int64_t p = m.h * m.w, q = m.oh * m.ow;
    const float *an = a + n * p, *gn = g + n * q;
    float *dz = buf, *t = dz + q, *du = t + m.oh * m.w;
    const MapStat s = map_stat(an, p, eps);
    ATTNFAST_BLOCK_LOOP(i, q) dz[i] = mask_z_grad(gn[i], mask_at(an, s.d, m, i), m.omega);
    ATTNFAST_BLOCK_LOOP(i, p) du[i] = 0.f;
    __syncthreads();
    resize_adjoint_add(dz, m, t, du);
    float v[2] = {0.f, 0.f};  // sum du a, ties at the max
    ATTNFAST_BLOCK_LOOP(i, p) {
      v[0] += du[i] * an[i];
      v[1] += an[i] == s.mx ? 1.f : 0.f;
    }
    block_sum(v);
    const float share = norm_share(s, v[0], v[1]);
    ATTNFAST_BLOCK_LOOP(i, p) da[n * p + i] = norm_grad(du[i], an[i], s, share);
  }
};

MaskGeom geom(const MaskArgs& m) { return {m.h, m.w, m.out_h, m.out_w, m.sigma, m.omega}; }

}  // namespace

cudaError_t soft_mask(int64_t n, const MaskArgs& m, const float* attn, float* out,
                      cudaStream_t stream) {
  return run_per_sample(MaskForward{attn, out, geom(m), m.eps}, n, 0, nullptr, stream);
}

cudaError_t soft_mask_backward(int64_t n, const MaskArgs& m, const float* grad, const float* attn,
                               float* d_attn, Scratch scratch, cudaStream_t stream) {
  const MaskGeom g = geom(m);
  return run_per_sample(MaskBackward{grad, attn, d_attn, g, m.eps}, n,
                        MaskBackward::buf_floats(g), &scratch, stream);
}

}  // namespace cuda
}  // namespace attnfast
