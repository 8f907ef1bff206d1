// Per-sample kernels: one block of kThreads threads per sample (grid-strided over N), for the
// map-level math (maps are N x P with P = H*W small: a 56 x 56 map is 12.5 KiB of float32) and
// the per-sample losses. A body gets its sample and a float buffer: dynamic shared memory when
// it fits the device's opt-in limit, else a slice of a global workspace (same code).
//
// The block-parallel forms of the map math of common/maps.h live here; they share its scalar
// rules (lerp_at, relu, sigmoid, min_grad), and the per-pixel gradient formulas below are the
// ones of maps.h's *_backward_add written per pixel.
#pragma once

#include <cmath>

#include "common/maps.h"
#include "cuda/common.cuh"

namespace attnfast {
namespace cuda {

// Loops i over [0, count) spread over the threads of the block.
#define ATTNFAST_BLOCK_LOOP(i, count) \
  for (int64_t i = threadIdx.x; i < (count); i += kThreads)

template <class Body>
__global__ void __launch_bounds__(kThreads) per_sample_kernel(const Body body, int64_t n,
                                                              float* global_buf,
                                                              int64_t buf_floats) {
  ATTNFAST_DYNAMIC_SMEM(smem);
  float* buf = global_buf ? global_buf + int64_t(blockIdx.x) * buf_floats : smem;
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    __syncthreads();  // the previous sample is done with buf
    body(i, buf);
  }
}

// Runs body(sample, buf) for every sample; `buf` holds `buf_floats` floats private to the block.
template <class Body>
cudaError_t run_per_sample(const Body& body, int64_t n, int64_t buf_floats,
                           const Scratch* scratch, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const size_t bytes = static_cast<size_t>(buf_floats) * sizeof(float);
  const size_t reserve = 2048;  // static shared memory of the block reductions
  if (bytes + reserve <= max_smem_per_block())
    return launch(per_sample_kernel<Body>, min_of<int64_t>(n, 0x7fffffff), bytes, stream, body,
                  n, static_cast<float*>(nullptr), buf_floats);
  if (!scratch) return cudaErrorInvalidValue;
  const int64_t grid = min_of<int64_t>(n, 4 * int64_t(sm_count()));
  float* global_buf = scratch->floats(grid * buf_floats);
  if (!global_buf) return cudaErrorMemoryAllocation;
  return launch(per_sample_kernel<Body>, grid, 0, stream, body, n, global_buf, buf_floats);
}

// ---------------------------------------------------------------- normalize
// mx = max_p a_p (NaN when any a_p is; -inf for P = 0), d = max(mx, 0) + eps, as maps.h.
struct MapStat {
  float mx, d;
};

template <int NV>
__device__ __forceinline__ void map_stats(const float* const (&a)[NV], const int64_t (&P)[NV],
                                          float eps, MapStat (&out)[NV]) {
  float m[NV];
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    m[j] = -INFINITY;
    ATTNFAST_BLOCK_LOOP(i, P[j]) m[j] = Max{}(m[j], a[j][i]);
  }
  block_max(m);
#pragma unroll
  for (int j = 0; j < NV; ++j) out[j] = {m[j], relu(m[j]) + eps};
}

__device__ __forceinline__ MapStat map_stat(const float* a, int64_t P, float eps) {
  const float* maps[1] = {a};
  const int64_t sizes[1] = {P};
  MapStat s[1];
  map_stats(maps, sizes, eps, s);
  return s[0];
}

// Backward of u = a / d: da_p = g_p / d + share at the pixels tied at the max, where
// share = -sum_q g_q a_q / d^2 / ties when max >= 0 (clamp_min passes there), else 0.
ATTNFAST_HD inline float norm_share(const MapStat& s, float dot, float ties) {
  return s.mx >= 0.f && ties > 0.f ? -dot / (s.d * s.d) / ties : 0.f;
}
// A NaN share (an Inf in the map) reaches every pixel, as autograd's amax backward (NaN * 0).
ATTNFAST_HD inline float norm_grad(float g, float a, const MapStat& s, float share) {
  return g / s.d + (a == s.mx || share != share ? share : 0.f);
}

// ---------------------------------------------------------------- soft mask
struct MaskGeom {
  int64_t h, w, oh, ow;  // source map h x w, mask oh x ow
  float sigma, omega;
  ATTNFAST_HD bool same() const { return h == oh && w == ow; }
};

// R(a / d)[q]: the bilinear resize (align_corners=False, lerp_at) of the normalized map.
ATTNFAST_HD inline float resized_at(const float* a, float d, const MaskGeom& m, int64_t q) {
  if (m.same()) return a[q] / d;
  const Lerp<float> y = lerp_at<float>(q / m.ow, m.h, m.oh);
  const Lerp<float> x = lerp_at<float>(q % m.ow, m.w, m.ow);
  const float* r0 = a + y.i0 * m.w;
  const float* r1 = a + y.i1 * m.w;
  return y.l0 * (x.l0 * (r0[x.i0] / d) + x.l1 * (r0[x.i1] / d)) +
         y.l1 * (x.l0 * (r1[x.i0] / d) + x.l1 * (r1[x.i1] / d));
}

// M[q] = sigmoid(omega (R(a / d)[q] - sigma)).
ATTNFAST_HD inline float mask_at(const float* a, float d, const MaskGeom& m, int64_t q) {
  return sigmoid(m.omega * (resized_at(a, d, m, q) - m.sigma));
}

// dL/dz of z = omega (R(u) - sigma) given dL/dM = g at mask value M (sigmoid backward).
ATTNFAST_HD inline float mask_z_grad(float g, float mask, float omega) {
  return g * omega * mask * (1.f - mask);
}

// Weight of source index b in output index j of a 1-D resize in -> out (lerp_at), and the
// range [lo, hi] of outputs that can use b (a superset: lerp_at's source index is monotone in
// j; 2 outputs of margin either side cover rounding).
ATTNFAST_HD inline float lerp_weight(int64_t j, int64_t b, int64_t in, int64_t out) {
  const Lerp<float> l = lerp_at<float>(j, in, out);
  return (l.i0 == b ? l.l0 : 0.f) + (l.i1 == b ? l.l1 : 0.f);
}
ATTNFAST_HD inline void lerp_users(int64_t b, int64_t in, int64_t out, int64_t& lo, int64_t& hi) {
  const float inv = static_cast<float>(out) / static_cast<float>(in);
  lo = static_cast<int64_t>(floorf((static_cast<float>(b) - 0.5f) * inv - 0.5f)) - 2;
  hi = static_cast<int64_t>(ceilf((static_cast<float>(b) + 1.5f) * inv - 0.5f)) + 2;
  lo = lo < 0 ? 0 : lo;
  hi = hi > out - 1 ? out - 1 : hi;
}

// du (h x w) += R^T dz (dz is oh x ow): the adjoint of the resize as two separable gathers
// through t (oh x w), so every output is a fixed-order sum (no atomics). dz must be complete
// (synced) on entry; du is complete on return.
__device__ inline void resize_adjoint_add(const float* dz, const MaskGeom& m, float* t, float* du) {
  if (m.same()) {
    ATTNFAST_BLOCK_LOOP(i, m.h * m.w) du[i] += dz[i];
    __syncthreads();
    return;
  }
  ATTNFAST_BLOCK_LOOP(e, m.oh * m.w) {  // t[i, b] = sum_j W_w(j, b) dz[i, j]
    const int64_t i = e / m.w, b = e % m.w;
    int64_t lo, hi;
    lerp_users(b, m.w, m.ow, lo, hi);
    float v = 0.f;
    for (int64_t j = lo; j <= hi; ++j) v += lerp_weight(j, b, m.w, m.ow) * dz[i * m.ow + j];
    t[e] = v;
  }
  __syncthreads();
  ATTNFAST_BLOCK_LOOP(e, m.h * m.w) {  // du[a, b] += sum_i W_h(i, a) t[i, b]
    const int64_t a = e / m.w, b = e % m.w;
    int64_t lo, hi;
    lerp_users(a, m.h, m.oh, lo, hi);
    float v = 0.f;
    for (int64_t i = lo; i <= hi; ++i) v += lerp_weight(i, a, m.h, m.oh) * t[i * m.w + b];
    du[e] += v;
  }
  __syncthreads();
}

// ---------------------------------------------------------------- soft-IoU, consistency
// v = 2 I / S, I = sum min(a,b) M, S = sum (a + b) + eps:
//   dv/da_p = gi M_p min_grad(a_p, b_p) + gs,  dv/dM_p = gi min(a_p, b_p)
struct IouGrad {
  float gi, gs;
};
ATTNFAST_HD inline float iou_value(float inter, float total, float eps) {
  return 2.f * inter / (total + eps);
}
ATTNFAST_HD inline IouGrad iou_grad(float g, float inter, float total, float eps) {
  const float s = total + eps;
  return {2.f * g / s, -2.f * g * inter / (s * s)};
}
ATTNFAST_HD inline float min2(float a, float b) { return nan_min(a, b); }  // NaN wins
ATTNFAST_HD inline float iou_grad_a(const IouGrad& c, float a, float b, float m) {
  return c.gi * m * min_grad(a, b) + c.gs;
}

// v = alpha - N / S, N = sum a M, S = sum a + eps:  dv/da_p = gm M_p + gs,  dv/dM_p = gm a_p
struct ConsGrad {
  float gm, gs;
};
ATTNFAST_HD inline float cons_value(float num, float den, float alpha, float eps) {
  return alpha - num / (den + eps);
}
ATTNFAST_HD inline ConsGrad cons_grad(float g, float num, float den, float eps) {
  const float s = den + eps;
  return {-g / s, g * num / (s * s)};
}

}  // namespace cuda
}  // namespace attnfast
