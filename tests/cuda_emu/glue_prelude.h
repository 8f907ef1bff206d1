// Included before each csrc/cuda/glue/<family>.cpp of the emulated CUDA backend (emu_ext.py).
// The glue is compiled unchanged; only two of its names are redirected:
//  * TORCH_LIBRARY_IMPL(attnfast, CUDA, m) registers into namespace `attnfast_emu` for the CPU
//    dispatch key (the emulated device is the CPU; the real attnfast ops keep their CPU kernels);
//  * the host target kCuda becomes kCudaEmu: the CUDA target's rules (no float64, the
//    "attnfast (CUDA)" messages) with CPU tensors as the device's.
// c10/cuda/*.h resolve to tests/cuda_emu/stubs/ (guard, current stream, launch checks).
#pragma once

#include <torch/library.h>

#include "host/host.h"

namespace attnfast::host {
inline constexpr Target kCudaEmu{c10::DeviceType::CPU, kCuda.float64, kCuda.prefix};
}  // namespace attnfast::host

#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, k, m) _TORCH_LIBRARY_IMPL(attnfast_emu, CPU, m, C10_UID)
#define kCuda kCudaEmu
