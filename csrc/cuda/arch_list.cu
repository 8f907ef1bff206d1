// The GPU architectures this library's CUDA code was compiled for, as nvcc itself saw them:
// nvcc defines __CUDA_ARCH_LIST__ (CUDA >= 11.5) in host and device passes to the comma-separated
// virtual architectures of the compile, e.g. "800,900" for TORCH_CUDA_ARCH_LIST="8.0;9.0".
// A plain C symbol so that Python reads it with ctypes (attnfast._build.cuda_arch_list) without a
// schema; no kernel, no GPU needed. Compiled as host C++ (tests/cuda_emu) it returns "".
#define ATTNFAST_STR2(...) #__VA_ARGS__
#define ATTNFAST_STR(...) ATTNFAST_STR2(__VA_ARGS__)

extern "C" __attribute__((visibility("default"))) const char* attnfast_cuda_arch_list() {
#ifdef __CUDA_ARCH_LIST__
  return ATTNFAST_STR(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}
