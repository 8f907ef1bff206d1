// guidance_loss (docs/SPEC.md "guidance_loss"; the per-row math is common/guidance.h, the host
// side csrc/host/guidance.h). Rows r = (image n = rows[r], class); F is N x K x P in its layout,
// G either R x K x P in its own layout (pixel mode for the pixel and ixg kinds) or R x K.
//
// Forward: ONE per-row kernel (one block per row, common per-sample machinery of sample.cuh):
//   weights mode (channel, gradcam, or R x K G): w[k] (a warp per channel sums term(G) over p,
//     or const_grad_weight of the R x K G) -> the saved weights for the channel kinds;
//   A[p] = ReLU(s sum_k G F) (pixel mode, s = 1/K for pixel, 1 for ixg) or ReLU(sum_k w F),
//     no ReLU for ixg -> the saved maps;
//   cov: the given coverage, or computed from the boxes (thread 0 builds the union grid of the
//     row's boxes in the block's buffer, then every cell is independent: cell_coverage);
//   the loss from block sums (and a block max for l1 / ppce).
// Backward, two kernels and no atomics:
//   per row: e[p] = dL/dA [A > 0 unless ixg] (times s in pixel mode) from the saved map, kept in
//     a R x P workspace, and dG of the row (pixel mode dG = e F[n]; weights mode q[k] = sum_p e F
//     by a warp per channel, then dG = q/P term'(G) or q dw/dg for R x K G);
//   per element of F: dF[n,k,p] = sum over the rows of image n (order/offsets, in order) of
//     e[r,p] s G[r,k,p] (pixel mode) or e[r,p] w[r,k], 0 for images without rows.
#include "common/guidance.h"
#include "cuda/sample.cuh"

namespace attnfast {
namespace cuda {
namespace {

// The inputs of one call as the kernels read them (T: storage type of F and 4-D G).
template <class T> struct Rows {
  GuidanceArgs a;
  int64_t kw;  // columns of the saved weights (K for channel / gradcam, else 0)

  __device__ int64_t k() const { return a.geo.k; }
  __device__ int64_t p() const { return a.geo.h * a.geo.w; }
  __device__ bool pixel_mode() const {
    return a.g != nullptr && (a.o.kind == kPixel || a.o.kind == kIxg);
  }
  __device__ float inv_k() const { return a.geo.k > 0 ? 1.f / static_cast<float>(a.geo.k) : 0.f; }
  // s of the pixel-mode map: 1/K for the pixel kind, 1 for ixg.
  __device__ float scale() const { return a.o.kind == kPixel ? inv_k() : 1.f; }
  __device__ float f(int64_t n, int64_t k, int64_t q) const {
    return to_float(static_cast<const T*>(a.f)[a.geo.lay.at(n, k, q)]);
  }
  __device__ float g(int64_t r, int64_t k, int64_t q) const {
    return to_float(static_cast<const T*>(a.g)[a.lg.at(r, k, q)]);
  }
  // Weight w[k] of row r from an R x K gradient.
  __device__ float flat_weight(int64_t r, int64_t k) const {
    return const_grad_weight(a.o.kind, a.g_flat[r * a.geo.k + k], inv_k());
  }
  // Elements of the block's buffer for the box grid (0 when the coverage is given).
  int64_t grid_floats() const { return a.coverage ? 0 : box_grid_size(a.b); }

  // The coverage of row r: the given one, or computed into cov with grid as scratch (complete,
  // synced, on return). All threads call it.
  __device__ const float* coverage(int64_t r, float* grid, float* cov) const {
    const int64_t P = p();
    if (a.coverage) return a.coverage + r * P;
    if (threadIdx.x == 0)
      box_grid(a.b ? a.boxes + r * a.b * 4 : a.boxes, a.b, a.o.image_h, a.o.image_w, grid);
    __syncthreads();
    ATTNFAST_BLOCK_LOOP(q, P) {
      cov[q] = cell_coverage(grid, a.b, a.o.image_h, a.o.image_w, a.geo.h, a.geo.w, q / a.geo.w,
                             q % a.geo.w);
    }
    __syncthreads();
    return cov;
  }
};

// warp, lane of the calling thread; loops over channels run one channel per warp, so the lanes
// of a warp take the same iterations (shuffles need all 32).
__device__ __forceinline__ int warp_id() { return static_cast<int>(threadIdx.x) >> 5; }
__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x) & 31; }

// Sum over the lanes of a warp; every lane gets it.
__device__ __forceinline__ float warp_sum(float v) {
  float x[1] = {v};
  warp_reduce(x, Sum{});
  return x[0];
}

// max_p A+_p of a map (NaN when any is), over the block.
__device__ __forceinline__ float positive_max(const float* a, int64_t P) {
  float m[1] = {-INFINITY};
  ATTNFAST_BLOCK_LOOP(q, P) m[0] = Max{}(m[0], relu(a[q]));
  block_max(m);
  return m[0];
}

template <class T> struct Forward {
  Rows<T> in;
  float *loss, *maps, *weights;
  static int64_t buf_floats(const Rows<T>& in) {
    return in.a.geo.k + 2 * in.a.geo.p() + in.grid_floats();
  }

  // w (K) of row r in weights mode (synced on return).
  __device__ void row_weights(int64_t r, float* w) const {
    const int64_t K = in.k(), P = in.p();
    if (in.a.g_flat) {
      ATTNFAST_BLOCK_LOOP(k, K) w[k] = in.flat_weight(r, k);
    } else {
      const bool positive = in.a.o.kind == kChannel;
      for (int64_t k = warp_id(); k < K; k += kWarps) {
        float s = 0.f;
        for (int64_t q = lane_id(); q < P; q += 32) s += weight_term(positive, in.g(r, k, q));
        s = warp_sum(s);
        if (lane_id() == 0) w[k] = s / static_cast<float>(P);
      }
    }
    __syncthreads();
    if (in.kw) ATTNFAST_BLOCK_LOOP(k, K) weights[r * K + k] = w[k];
  }

  __device__ void operator()(int64_t r, float* buf) const {
    const int64_t K = in.k(), P = in.p(), n = in.a.rows[r];
    const int64_t kind = in.a.o.kind, lo = in.a.o.loss;
    const float eps = in.a.o.eps;
    float *w = buf, *a = w + K, *cov_buf = a + P, *grid = cov_buf + P;
    const bool pixel = in.pixel_mode();
    if (!pixel) row_weights(r, w);
    const float s = in.scale();
    ATTNFAST_BLOCK_LOOP(q, P) {
      float v = 0.f;
      if (pixel) {
        for (int64_t k = 0; k < K; ++k) v += in.g(r, k, q) * in.f(n, k, q);
        v *= s;
      } else {
        for (int64_t k = 0; k < K; ++k) v += w[k] * in.f(n, k, q);
      }
      a[q] = kind == kIxg ? v : relu(v);
      maps[r * P + q] = a[q];
    }
    const float* cov = in.coverage(r, grid, cov_buf);  // syncs: a is complete after it
    float v[2] = {0.f, 0.f};
    if (lo == kRrr) {
      ATTNFAST_BLOCK_LOOP(q, P) v[0] += rrr_term(a[q], cov[q]);
      block_sum(v);
      if (threadIdx.x == 0) loss[r] = v[0];
      return;
    }
    if (lo == kEnergy) {
      ATTNFAST_BLOCK_LOOP(q, P) {
        const float ap = relu(a[q]);
        v[0] += ap * cell_weight(in.a.cell_weights, q), v[1] += ap * cov[q];
      }
      block_sum(v);
      if (threadIdx.x == 0) loss[r] = energy_value(v[0], v[1], eps);
      return;
    }
    const float d = relu(positive_max(a, P)) + eps;
    ATTNFAST_BLOCK_LOOP(q, P) {
      v[0] += norm_loss_term(lo, relu(a[q]) / d, cov[q], eps);
      v[1] += cov[q];
    }
    block_sum(v);
    if (threadIdx.x == 0) loss[r] = norm_loss_value(lo, v[0], v[1], P);
  }
};

template <class T> struct Backward {
  Rows<T> in;
  const float *grad, *maps, *weights;
  float* e_all;  // R x P: e of every row, for the dF kernel
  GuidanceGrads d;
  static int64_t buf_floats(const Rows<T>& in) { return 2 * in.a.geo.p() + in.grid_floats(); }

  // e = g dL/dA of the row's map a (written to e), gated by [A > 0] unless ixg, times s in
  // pixel mode; e is complete (synced) on return.
  __device__ void row_e(int64_t r, const float* a, const float* cov, float* e) const {
    const int64_t P = in.p(), lo = in.a.o.loss;
    const float g = grad[r], eps = in.a.o.eps;
    const float s = in.pixel_mode() ? in.scale() : 1.f;
    const bool gate = in.a.o.kind != kIxg;
    if (lo == kRrr) {
      ATTNFAST_BLOCK_LOOP(q, P) {
        const float x = rrr_grad(g, a[q], cov[q]);
        e[q] = (gate ? relu_backward(x, a[q]) : x) * s;
      }
    } else if (lo == kEnergy) {
      float v[2] = {0.f, 0.f};
      const float* t = in.a.cell_weights;
      ATTNFAST_BLOCK_LOOP(q, P) {
        const float ap = relu(a[q]);
        v[0] += ap * cell_weight(t, q), v[1] += ap * cov[q];
      }
      block_sum(v);
      const EnergyGrad<float> eg = energy_grad(g, v[0], v[1], eps);
      ATTNFAST_BLOCK_LOOP(q, P) {
        e[q] = relu_backward(eg.gi * cov[q] + eg.gs * cell_weight(t, q), a[q]) * s;
      }
    } else {
      // u = A+ / d: dL/du (norm_loss_grad), then normalize's backward (normalize_grad_at: ties
      // at the max split evenly), then A+ -> A by [A > 0].
      const float m = positive_max(a, P), d = relu(m) + eps;
      float c[1] = {0.f};
      ATTNFAST_BLOCK_LOOP(q, P) c[0] += cov[q];
      block_sum(c);
      float v[3] = {0.f, 0.f, 0.f};  // g_tied, ties, rest of normalize_grad_at
      ATTNFAST_BLOCK_LOOP(q, P) {
        const float ap = relu(a[q]), dn = norm_loss_grad(lo, g, ap / d, cov[q], c[0], P, eps);
        if (ap == m) {
          v[0] += dn, v[1] += 1.f;
        } else {
          v[2] += dn * ap;
        }
      }
      block_sum(v);
      ATTNFAST_BLOCK_LOOP(q, P) {
        const float ap = relu(a[q]), dn = norm_loss_grad(lo, g, ap / d, cov[q], c[0], P, eps);
        e[q] = relu_backward(normalize_grad_at(dn, ap, m, eps, v[0], v[1], v[2]), a[q]) * s;
      }
    }
    __syncthreads();
  }

  __device__ void operator()(int64_t r, float* buf) const {
    const int64_t K = in.k(), P = in.p(), n = in.a.rows[r];
    float *e = buf, *cov_buf = e + P, *grid = cov_buf + P;
    const float* a = maps + r * P;
    const float* cov = in.coverage(r, grid, cov_buf);
    row_e(r, a, cov, e);
    ATTNFAST_BLOCK_LOOP(q, P) e_all[r * P + q] = e[q];
    T* dg = static_cast<T*>(d.d_g);
    if (in.pixel_mode()) {  // dG[r,k,p] = e_p F[n,k,p], walked along dG's inner axis
      const bool p_inner = d.ldg.pixels_inner();
      ATTNFAST_BLOCK_LOOP(i, K * P) {
        const int64_t k = p_inner ? i / P : i % K, q = p_inner ? i % P : i / K;
        dg[d.ldg.at(r, k, q)] = from_float<T>(e[q] * in.f(n, k, q));
      }
      return;
    }
    const bool positive = in.a.o.kind == kChannel;
    for (int64_t k = warp_id(); k < K; k += kWarps) {  // q_k = sum_p e_p F[n,k,p]
      float qk = 0.f;
      for (int64_t q = lane_id(); q < P; q += 32) qk += e[q] * in.f(n, k, q);
      qk = warp_sum(qk);
      if (in.a.g_flat) {
        if (lane_id() == 0)
          d.d_g_flat[r * K + k] = const_grad_weight_backward(in.a.o.kind, qk,
                                                             in.a.g_flat[r * K + k], in.inv_k());
      } else {
        const float qp = qk / static_cast<float>(P);
        for (int64_t q = lane_id(); q < P; q += 32) {
          const float gv = positive ? in.g(r, k, q) : 0.f;  // gradcam: G is not read
          dg[d.ldg.at(r, k, q)] = from_float<T>(weight_term_backward(positive, qp, gv));
        }
      }
    }
  }
};

// dF[n,k,p] = sum over the rows r of image n of e[r,p] V[r,k,p], V = G[r,k,p] (pixel mode; e
// already holds s) or w[r,k] (saved, or from the R x K G); threads walk dF's inner axis.
template <class T>
__global__ void __launch_bounds__(kThreads) features_grad_kernel(
    const Rows<T> in, const float* e_all, const float* weights, const int64_t* order,
    const int64_t* offsets, T* df, Layout ldf) {
  const int64_t K = in.a.geo.k, P = in.a.geo.h * in.a.geo.w, total = in.a.geo.n * K * P;
  const bool p_inner = ldf.pixels_inner(), pixel = in.pixel_mode();
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * kThreads) {
    const int64_t n = i / (K * P), rest = i % (K * P);
    const int64_t k = p_inner ? rest / P : rest % K, q = p_inner ? rest % P : rest / K;
    float v = 0.f;
    for (int64_t j = offsets[n]; j < offsets[n + 1]; ++j) {
      const int64_t r = order[j];
      const float ep = e_all[r * P + q];
      v += ep * (pixel ? in.g(r, k, q) : (weights ? weights[r * K + k] : in.flat_weight(r, k)));
    }
    df[ldf.at(n, k, q)] = from_float<T>(v);
  }
}

template <class T> Rows<T> rows_of(const GuidanceArgs& a, bool weights) {
  return {a, weights ? a.geo.k : 0};
}

}  // namespace

cudaError_t guidance_loss(DType dt, const GuidanceArgs& a, float* loss, float* maps,
                          float* weights, Scratch scratch, cudaStream_t stream) {
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const Rows<T> in = rows_of<T>(a, weights != nullptr);
    return run_per_sample(Forward<T>{in, loss, maps, weights}, a.r, Forward<T>::buf_floats(in),
                          &scratch, stream);
  });
}

cudaError_t guidance_loss_backward(DType dt, const GuidanceArgs& a, const float* grad,
                                   const float* maps, const float* weights,
                                   const int64_t* order, const int64_t* offsets,
                                   const GuidanceGrads& d, Scratch scratch,
                                   cudaStream_t stream) {
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    const Rows<T> in = rows_of<T>(a, weights != nullptr);
    const int64_t P = a.geo.p(), total = a.geo.n * a.geo.k * P;
    float* e_all = a.r > 0 ? scratch.floats(a.r * P) : nullptr;
    if (a.r > 0 && !e_all) return cudaErrorMemoryAllocation;
    ATTNFAST_CUDA_TRY(run_per_sample(Backward<T>{in, grad, maps, weights, e_all, d}, a.r,
                                     Backward<T>::buf_floats(in), &scratch, stream));
    const int64_t most = 8 * int64_t(sm_count());  // blocks of a full wave; threads stride
    const int64_t grid = min_of<int64_t>(grid_for(total), most);
    return launch(features_grad_kernel<T>, total > 0 ? grid : 0, 0, stream, in,
                  static_cast<const float*>(e_all), weights, order, offsets,
                  static_cast<T*>(d.d_f), d.ldf);
  });
}

}  // namespace cuda
}  // namespace attnfast
