// The tile engine: one templated kernel that streams big N x K x P tensors in place (NCHW,
// channels_last or any pixel-strided layout) for every pass of tile_ops.cu.
//
// An op (tile_ops.cu) gives, per element (n, k, p), its outputs and its contributions to at
// most kRed sums over its axis Op::kAxis (kK: per-pixel sums, kP: per-channel sums; kNone: no
// sums). All big tensors of a pass share one layout. The engine picks for each sample plane a
// "fast" axis, the one closer in memory (p for NCHW, k for channels_last), and walks it in runs
// of V elements: one 16-byte access per run when that axis has unit stride and every run start
// is aligned, else V = 1 (still coalesced when the stride is 1).
//
//   column mode (the sums run along the slow axis, or there are none): a block owns tx*V
//     consecutive fast positions; its ty thread rows stride over the slow axis; per-position
//     sums meet in shared memory and are added in thread-row order.
//   row mode (the sums run along the fast axis): each group of tx lanes owns one slow index
//     and strides along the fast axis; the group's sums meet in a shuffle butterfly.
//
// Per-channel and per-pixel inputs of an op (weights, upstream map gradients) come through
// op.chan(n*K + k) and op.pix(n*P + p); the engine evaluates the ones that stay fixed for a
// thread once, before its loop.
//
// Small N x tiles would leave SMs idle, so the traversed axis is cut into `splits` pieces over
// more blocks; each piece writes its sums to a workspace and a second kernel adds them in split
// order (deterministic, no atomics). Indexing is 64-bit throughout.
#pragma once

#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/tile_ops.h"

namespace attnfast {
namespace cuda {

enum class Axis : int { kNone = 0, kK = 1, kP = 2 };

// Row mode when the op's sums run along the fast axis.
__host__ __device__ constexpr bool row_mode(Axis axis, bool fast_p) {
  return axis == Axis::kP ? fast_p : (axis == Axis::kK ? !fast_p : false);
}

struct TileGeom {
  int64_t n, k, p;
  Layout lay;           // of every big tensor of the pass
  bool sums;            // emit the op's sums (an op may have nothing to sum in a call)
  bool fast_p;          // the fast axis is the pixel axis
  int vec, tx, ty;      // run length; threads along the fast / slow axis (tx * ty = kThreads)
  int64_t fast, slow;   // extents of the two axes
  int64_t tiles;        // blocks along the kept axis, per sample and split
  int64_t splits, chunk;  // the traversed axis in `splits` pieces of `chunk`
  int64_t kept;         // extent of the kept axis: the index of the sums
  __host__ __device__ int64_t blocks() const { return n * tiles * splits; }
  __host__ __device__ int64_t per_split(int slots) const { return slots * n * kept; }
};

// A finished sum: the op's epilogue when nothing is split and the op writes directly, else the
// workspace slot [split][j][n][i].
template <class Op>
__device__ __forceinline__ void emit(const Op& op, const TileGeom& g, float* partial,
                                     int64_t split, int j, int64_t n, int64_t i, float v) {
  if (g.splits == 1 && op.direct)
    op.epilogue(j, n, i, v);
  else
    partial[split * g.per_split(Op::kRed) + (j * g.n + n) * g.kept + i] = v;
}

// Op interface: using T; kIn, kOut, kRed >= 1; kAxis; const T* in[kIn]; T* out[kOut] (null: not
// read / not written; all in the layout g.lay); bool direct; types Chan, Pix with chan(nk),
// pix(np) (nk = n*K+k, np = n*P+p); element(chan, pix, x[kIn], y[kOut], c[kRed]);
// epilogue(j, n, i, v).
// At least 3 blocks (768 threads) per SM: ptxas keeps it to 80 registers.
template <class Op, int V, bool FAST_P>
__global__ void __launch_bounds__(kThreads, 3) tile_kernel(const Op op, const TileGeom g,
                                                           float* partial) {
  using T = typename Op::T;
  using FastV = std::conditional_t<FAST_P, typename Op::Pix, typename Op::Chan>;
  using SlowV = std::conditional_t<FAST_P, typename Op::Chan, typename Op::Pix>;
  constexpr int NI = Op::kIn, NO = Op::kOut, NR = Op::kRed;
  constexpr bool ROW = row_mode(Op::kAxis, FAST_P);
  constexpr int U = V == 1 ? 4 : 1;  // runs in flight per thread (U = 2 at V > 1 spills)
  const int64_t b = blockIdx.x;
  const int64_t tile = b % g.tiles, split = (b / g.tiles) % g.splits, n = b / (g.tiles * g.splits);
  const int tx = static_cast<int>(threadIdx.x) % g.tx, ty = static_cast<int>(threadIdx.x) / g.tx;

  // This thread's runs: run r covers fast positions [f0 + r df, + V) of slow index s0 + r ds.
  int64_t s0, f0, ds, df;
  int count;
  if constexpr (ROW) {
    const int64_t beg = split * g.chunk, end = min_of(g.fast, beg + g.chunk);
    s0 = tile * g.ty + ty, ds = 0;
    f0 = beg + int64_t(tx) * V, df = int64_t(g.tx) * V;
    count = s0 < g.slow && f0 < end ? static_cast<int>(ceil_div(end - f0, df)) : 0;
  } else {
    const int64_t beg = split * g.chunk, end = min_of(g.slow, beg + g.chunk);
    f0 = (tile * g.tx + tx) * V, df = 0;
    s0 = beg + ty, ds = g.ty;
    count = f0 < g.fast && s0 < end ? static_cast<int>(ceil_div(end - s0, ds)) : 0;
  }
  // Small-tensor values along the fast axis (per position) and the slow axis (per run).
  const int64_t fast_base = n * (FAST_P ? g.p : g.k), slow_base = n * (FAST_P ? g.k : g.p);
  auto fast_val = [&](int64_t f) -> FastV {
    if constexpr (FAST_P) return op.pix(fast_base + f); else return op.chan(fast_base + f);
  };
  auto slow_val = [&](int64_t s) -> SlowV {
    if constexpr (FAST_P) return op.chan(slow_base + s); else return op.pix(slow_base + s);
  };

  // Element offset of the current run in every tensor, and the step between runs.
  int64_t off, step;
  {
    const int64_t k0 = FAST_P ? s0 : f0, p0 = FAST_P ? f0 : s0;
    off = g.lay.at(n, k0, p0);
    step = (FAST_P ? ds : df) * g.lay.sk + (FAST_P ? df : ds) * g.lay.sp;
  }

  // The values that stay fixed for this thread: its fast positions (column mode) or its slow
  // index (row mode).
  FastV fixed_fast[ROW ? 1 : V];
  SlowV fixed_slow{};
  if (count > 0) {
    if constexpr (ROW) {
      fixed_slow = slow_val(s0);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) fixed_fast[i] = f0 + i < g.fast ? fast_val(f0 + i) : FastV{};
    }
  }

  float acc[NR][ROW ? 1 : V];  // column mode: per fast position of the run
#pragma unroll
  for (int j = 0; j < NR; ++j)
#pragma unroll
    for (int i = 0; i < (ROW ? 1 : V); ++i) acc[j][i] = 0.f;

  for (int r = 0; r < count; r += U) {
    Pack<T, V> x[U][NI];
    int cnt[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {  // all loads of the batch first
      cnt[u] = r + u < count ? static_cast<int>(min_of(int64_t(V), g.fast - f0 - (r + u) * df)) : 0;
#pragma unroll
      for (int t = 0; t < NI; ++t)
        x[u][t] = load_run<T, V>(op.in[t] ? op.in[t] + off + u * step : nullptr,
                                 op.in[t] ? cnt[u] : 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (cnt[u] == 0) continue;
      SlowV run_slow{};
      FastV run_fast[ROW ? V : 1];
      if constexpr (ROW) {
#pragma unroll
        for (int i = 0; i < V; ++i)
          if (i < cnt[u]) run_fast[i] = fast_val(f0 + (r + u) * df + i);
      } else {
        run_slow = slow_val(s0 + (r + u) * ds);
      }
      Pack<T, V> y[NO];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        float xi[NI], yi[NO], ci[NR];
#pragma unroll
        for (int t = 0; t < NI; ++t) xi[t] = to_float(x[u][t].v[i]);
#pragma unroll
        for (int o = 0; o < NO; ++o) yi[o] = 0.f;
        if (i < cnt[u]) {
          const FastV& fv = ROW ? run_fast[i] : fixed_fast[i];
          const SlowV& sv = ROW ? fixed_slow : run_slow;
          if constexpr (FAST_P) op.element(sv, fv, xi, yi, ci); else op.element(fv, sv, xi, yi, ci);
#pragma unroll
          for (int j = 0; j < NR; ++j) acc[j][ROW ? 0 : i] += ci[j];
        }
#pragma unroll
        for (int o = 0; o < NO; ++o) y[o].v[i] = from_float<T>(yi[o]);
      }
#pragma unroll
      for (int o = 0; o < NO; ++o)
        if (op.out[o]) store_run(op.out[o] + off + u * step, cnt[u], y[o]);
    }
    off += U * step;
  }

  if (!g.sums) return;
  if constexpr (ROW) {
    float v[NR];
#pragma unroll
    for (int j = 0; j < NR; ++j) v[j] = acc[j][0];
    warp_reduce(v, Sum{}, g.tx);
    if (tx == 0 && s0 < g.slow)
#pragma unroll
      for (int j = 0; j < NR; ++j) emit(op, g, partial, split, j, n, s0, v[j]);
  } else {
    __shared__ float red[NR][kThreads * V];
    const int lanes = g.tx * V;  // kept positions of this tile
#pragma unroll
    for (int j = 0; j < NR; ++j)
#pragma unroll
      for (int i = 0; i < V; ++i) red[j][ty * lanes + tx * V + i] = acc[j][i];
    __syncthreads();
    for (int e = static_cast<int>(threadIdx.x); e < NR * lanes; e += kThreads) {
      const int j = e / lanes, i = e % lanes;
      float v = 0.f;
      for (int t = 0; t < g.ty; ++t) v += red[j][t * lanes + i];
      const int64_t idx = tile * lanes + i;
      if (idx < g.fast) emit(op, g, partial, split, j, n, idx, v);
    }
  }
}

// Second step of a split pass: adds the splits of every sum in split order, then the epilogue.
template <class Op>
__global__ void __launch_bounds__(kThreads) finalize_kernel(const Op op, const TileGeom g,
                                                            const float* partial) {
  const int64_t total = g.per_split(Op::kRed);
  for (int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * kThreads) {
    float v = 0.f;
    for (int64_t s = 0; s < g.splits; ++s) v += partial[s * total + e];
    op.epilogue(static_cast<int>(e / (g.n * g.kept)), (e / g.kept) % g.n, e % g.kept, v);
  }
}

// ---------------------------------------------------------------- host side
// 16-byte runs along the fast axis are possible with unit stride there, slow and sample
// strides that keep each run start aligned, and aligned base pointers.
template <class Op> bool vectorizable(const Op& op, const TileGeom& g, int vw) {
  const Layout& l = g.lay;
  const int64_t fs = g.fast_p ? l.sp : l.sk, ss = g.fast_p ? l.sk : l.sp;
  bool ok = fs == 1 && (g.slow == 1 || ss % vw == 0) && (g.n == 1 || l.sn % vw == 0);
  for (int t = 0; t < Op::kIn; ++t) ok = ok && reinterpret_cast<uintptr_t>(op.in[t]) % 16 == 0;
  for (int o = 0; o < Op::kOut; ++o) ok = ok && reinterpret_cast<uintptr_t>(op.out[o]) % 16 == 0;
  return ok;
}

inline int pow2_at_least(int64_t x, int cap) {
  int v = 1;
  while (v < x && v < cap) v *= 2;
  return v;
}

template <class Op> TileGeom plan_tile(const Op& op, const Geometry& geo, bool sums) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(typename Op::T));
  TileGeom g{};
  g.n = geo.n, g.k = geo.k, g.p = geo.p(), g.lay = geo.lay;
  g.sums = sums && Op::kAxis != Axis::kNone;
  g.fast_p = geo.lay.pixels_inner();
  g.fast = g.fast_p ? g.p : g.k;
  g.slow = g.fast_p ? g.k : g.p;
  const bool row = row_mode(Op::kAxis, g.fast_p);
  g.vec = g.fast >= kVec && vectorizable(op, g, kVec) ? kVec : 1;
  const int64_t runs = ceil_div(g.fast, g.vec);
  if (row) {
    g.tx = pow2_at_least(runs, 32);
  } else if (runs <= 64) {
    g.tx = pow2_at_least(runs, 64);
  } else {  // 64 or 128 lanes, whichever idles fewer in the last tile
    g.tx = ceil_div(runs, 128) * 128 - runs <= ceil_div(runs, 64) * 64 - runs ? 128 : 64;
  }
  g.ty = kThreads / g.tx;
  const int64_t cut = row ? g.fast : g.slow;               // the axis the splits cut
  const int64_t step = row ? int64_t(g.tx) * g.vec : g.ty;  // its extent one block step covers
  g.tiles = row ? ceil_div(g.slow, g.ty) : ceil_div(runs, g.tx);
  g.kept = row ? g.slow : g.fast;
  // Enough blocks for a full wave (8 blocks of 256 threads per SM), each thread still doing at
  // least 4 runs per split.
  const int64_t base = g.n * g.tiles > 0 ? g.n * g.tiles : 1;
  const int64_t want = ceil_div(int64_t(sm_count()) * 8, base);
  const int64_t most = cut / (4 * step) > 1 ? cut / (4 * step) : 1;
  g.splits = want < most ? want : most;
  g.splits = g.splits > 1024 ? 1024 : (g.splits < 1 ? 1 : g.splits);
  g.chunk = ceil_div(cut, g.splits);
  if (row) g.chunk = ceil_div(g.chunk, g.vec) * g.vec;  // runs stay aligned
  g.splits = g.chunk > 0 ? ceil_div(cut, g.chunk) : 1;
  ATTNFAST_EMU_TRACE_PLAN(g, row);
  return g;
}

// Runs one pass: plans it, launches the tile kernel (and the split-sum kernel when the op writes
// its sums directly but they were split). `sums_out`, when given, receives where the (maybe
// split) sums were left for a consumer kernel; the op must then not write them directly.
template <class Op>
cudaError_t run_tile(const Op& op, const Geometry& geo, bool sums, Scratch scratch,
                     cudaStream_t stream, Partials* sums_out = nullptr) {
  const TileGeom g = plan_tile(op, geo, sums);
  float* partial = nullptr;
  const int64_t per_split = g.per_split(Op::kRed);
  if (g.sums && (g.splits > 1 || !op.direct) && g.blocks() > 0) {
    partial = scratch.floats(g.splits * per_split);
    if (!partial) return cudaErrorMemoryAllocation;
  }
  if (sums_out) *sums_out = Partials{partial, g.splits, per_split, g.n, g.kept};
  constexpr int kVec = 16 / static_cast<int>(sizeof(typename Op::T));
  const int64_t grid = g.blocks();
  auto kernel = g.vec > 1 ? (g.fast_p ? tile_kernel<Op, kVec, true> : tile_kernel<Op, kVec, false>)
                          : (g.fast_p ? tile_kernel<Op, 1, true> : tile_kernel<Op, 1, false>);
  ATTNFAST_CUDA_TRY(launch(kernel, grid, 0, stream, op, g, partial));
  if (g.sums && op.direct && g.splits > 1)
    ATTNFAST_CUDA_TRY(launch(finalize_kernel<Op>, grid_for(per_split), 0, stream, op, g,
                             static_cast<const float*>(partial)));
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace attnfast
