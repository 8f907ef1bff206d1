// Stub of c10/cuda/CUDAException.h for the emulated CUDA backend: the same two checks the glue
// uses, raising a c10::Error on a launcher's error code.
#pragma once

#include <cuda_runtime_api.h>

#include <c10/util/Exception.h>

#define C10_CUDA_CHECK(expr)                                                               \
  do {                                                                                     \
    const cudaError_t attnfast_emu_err_ = (expr);                                          \
    TORCH_CHECK(attnfast_emu_err_ == cudaSuccess, "emulated CUDA error ",                  \
                static_cast<int>(attnfast_emu_err_), " from ", #expr);                     \
  } while (0)

#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
