// Device limits of common.cuh, queried once per device.
#include <atomic>

#include "cuda/common.cuh"

namespace attnfast {
namespace cuda {
namespace {

constexpr int kMaxDevices = 64;

// attribute `attr` of the current device, cached (0 when the query fails).
int cached_attribute(std::atomic<int> (&cache)[kMaxDevices], cudaDeviceAttr attr) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) dev = 0;
  int v = cache[dev].load(std::memory_order_relaxed);
  if (v <= 0) {
    if (cudaDeviceGetAttribute(&v, attr, dev) != cudaSuccess) v = 0;
    cache[dev].store(v, std::memory_order_relaxed);
  }
  return v;
}

std::atomic<int> sm_cache[kMaxDevices];
std::atomic<int> smem_cache[kMaxDevices];

}  // namespace

int sm_count() {
  const int v = cached_attribute(sm_cache, cudaDevAttrMultiProcessorCount);
  return v > 0 ? v : 1;
}

size_t max_smem_per_block() {
  const int v = cached_attribute(smem_cache, cudaDevAttrMaxSharedMemoryPerBlockOptin);
  return static_cast<size_t>(v > 0 ? v : 48 * 1024);
}

}  // namespace cuda
}  // namespace attnfast
