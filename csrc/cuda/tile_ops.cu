// The four big-tensor passes of tile_ops.h as tile-engine ops (tile.cuh). All kernels over
// N x K x P tensors live here, each instantiated once per dtype.
#include "cuda/tile.cuh"

namespace attnfast {
namespace cuda {
namespace {

template <class T> const T* in_of(const void* p) { return static_cast<const T*>(p); }
template <class T> T* out_of(void* p) { return static_cast<T*>(p); }

// The small weights w_j[n,k] of both classes (0 for a class without).
struct Weights {
  SmallV v[2];
  float inv_k;
  __device__ __forceinline__ float at(int j, int64_t nk) const {
    if (!v[j].w) return 0.f;
    const float w = v[j].w[nk];
    return v[j].kind < 0 ? w : const_grad_weight(v[j].kind, w, inv_k);
  }
};

Weights weights_of(const SmallV (&v)[2], const Geometry& g) {
  return {{v[0], v[1]}, g.k > 0 ? 1.f / static_cast<float>(g.k) : 0.f};
}

struct None {};
struct Pair {
  float v[2];
};

// c_j[n,p] = sum_k F V_j; x = (F, G_0, G_1); optional epilogue attn = ReLU(scale c_0).
template <class T_> struct ContractOp {
  using T = T_;
  using Chan = Pair;  // w_j[n,k]
  using Pix = None;
  static constexpr int kIn = 3, kOut = 1, kRed = 2;
  static constexpr Axis kAxis = Axis::kK;
  const T* in[kIn];
  T* out[kOut];
  Weights w;
  float* attn;
  float scale;
  int64_t p;
  bool direct;
  __device__ __forceinline__ Chan chan(int64_t nk) const { return {{w.at(0, nk), w.at(1, nk)}}; }
  __device__ __forceinline__ Pix pix(int64_t) const { return {}; }
  __device__ __forceinline__ void element(const Chan& ch, const Pix&, const float* x, float*,
                                          float* c) const {
#pragma unroll
    for (int j = 0; j < 2; ++j) c[j] = x[0] * (in[1 + j] ? x[1 + j] : ch.v[j]);
  }
  __device__ __forceinline__ void epilogue(int j, int64_t n, int64_t i, float v) const {
    if (j == 0) attn[n * p + i] = relu(scale * v);
  }
};

// dF = sum_j r_j V_j, dG_j = r_j F, dw_j = sum_p r_j F; x = (F, G_0, G_1), y = (dF, dG_0, dG_1).
template <class T_> struct ScatterOp {
  using T = T_;
  using Chan = Pair;  // w_j[n,k]
  using Pix = Pair;   // r_j[n,p] (scaled and gated)
  static constexpr int kIn = 3, kOut = 3, kRed = 2;
  static constexpr Axis kAxis = Axis::kP;
  const T* in[kIn];
  T* out[kOut];
  Weights w;
  const float* r[2];
  const float* gate[2];
  float scale[2];
  float* d_w[2];
  int64_t k;
  bool direct;
  __device__ __forceinline__ Chan chan(int64_t nk) const { return {{w.at(0, nk), w.at(1, nk)}}; }
  __device__ __forceinline__ Pix pix(int64_t np) const {
    Pix out{};
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      if (!r[j]) continue;
      out.v[j] = r[j][np] * scale[j];
      if (gate[j]) out.v[j] = relu_backward(out.v[j], gate[j][np]);
    }
    return out;
  }
  __device__ __forceinline__ void element(const Chan& ch, const Pix& px, const float* x, float* y,
                                          float* c) const {
    float df = 0.f;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const bool small = w.v[j].w != nullptr;
      df += px.v[j] * (small ? ch.v[j] : x[1 + j]);
      y[1 + j] = small ? 0.f : px.v[j] * x[0];
      c[j] = small ? px.v[j] * x[0] : 0.f;
    }
    y[0] = df;
  }
  __device__ __forceinline__ void epilogue(int j, int64_t n, int64_t kk, float v) const {
    float* dst = j == 0 ? d_w[0] : d_w[1];
    if (dst) dst[n * k + kk] = v;
  }
};

// w_j[n,k] = (1/P) sum_p term(G_j); x = (G_0, G_1).
template <class T_> struct WeightsOp {
  using T = T_;
  using Chan = None;
  using Pix = None;
  static constexpr int kIn = 2, kOut = 1, kRed = 2;
  static constexpr Axis kAxis = Axis::kP;
  const T* in[kIn];
  T* out[kOut];
  float* w[2];
  int64_t k;
  float p;
  bool positive, direct;
  __device__ __forceinline__ Chan chan(int64_t) const { return {}; }
  __device__ __forceinline__ Pix pix(int64_t) const { return {}; }
  __device__ __forceinline__ void element(const Chan&, const Pix&, const float* x, float*,
                                          float* c) const {
#pragma unroll
    for (int j = 0; j < 2; ++j) c[j] = weight_term(positive, x[j]);
  }
  __device__ __forceinline__ void epilogue(int j, int64_t n, int64_t kk, float v) const {
    float* dst = j == 0 ? w[0] : w[1];
    if (dst) dst[n * k + kk] = v / p;
  }
};

// dG_j = (dw_j[n,k] / P) term'(G_j); x = (G_0, G_1), y = (dG_0, dG_1).
template <class T_> struct WeightsBackwardOp {
  using T = T_;
  using Chan = Pair;  // dw_j[n,k] / P
  using Pix = None;
  static constexpr int kIn = 2, kOut = 2, kRed = 1;
  static constexpr Axis kAxis = Axis::kNone;
  const T* in[kIn];
  T* out[kOut];
  const float* d_w[2];
  float p;
  bool positive, direct;
  __device__ __forceinline__ Chan chan(int64_t nk) const {
    return {{d_w[0] ? d_w[0][nk] / p : 0.f, d_w[1] ? d_w[1][nk] / p : 0.f}};
  }
  __device__ __forceinline__ Pix pix(int64_t) const { return {}; }
  __device__ __forceinline__ void element(const Chan& ch, const Pix&, const float* x, float* y,
                                          float*) const {
#pragma unroll
    for (int j = 0; j < 2; ++j) y[j] = weight_term_backward(positive, ch.v[j], x[j]);
  }
  __device__ __forceinline__ void epilogue(int, int64_t, int64_t, float) const {}
};

}  // namespace

cudaError_t contract(DType dt, const ContractArgs& a, Scratch scratch, cudaStream_t stream,
                     Partials* sums) {
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    ContractOp<T> op{};
    op.in[0] = in_of<T>(a.f);
    for (int j = 0; j < 2; ++j) op.in[1 + j] = in_of<T>(a.g[j]);
    op.w = weights_of(a.v, a.geo);
    op.attn = a.attn, op.scale = a.scale, op.p = a.geo.p(), op.direct = a.attn != nullptr;
    return run_tile(op, a.geo, true, scratch, stream, op.direct ? nullptr : sums);
  });
}

cudaError_t scatter(DType dt, const ScatterArgs& a, Scratch scratch, cudaStream_t stream) {
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    ScatterOp<T> op{};
    bool reads_f = false, sums = false;
    for (int j = 0; j < 2; ++j) {
      reads_f = reads_f || a.d_g[j] || a.d_w[j];
      sums = sums || a.d_w[j];
      op.in[1 + j] = a.d_f ? in_of<T>(a.g[j]) : nullptr;  // V_j only matters for dF
      op.out[1 + j] = out_of<T>(a.d_g[j]);
      op.r[j] = a.r[j], op.gate[j] = a.gate[j], op.scale[j] = a.scale[j], op.d_w[j] = a.d_w[j];
    }
    op.in[0] = reads_f ? in_of<T>(a.f) : nullptr;
    op.out[0] = out_of<T>(a.d_f);
    op.w = weights_of(a.v, a.geo);
    op.k = a.geo.k, op.direct = true;
    return run_tile(op, a.geo, sums, scratch, stream);
  });
}

cudaError_t weights(DType dt, const WeightsArgs& a, Scratch scratch, cudaStream_t stream) {
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    WeightsOp<T> op{};
    for (int j = 0; j < 2; ++j) op.in[j] = in_of<T>(a.g[j]), op.w[j] = a.w[j];
    op.k = a.geo.k, op.p = static_cast<float>(a.geo.p()), op.positive = a.positive;
    op.direct = true;
    return run_tile(op, a.geo, true, scratch, stream);
  });
}

cudaError_t weights_backward(DType dt, const WeightsBackwardArgs& a, Scratch scratch,
                             cudaStream_t stream) {
  return dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    WeightsBackwardOp<T> op{};
    for (int j = 0; j < 2; ++j) {
      op.in[j] = a.positive ? in_of<T>(a.g[j]) : nullptr;
      op.out[j] = out_of<T>(a.d_g[j]);
      op.d_w[j] = a.d_w[j];
    }
    op.p = static_cast<float>(a.geo.p()), op.positive = a.positive, op.direct = true;
    return run_tile(op, a.geo, false, scratch, stream);
  });
}

}  // namespace cuda
}  // namespace attnfast
