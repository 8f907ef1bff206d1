// Helpers every CPU kernel uses: dtype dispatch and the parallel / traversal loops over the
// layouts of big tensors. Arguments arrive checked and prepared by the host layer (csrc/host/);
// the math itself lives in csrc/common/*.h.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/defs.h"
#include "host/host.h"

namespace attnfast::cpu {

using at::Tensor;
using host::layout_of;
using host::pixels;

// ATTNFAST_DISPATCH_BIG(dtype, name, [&] { ... }) runs the lambda for the dtype of a big tensor
// (float16, bfloat16, float32, float64) with `scalar_t` the element type and `acc_t` the
// accumulation type (float, double for float64) in scope.
#define ATTNFAST_DISPATCH_BIG(TYPE, NAME, ...)                                     \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, [&] {       \
    using acc_t [[maybe_unused]] = at::opmath_type<scalar_t>;                       \
    (__VA_ARGS__)();                                                                 \
  })
// Small tensors (maps, weights, per-sample values) are already in the accumulation dtype.
#define ATTNFAST_DISPATCH_ACC(TYPE, NAME, ...) AT_DISPATCH_FLOATING_TYPES(TYPE, NAME, __VA_ARGS__)

constexpr int64_t kBlock = 256;     // pixels per work item of the per-pixel reductions
constexpr int64_t kChannels = 16;   // channels per work item of the per-channel reductions
constexpr int64_t kGrainWork = 32768;  // elements below which a loop runs on one thread
constexpr int64_t kTile = 256;      // tile extent along the inner (closer in memory) dimension
constexpr int64_t kTileOuter = 16;  // tile extent along the outer dimension

// A big N x K x H x W tensor as the loops read it: N x K x P, element (n, k, p) at n * L.sn +
// k * L.sk + p * L.sp.
struct Big {
  int64_t N, K, P;
  Layout L;
  explicit Big(const Tensor& t) : N(t.size(0)), K(t.size(1)), P(pixels(t)), L(layout_of(t)) {}
};

// ---------------------------------------------------------------- loops
// fn(n, b0, b1) for every sample n in [0, N) and every block [b0, b1) of [0, L) of size B, in
// parallel; `work` is the element count of one full block (decides the grain).
template <class Fn>
void parallel_blocks(int64_t N, int64_t L, int64_t B, int64_t work, const Fn& fn) {
  const int64_t nb = (L + B - 1) / B;
  const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, work));
  at::parallel_for(0, N * nb, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / nb, b0 = (i % nb) * B;
      fn(n, b0, std::min(L, b0 + B));
    }
  });
}

// fn(n, scratch) for every sample n in [0, N) in parallel; `scratch` points to `scratch_size`
// elements of T private to the calling thread; `work` is the element count of one sample.
template <class T, class Fn>
void for_each_sample(int64_t N, int64_t work, int64_t scratch_size, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, work));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    std::vector<T> scratch(static_cast<size_t>(scratch_size));
    for (int64_t n = n0; n < n1; ++n) fn(n, scratch.data());
  });
}

// fn(k, p, offset) for every k in [k0, k1), p in [p0, p1), offset = k * sk + p * sp (within one
// sample), the inner loop running along whichever of k / p is closer in memory. A unit inner
// stride gets its own loop so that the compiler vectorizes it.
template <class Fn>
inline void visit(const Layout& L, int64_t k0, int64_t k1, int64_t p0, int64_t p1, const Fn& fn) {
  if (L.pixels_inner()) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t base = k * L.sk;
      if (L.sp == 1) {
        for (int64_t p = p0; p < p1; ++p) fn(k, p, base + p);
      } else {
        for (int64_t p = p0; p < p1; ++p) fn(k, p, base + p * L.sp);
      }
    }
  } else {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t base = p * L.sp;
      if (L.sk == 1) {
        for (int64_t k = k0; k < k1; ++k) fn(k, p, base + k);
      } else {
        for (int64_t k = k0; k < k1; ++k) fn(k, p, base + k * L.sk);
      }
    }
  }
}

// fn(k0, k1, p0, p1) over tiles of [k0, k1) x [p0, p1) of one sample, at most kTile long along
// the inner dimension and kTileOuter along the other: per-tile vectors (one value per pixel or
// per channel of the tile) then fit local arrays of kTile elements, which the compiler knows
// alias nothing, so the loops of `visit` over the tile vectorize.
template <class Fn>
inline void for_tiles(const Layout& L, int64_t k0, int64_t k1, int64_t p0, int64_t p1, const Fn& fn) {
  const bool pin = L.pixels_inner();
  const int64_t tk = pin ? kTileOuter : kTile, tp = pin ? kTile : kTileOuter;
  for (int64_t kb = k0; kb < k1; kb += tk)
    for (int64_t pb = p0; pb < p1; pb += tp) fn(kb, std::min(k1, kb + tk), pb, std::min(p1, pb + tp));
}

}  // namespace attnfast::cpu
