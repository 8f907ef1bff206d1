// The CUDA runtime calls csrc/cuda makes, for the host emulation (test only): there is one
// "device" (0); its multiprocessor count and opt-in shared memory per block come from EMU_SMS
// (default 2: small grids already split) and EMU_SMEM (bytes, default 232448 as sm_90). Launches
// run synchronously inside `launch` (common.cuh), so there is never a pending error.
#include <cuda_runtime_api.h>

#include <cstdlib>

static int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : dflt;
}

extern "C" {
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  if (attr == cudaDevAttrMultiProcessorCount) *v = env_int("EMU_SMS", 2);
  else if (attr == cudaDevAttrMaxSharedMemoryPerBlockOptin) *v = env_int("EMU_SMEM", 232448);
  else *v = 0;
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
}
