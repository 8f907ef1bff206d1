// A test harness, not a backend: runs the CUDA kernels of csrc/cuda on the CPU so that their
// indexing and math can be checked where there is no GPU. Compile a .cu file as C++ with
// -DATTNFAST_HOST_EMU: every block runs as kThreads cooperative fibers (ucontext) on one host
// thread, with real barriers (__syncthreads, per-warp barriers for shuffles), shared memory and
// NaN-filled dynamic shared memory; blocks run one after the other. Between two barriers each
// thread runs alone, in the order EMU_ORDER = forward (default), reverse or shuffle: results
// that change with the order reveal a missing barrier. In those three orders every thread
// reaches its next warp barrier (a shuffle) before any warp passes one; EMU_ORDER = warps lets
// each warp run ahead to the next block barrier before the next warp starts (warps and their
// threads in reverse order), as real warps may: a block barrier missing between two uses of
// shared memory that a warp reaches through warp barriers only shows there. Vector accesses
// are checked for 16-byte alignment; under AddressSanitizer (fiber switches annotated)
// out-of-bounds accesses abort. Only what csrc/cuda uses is emulated.
#pragma once

#ifndef ATTNFAST_HOST_EMU
#error "host_emu.h is only for ATTNFAST_HOST_EMU builds"
#endif

// Execution-space keywords before the CUDA headers see them.
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __launch_bounds__(...)

#include <cuda_runtime.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define ATTNFAST_EMU_ASAN 1
#endif

inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim, gridDim;

namespace attnfast_emu {

enum class State { kReady, kBlockWait, kWarpWait, kDone };

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  State state = State::kDone;
  long wait_gen = 0;
};

struct Scheduler {
  ucontext_t main;
  const void* main_bottom = nullptr;
  size_t main_size = 0;
  std::vector<Fiber> fibers;
  int current = -1, threads = 0;
  int block_alive = 0, block_arrived = 0;
  long block_gen = 0;
  int warp_alive[32] = {}, warp_arrived[32] = {};
  long warp_gen[32] = {};
  float exchange[32][32];  // shuffle values per warp and lane
  std::vector<float> smem;
  const std::function<void()>* kernel = nullptr;
};

inline Scheduler& sched() {
  static Scheduler s;
  return s;
}

inline float* dynamic_smem() { return sched().smem.data(); }

// Switches from context `from` to `to` (stack [bottom, bottom + size)); fiber-aware for ASan.
inline void switch_context(ucontext_t* from, ucontext_t* to, const void* bottom, size_t size,
                           bool dying = false) {
#ifdef ATTNFAST_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(dying ? nullptr : &fake, bottom, size);
  swapcontext(from, to);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)bottom, (void)size, (void)dying;
  swapcontext(from, to);
#endif
}

inline void yield_to_main() {
  Scheduler& s = sched();
  switch_context(&s.fibers[s.current].ctx, &s.main, s.main_bottom, s.main_size);
}

inline void fiber_entry() {
  Scheduler& s = sched();
#ifdef ATTNFAST_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &s.main_bottom, &s.main_size);
#endif
  (*s.kernel)();
  // the thread leaves the kernel: it no longer counts at the barriers
  const int t = s.current, w = t / 32;
  s.fibers[t].state = State::kDone;
  --s.block_alive;
  if (s.block_arrived > 0 && s.block_arrived == s.block_alive) s.block_arrived = 0, ++s.block_gen;
  --s.warp_alive[w];
  if (s.warp_arrived[w] > 0 && s.warp_arrived[w] == s.warp_alive[w]) s.warp_arrived[w] = 0, ++s.warp_gen[w];
  Fiber& f = s.fibers[t];
  switch_context(&f.ctx, &s.main, s.main_bottom, s.main_size, true);
}

// Arrive at a barrier (the block's, or warp w's) and wait for the others still in the kernel.
inline void arrive(int& arrived, int alive, long& gen, State wait) {
  Scheduler& s = sched();
  if (++arrived == alive) {
    arrived = 0, ++gen;
    return;
  }
  Fiber& f = s.fibers[s.current];
  f.state = wait, f.wait_gen = gen;
  yield_to_main();
}

inline void sync_block() {
  Scheduler& s = sched();
  arrive(s.block_arrived, s.block_alive, s.block_gen, State::kBlockWait);
}
inline void sync_warp() {
  Scheduler& s = sched();
  const int w = s.current / 32;
  arrive(s.warp_arrived[w], s.warp_alive[w], s.warp_gen[w], State::kWarpWait);
}

// A fresh context that runs fiber_entry on the fiber's stack.
__attribute__((noinline)) inline void start_fiber(Fiber& f) {
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack.data();
  f.ctx.uc_stack.ss_size = f.stack.size();
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_entry, 0);
  f.state = State::kReady;
}

// kernel() on `grid` blocks of `threads` threads, one block at a time.
inline void run(int64_t grid, int threads, size_t smem_bytes, const std::function<void()>& kernel) {
  Scheduler& s = sched();
  const size_t stack_size = size_t(1) << 18;
  s.threads = threads, s.kernel = &kernel;
  s.fibers.resize(threads);
  for (Fiber& f : s.fibers) f.stack.resize(stack_size);
  std::vector<int> order(threads);
  for (int t = 0; t < threads; ++t) order[t] = t;
  const char* mode = std::getenv("EMU_ORDER");
  std::mt19937 rng(12345);
  gridDim = dim3(static_cast<unsigned>(grid), 1, 1);
  blockDim = dim3(static_cast<unsigned>(threads), 1, 1);
  for (int64_t b = 0; b < grid; ++b) {
    s.smem.assign((smem_bytes + sizeof(float) - 1) / sizeof(float) + 4, __builtin_nanf(""));
    blockIdx = make_uint3(static_cast<unsigned>(b), 0, 0);
    s.block_alive = threads, s.block_arrived = 0;
    for (int w = 0; w < 32; ++w) {
      s.warp_alive[w] = std::max(0, std::min(32, threads - 32 * w));
      s.warp_arrived[w] = 0;
    }
    for (Fiber& f : s.fibers) start_fiber(f);
    int done = 0;
    auto step = [&](int t) {  // runs thread t until it waits or ends, if it is ready
      Fiber& f = s.fibers[t];
      const bool ready = f.state == State::kReady ||
                         (f.state == State::kBlockWait && f.wait_gen != s.block_gen) ||
                         (f.state == State::kWarpWait && f.wait_gen != s.warp_gen[t / 32]);
      if (!ready) return false;
      f.state = State::kReady, s.current = t;
      threadIdx = make_uint3(static_cast<unsigned>(t), 0, 0);
      switch_context(&s.main, &f.ctx, f.stack.data(), f.stack.size());
      if (f.state == State::kDone) ++done;
      return true;
    };
    const bool by_warp = mode && !std::strcmp(mode, "warps");
    while (done < threads) {
      if (mode && !std::strcmp(mode, "reverse")) std::reverse(order.begin(), order.end());
      if (mode && !std::strcmp(mode, "shuffle")) std::shuffle(order.begin(), order.end(), rng);
      bool progress = false;
      if (by_warp) {  // each warp as far as it gets before the next one, last warp first
        for (int w = (threads - 1) / 32; w >= 0; --w)
          for (bool ran = true; ran;) {
            ran = false;
            for (int t = std::min(threads, 32 * w + 32) - 1; t >= 32 * w; --t) ran = step(t) || ran;
            progress = progress || ran;
          }
      } else {
        for (int t : order) progress = step(t) || progress;
      }
      if (!progress) {
        std::fprintf(stderr, "emu: deadlock in block %lld (a barrier not reached by all threads)\n",
                     static_cast<long long>(b));
        std::abort();
      }
    }
  }
}

}  // namespace attnfast_emu

inline void __syncthreads() { attnfast_emu::sync_block(); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask, int width = 32) {
  auto& s = attnfast_emu::sched();
  const int warp = s.current / 32, lane = s.current % 32;
  s.exchange[warp][lane] = v;
  attnfast_emu::sync_warp();
  int src = lane ^ lane_mask;
  if (src / width != lane / width) src = lane;
  const float r = s.exchange[warp][src];
  attnfast_emu::sync_warp();
  return r;
}

// EMU_TRACE=1 prints every tile plan (tile.cuh plan_tile).
#define ATTNFAST_EMU_TRACE_PLAN(g, row)                                                       \
  do {                                                                                        \
    if (std::getenv("EMU_TRACE"))                                                             \
      std::fprintf(stderr, "plan n=%lld k=%lld p=%lld fast_p=%d row=%d vec=%d tx=%d ty=%d "     \
                   "tiles=%lld splits=%lld chunk=%lld sums=%d\n", (long long)(g).n,             \
                   (long long)(g).k, (long long)(g).p, int((g).fast_p), int(row), (g).vec,      \
                   (g).tx, (g).ty, (long long)(g).tiles, (long long)(g).splits,                 \
                   (long long)(g).chunk, int((g).sums));                                        \
  } while (0)

#define ATTNFAST_EMU_CHECK_ALIGNED(p, bytes)                                                   \
  do {                                                                                         \
    if (reinterpret_cast<uintptr_t>(p) % (bytes) != 0) {                                       \
      std::fprintf(stderr, "emu: misaligned %d-byte access at %p\n", int(bytes), (const void*)(p)); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)
