// Stub of c10/cuda/CUDAStream.h for the emulated CUDA backend: one stream, the null stream
// (emulated launches run synchronously).
#pragma once

#include <cuda_runtime_api.h>

namespace c10::cuda {

struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};

inline CUDAStream getCurrentCUDAStream(signed char = -1) { return {}; }

}  // namespace c10::cuda
