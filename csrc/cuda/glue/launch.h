// The CUDA end of the host layer (csrc/host/): the prepared arguments of an op as the launchers
// of csrc/cuda/api.h take them (dtype tag, geometry, raw pointers), and `launch`, which runs one
// launcher on the tensors' device: device guard, current stream, scratch memory from the caching
// allocator, launch check. Each csrc/cuda/glue/<family>.cpp adapts a family of ops with these and
// registers them for the CUDA dispatch key.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <type_traits>
#include <vector>

#include "cuda/api.h"
#include "host/host.h"

namespace attnfast::cuda::glue {

using at::Tensor;

// The element type of a big tensor (the host layer let only these three through for CUDA).
inline DType dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_INTERNAL_ASSERT(t.scalar_type() == at::kFloat, "attnfast (CUDA): dtype ",
                            t.scalar_type());
      return DType::kFloat32;
  }
}

// Sizes and element strides of a lead big tensor (common/defs.h Layout).
inline Geometry geometry(const Tensor& f) {
  return {f.size(0), f.size(1), f.size(2), f.size(3), host::layout_of(f)};
}

// Pointers of small float32 tensors and optional inputs; null when empty (the launchers'
// "absent").
inline float* fptr(const Tensor& t) { return t.numel() ? t.data_ptr<float>() : nullptr; }
inline void* vptr(const Tensor& t) { return t.numel() ? t.data_ptr() : nullptr; }

inline float f32(double x) { return static_cast<float>(x); }

// Temporary device memory from the caching allocator, kept until `launch` returns (its reuse is
// ordered on the current stream, so the enqueued work may still use it after that).
class TorchScratch {
 public:
  explicit TorchScratch(const Tensor& like) : options_(like.options().dtype(at::kByte)) {}
  Scratch handle() { return {this, &alloc}; }

 private:
  static void* alloc(void* ctx, size_t bytes) {
    auto* self = static_cast<TorchScratch*>(ctx);
    self->keep_.push_back(at::empty({static_cast<int64_t>(bytes)}, self->options_));
    return self->keep_.back().data_ptr();
  }
  at::TensorOptions options_;
  std::vector<Tensor> keep_;
};

// launcher(args..., [scratch,] stream) on the device of `on`, then the launch check. The
// launchers of api.h end with (Scratch, cudaStream_t) or with (cudaStream_t) alone.
template <class Launcher, class... Args>
void launch(const Tensor& on, Launcher launcher, Args... args) {
  const c10::cuda::CUDAGuard guard(on.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  cudaError_t err;
  if constexpr (std::is_invocable_v<Launcher, Args..., Scratch, cudaStream_t>) {
    TorchScratch scratch(on);
    err = launcher(args..., scratch.handle(), stream);
  } else {
    static_assert(std::is_invocable_v<Launcher, Args..., cudaStream_t>,
                  "launch: the arguments do not match the launcher's parameters (api.h)");
    err = launcher(args..., stream);
  }
  C10_CUDA_CHECK(err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace attnfast::cuda::glue
