// The host layer: what every attnfast op does with its tensors before the math, written once for
// the C++ CPU kernels (csrc/cpu/) and the CUDA glue (csrc/cuda/glue/). Device differences are
// the `Target` parameter. Per op, csrc/host/<family>.h holds the C++ entry point the dispatcher
// calls (its signature is the schema's, attnfast/_schema.py): it checks the arguments, brings
// them to the forms below, allocates the outputs, runs the backend's kernel on the prepared
// arguments (one struct per op) and returns the outputs.
//
// Forms the kernels read (the contract of attnfast/_schema.py):
//  * big tensors (N x K x H x W) of one call share ONE layout, the "lead" tensor's: the lead
//    itself when it is dense and pixel-strided (p = i * W + j has one stride: NCHW and
//    channels_last are read in place), else a contiguous copy; another big input is copied to
//    that layout only when its own differs;
//  * small tensors (maps N x H x W, weights N x K, per-sample N) are contiguous, in the
//    accumulation dtype: float32, or float64 when the target takes float64 and the input is;
//  * the gradient of a big input is returned like the input (dtype, memory format): written in
//    place when that is the lead layout, else written in the lead layout and copied (BigOut).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <tuple>

#include "common/defs.h"

namespace attnfast::host {

using at::Tensor;
using Tensor2 = std::tuple<Tensor, Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;

// What a backend's kernels take: tensors on `device`; float64 big tensors (and float64
// accumulation) only when `float64`; error messages start with `prefix`.
struct Target {
  c10::DeviceType device;
  bool float64;
  const char* prefix;
};
inline constexpr Target kCpu{c10::DeviceType::CPU, true, "attnfast: "};
inline constexpr Target kCuda{c10::DeviceType::CUDA, false, "attnfast (CUDA): "};

// A backend's kernel of one op: it reads the prepared arguments (one struct per op, inputs first,
// then the outputs it writes).
template <class Args> using Kernel = void (*)(const Args&);

// Inside `TORCH_LIBRARY_IMPL(attnfast, <dispatch key>, m)`: registers the entry points of op `op`
// and of `op`_backward (csrc/host/<family>.h) for target `tg` (kCpu, kCuda) with the backend's
// kernels `run` (overloads, one per argument struct). The op's name is written once, so the
// registered name, the entry point and the argument struct cannot drift apart.
#define ATTNFAST_IMPL(m, tg, op, run)                                     \
  m.impl(#op, &::attnfast::host::op<::attnfast::host::tg, run>);          \
  m.impl(#op "_backward", &::attnfast::host::op##_backward<::attnfast::host::tg, run>)

// ---------------------------------------------------------------- checks
void check_device(const Tensor& t, const char* name, const Target& tg);
void check_dim(const Tensor& t, const char* name, int64_t dim, const char* what, const Target& tg);
void check_shape(const Tensor& t, const char* name, at::IntArrayRef want, const Target& tg);
// ValueError unless a map (3-D) or big (4-D) tensor has H >= 1 and W >= 1 (docs/SPEC.md decision 17);
// done by map_in and BigCall for every map and big input.
void check_spatial(const Tensor& t, const char* name, const Target& tg);
// ValueError unless the big tensor t has K >= 1 (ops that average over the channels).
void check_channels(const Tensor& t, const char* name, const char* what, const Target& tg);

// ---------------------------------------------------------------- small tensors
// float64 if the target takes it and any of `ts` is float64, else float32.
at::ScalarType acc_dtype(std::initializer_list<Tensor> ts, const Target& tg);
// t (of shape `want`) contiguous in dtype: no copy when it already is.
Tensor small(const Tensor& t, const char* name, at::IntArrayRef want, at::ScalarType dtype,
             const Target& tg);
// A map argument: 3-D N x H x W, contiguous, in its accumulation dtype.
Tensor map_in(const Tensor& t, const char* name, const Target& tg);

// ---------------------------------------------------------------- layout of big tensors
// N x K x H x W tensors are read as N x K x P (p = i * W + j) through element strides.
inline int64_t pixels(const Tensor& t) { return t.size(2) * t.size(3); }
bool pixel_strided(const Tensor& t);
Layout layout_of(const Tensor& t);

// The gradient of an input: `user` is allocated like the caller's input (empty_like: its dtype
// and memory format); kernels write `work`, which has the layout of `ref` (a 4-D input) or is
// contiguous in the accumulation dtype of ref (a small input); `done()` copies work into user
// when they differ.
struct BigOut {
  Tensor user, work;
  BigOut() = default;
  BigOut(const Tensor& input, const Tensor& ref);
  Tensor done() const;
};

// The big tensors of one call: `f` is the lead one (see above); every other argument is checked
// against its sizes, dtype and device, and small tensors and outputs are made from it.
struct BigCall {
  const Target& tg;
  const char* name;  // of the lead, for messages
  Tensor f;
  int64_t n, k, h, w;
  at::ScalarType acc;

  BigCall(const Tensor& lead, const char* lead_name, const Target& target);
  // Another big input: same sizes, dtype and device as f, in f's layout.
  Tensor big(const Tensor& t, const char* t_name) const;
  // A big input of `rows` x K x H x W (same K, H, W, dtype and device as f) in its own layout
  // when that is dense and pixel-strided (read with its own strides), else a contiguous copy.
  Tensor big_rows(const Tensor& t, const char* t_name, int64_t rows) const;
  // Small inputs of shape N x K, N x H x W, N.
  Tensor nk(const Tensor& t, const char* t_name) const { return small(t, t_name, {n, k}, acc, tg); }
  Tensor map(const Tensor& t, const char* t_name) const {
    return small(t, t_name, {n, h, w}, acc, tg);
  }
  // Outputs.
  Tensor new_nk() const { return at::empty({n, k}, f.options().dtype(acc)); }
  Tensor new_map() const { return at::empty({n, h, w}, f.options().dtype(acc)); }
  Tensor new_per_sample() const { return at::empty({n}, f.options().dtype(acc)); }
  BigOut grad_of(const Tensor& input) const { return BigOut(input, f); }
};

}  // namespace attnfast::host
