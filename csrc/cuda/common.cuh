// Device helpers every attnfast CUDA kernel shares: dtype conversion, 16-byte vector runs,
// deterministic warp/block reductions, the dtype dispatch, device limits and the launch helper.
// Framework-free (CUDA headers only). Under ATTNFAST_HOST_EMU the same code compiles with a
// host C++ compiler and runs on the CPU through cuda/host_emu.h (a test harness, not a backend).
#pragma once

#ifdef ATTNFAST_HOST_EMU
#include "cuda/host_emu.h"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/defs.h"
#include "cuda/api.h"

#ifndef ATTNFAST_EMU_CHECK_ALIGNED
#define ATTNFAST_EMU_CHECK_ALIGNED(p, bytes) ((void)0)
#define ATTNFAST_EMU_TRACE_PLAN(g, row) ((void)0)
#endif

#ifdef ATTNFAST_HOST_EMU
#define ATTNFAST_DYNAMIC_SMEM(name) float* name = ::attnfast_emu::dynamic_smem()
#else
#define ATTNFAST_DYNAMIC_SMEM(name)                              \
  extern __shared__ __align__(16) unsigned char attnfast_smem_[]; \
  float* name = reinterpret_cast<float*>(attnfast_smem_)
#endif

// Returns from the enclosing launcher on a CUDA error.
#define ATTNFAST_CUDA_TRY(expr)               \
  do {                                        \
    const cudaError_t attnfast_err_ = (expr); \
    if (attnfast_err_ != cudaSuccess) return attnfast_err_; \
  } while (0)

namespace attnfast {
namespace cuda {

constexpr int kThreads = 256;  // threads of every block
constexpr int kWarps = kThreads / 32;

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
template <class T> __host__ __device__ __forceinline__ T min_of(T a, T b) { return b < a ? b : a; }

// ---------------------------------------------------------------- dtype
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// fn(T{}) with T the element type of `dt`.
template <class Fn> cudaError_t dispatch(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::kFloat32: return fn(float{});
    case DType::kFloat16: return fn(__half{});
    case DType::kBFloat16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// ---------------------------------------------------------------- vector runs
// V consecutive elements (16 bytes for V = 16 / sizeof(T)), loaded or stored as one unit.
template <class T, int V> struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// A run of V elements starting at p: one aligned 16-byte access when count == V > 1 (the
// planner only picks V > 1 when the run's elements are adjacent and every run start is
// aligned), else element by element for i < count (with V == 1 only p[0] is touched). Loaded
// elements beyond count are 0. Runs stay packed in T until used (half the registers for
// 16-bit types).
template <class T, int V>
__device__ __forceinline__ Pack<T, V> load_run(const T* p, int count) {
  Pack<T, V> pk;
  if (V > 1 && count == V) {
    ATTNFAST_EMU_CHECK_ALIGNED(p, sizeof(Pack<T, V>));
    pk = *reinterpret_cast<const Pack<T, V>*>(p);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) pk.v[i] = i < count ? p[i] : from_float<T>(0.f);
  }
  return pk;
}

template <class T, int V>
__device__ __forceinline__ void store_run(T* p, int count, const Pack<T, V>& pk) {
  if (V > 1 && count == V) {
    ATTNFAST_EMU_CHECK_ALIGNED(p, sizeof(Pack<T, V>));
    *reinterpret_cast<Pack<T, V>*>(p) = pk;
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i)
      if (i < count) p[i] = pk.v[i];
  }
}

// ---------------------------------------------------------------- reductions
struct Sum {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
// max that keeps the first operand unless the second is larger (NaN never wins), as map_max.
struct Max {
  // NaN-propagating, as torch.amax (docs/SPEC.md decision 15): a NaN on either side wins.
  __device__ __forceinline__ float operator()(float a, float b) const { return nan_max(b, a); }
};

// Butterfly over the `width` lanes of each lane group: every lane ends with the same value (a
// fixed tree, so the result is deterministic).
template <int NV, class Op>
__device__ __forceinline__ void warp_reduce(float (&v)[NV], Op op, int width = 32) {
  for (int off = width / 2; off > 0; off /= 2)
#pragma unroll
    for (int j = 0; j < NV; ++j) v[j] = op(v[j], __shfl_xor_sync(0xffffffffu, v[j], off, width));
}

// Reduces v over the whole block (blockDim.x == kThreads); every thread gets the result. All
// threads must call it. Deterministic: warp butterflies, then the warps in a fixed order.
template <int NV, class Op> __device__ __forceinline__ void block_reduce(float (&v)[NV], Op op) {
  __shared__ float partial[NV][kWarps];
  warp_reduce(v, op);
  __syncthreads();  // the previous call's readers are done with `partial`
  if ((threadIdx.x & 31) == 0)
#pragma unroll
    for (int j = 0; j < NV; ++j) partial[j][threadIdx.x >> 5] = v[j];
  __syncthreads();
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    float r = partial[j][0];
    for (int w = 1; w < kWarps; ++w) r = op(r, partial[j][w]);
    v[j] = r;
  }
}

template <int NV> __device__ __forceinline__ void block_sum(float (&v)[NV]) {
  block_reduce(v, Sum{});
}
template <int NV> __device__ __forceinline__ void block_max(float (&v)[NV]) {
  block_reduce(v, Max{});
}

// ---------------------------------------------------------------- device limits, launches
// Multiprocessor count and the opt-in shared memory per block of the current device.
int sm_count();
size_t max_smem_per_block();

// Grid-stride 1-D launch size for `count` independent items.
inline unsigned grid_for(int64_t count) {
  const int64_t b = ceil_div(count > 0 ? count : 1, kThreads);
  return static_cast<unsigned>(b < 65536 ? b : 65536);
}

// kernel<<<grid, kThreads, smem_bytes, stream>>>(args...), raising the dynamic shared memory
// limit first when it is above the default 48 KiB.
template <class... P, class... A>
cudaError_t launch(void (*kernel)(P...), int64_t grid, size_t smem_bytes, cudaStream_t stream,
                   A&&... args) {
  if (grid <= 0) return cudaSuccess;
  if (grid > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  if (smem_bytes > 48 * 1024)
    ATTNFAST_CUDA_TRY(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem_bytes)));
#ifdef ATTNFAST_HOST_EMU
  ::attnfast_emu::run(grid, kThreads, smem_bytes, [&] { kernel(args...); });
#else
  kernel<<<static_cast<unsigned>(grid), kThreads, smem_bytes, stream>>>(args...);
#endif
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace attnfast

