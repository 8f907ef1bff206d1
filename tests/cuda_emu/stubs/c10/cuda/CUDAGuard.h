// Stub of c10/cuda/CUDAGuard.h for the emulated CUDA backend (tests/cuda_emu/README.md): the
// emulated "CUDA device" is the CPU, so the guard only checks that the glue asked for it.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

namespace c10::cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device device) {
    TORCH_CHECK(device.is_cpu(), "attnfast emulated CUDA: tensors must be on the CPU, got ",
                device);
  }
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;
};

}  // namespace c10::cuda
