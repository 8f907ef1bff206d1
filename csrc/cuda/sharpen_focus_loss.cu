// sharpen_focus_loss, fused (docs/SPEC.md "sharpen_focus_loss"; the math is common/sharpen_focus.h).
//
// Forward, per layer: [channel/gradcam with 4-D G: one "weights" pass over G_t and G_c] then ONE
// "contract" pass over F (and G_t, G_c for the pixel kind) that sums both classes' maps; then ONE
// per-sample kernel builds the four maps from the sums, the two masks (bilinear resize of the
// normalized last target map), and the two soft-IoUs and L_ac, the maps held in shared memory
// and written out, with the channel weights, as the saved outputs (SfSavedPtrs, api.h).
//
// Class c of a layer, g its gradient:
//   pixel kind, 4-D g:  A = ReLU((1/K) sum_k g F)          (big V = g, scale 1/K)
//   otherwise:          A = ReLU(sum_k w[k] F)             (small V = w, scale 1)
//     w = mean_p ReLU(g) / mean_p g (4-D g), const_grad_weight(kind, g) (N x K g).
//
// Backward: the maps and weights are the forward's saved ones (no pass over F or G), a
// per-sample kernel turns the three upstream gradients into r_c[n,p] = dLoss/dA_c [A_c > 0] scale_c for each layer
// (normalize, masks with mask_grad, soft-IoU and L_ac backward), then ONE "scatter" pass per
// layer writes dF (and dG = r F of big classes, dw = sum_p r F of small ones); small classes
// then get dG = dw / P term'(G) (one write pass over 4-D G) or dg = dw dweight/dg (N x K).
#include "cuda/sample.cuh"
#include "cuda/tile_ops.h"

namespace attnfast {
namespace cuda {
namespace {

// How each class of a layer enters the contract / scatter passes.
struct LayerPlan {
  const void* big[2];  // big V (pixel kind, 4-D g) or null
  SmallV v[2];     // small V or null
  bool pooled[2];  // w is mean_p term(g) of a 4-D g (needs the weights pass)
  float scale[2];  // 1/K for a big V, else 1
  float* w;        // 2 x N x K weights of the channel kinds (SfSavedPtrs::weights)
};

// `saved_weights`: SfSavedPtrs::weights (null when empty, N = 0 or K = 0: then a scratch stand-in).
LayerPlan plan_layer(const SfLayerPtrs& l, int64_t kind, float* saved_weights, Scratch scratch) {
  LayerPlan lp{};
  const int64_t nk = l.geo.n * l.geo.k;
  if (kind != kPixel) lp.w = saved_weights ? saved_weights : scratch.floats(2 * nk);
  for (int c = 0; c < 2; ++c) lp.pooled[c] = !l.flat[c] && kind != kPixel;
  for (int c = 0; c < 2; ++c) {
    lp.big[c] = !l.flat[c] && kind == kPixel ? l.g[c] : nullptr;
    lp.scale[c] = lp.big[c] && l.geo.k > 0 ? 1.f / static_cast<float>(l.geo.k) : 1.f;
    if (l.flat[c]) lp.v[c] = {static_cast<const float*>(l.g[c]), kind};
    else if (lp.pooled[c]) lp.v[c] = {lp.w + c * nk, -1};
    else lp.v[c] = {nullptr, -1};
  }
  return lp;
}

// w[i] = const_grad_weight(kind, g[i], .): the saved weights of an N x K gradient (channel kinds
// only, where the 1/K of the pixel kind does not enter).
__global__ void __launch_bounds__(kThreads) flat_weight_kernel(const float* g, float* w,
                                                               int64_t count, int64_t kind) {
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * kThreads)
    w[i] = const_grad_weight(kind, g[i], 1.f);
}

// The sums of both classes' maps of one layer (weights pass first when needed; the weights of
// the channel kinds land in lp.w, the saved weights).
cudaError_t layer_sums(DType dt, const SfLayerPtrs& l, const LayerPlan& lp, int64_t kind,
                       Scratch scratch, cudaStream_t stream, Partials* sums) {
  const int64_t nk = l.geo.n * l.geo.k;
  for (int c = 0; c < 2; ++c)
    if (l.flat[c] && lp.w)
      ATTNFAST_CUDA_TRY(launch(flat_weight_kernel, grid_for(nk), 0, stream,
                               static_cast<const float*>(l.g[c]), lp.w + c * nk, nk, kind));
  if (lp.pooled[0] || lp.pooled[1]) {
    if (!lp.w) return cudaErrorMemoryAllocation;
    WeightsArgs wa{};
    wa.geo = l.geo, wa.positive = kind == kChannel;
    for (int c = 0; c < 2; ++c)
      if (lp.pooled[c]) wa.g[c] = l.g[c], wa.w[c] = lp.w + c * nk;
    ATTNFAST_CUDA_TRY(weights(dt, wa, scratch, stream));
  }
  ContractArgs ca{};
  ca.geo = l.geo, ca.f = l.f;
  for (int c = 0; c < 2; ++c) ca.g[c] = lp.big[c], ca.v[c] = lp.v[c];
  return contract(dt, ca, scratch, stream, sums);
}

// ---------------------------------------------------------------- per-sample math
// Maps of one sample in the block's buffer: ti, ci (inner, pi each), tl, cl (last, pl each),
// built from the contract sums (forward) or copied from the saved maps (backward).
struct SfMaps {
  Partials sums[2];      // inner, last
  const float* saved[2];  // inner, last saved maps (2 x N x P), or null: build from the sums
  int64_t n_samples;
  float scale[2][2];
  int64_t hi, wi, hl, wl;
  SfOptions<float> o;

  __device__ int64_t pi() const { return hi * wi; }
  __device__ int64_t pl() const { return hl * wl; }
  __device__ MaskGeom mask_inner() const { return {hl, wl, hi, wi, o.sigma, o.omega}; }
  __device__ MaskGeom mask_last() const { return {hl, wl, hl, wl, o.sigma, o.omega}; }
};

// The per-sample state both directions share.
struct SfSample {
  const float *ti, *ci, *tl, *cl;
  MapStat st[4];   // of ti, ci, tl, cl
  float den[4];    // normalize ? st.d : 1
  float terms[6];  // I_i, S_i - eps, N_c, D_c - eps, I_l, S_l - eps

  // A = ReLU(scale sum) from the contract sums, the stats and the six loss sums.
  __device__ void build(const SfMaps& m, int64_t n, float* buf) {
    const int64_t pi = m.pi(), pl = m.pl();
    float* b = buf;
    const int64_t N = m.n_samples;
    if (m.saved[0]) {
      ATTNFAST_BLOCK_LOOP(i, pi) {
        b[i] = m.saved[0][n * pi + i];
        b[pi + i] = m.saved[0][(N + n) * pi + i];
      }
      ATTNFAST_BLOCK_LOOP(i, pl) {
        b[2 * pi + i] = m.saved[1][n * pl + i];
        b[2 * pi + pl + i] = m.saved[1][(N + n) * pl + i];
      }
    } else {
      ATTNFAST_BLOCK_LOOP(i, pi) {
        b[i] = relu(m.scale[0][0] * m.sums[0].sum(0, n, i));
        b[pi + i] = relu(m.scale[0][1] * m.sums[0].sum(1, n, i));
      }
      ATTNFAST_BLOCK_LOOP(i, pl) {
        b[2 * pi + i] = relu(m.scale[1][0] * m.sums[1].sum(0, n, i));
        b[2 * pi + pl + i] = relu(m.scale[1][1] * m.sums[1].sum(1, n, i));
      }
    }
    __syncthreads();
    ti = b, ci = b + pi, tl = b + 2 * pi, cl = b + 2 * pi + pl;
    const float* const maps[4] = {ti, ci, tl, cl};
    const int64_t sizes[4] = {pi, pi, pl, pl};
    map_stats(maps, sizes, m.o.eps, st);
    for (int j = 0; j < 4; ++j) den[j] = m.o.normalize ? st[j].d : 1.f;
    for (int j = 0; j < 6; ++j) terms[j] = 0.f;
    const MaskGeom gi = m.mask_inner(), gl = m.mask_last();
    ATTNFAST_BLOCK_LOOP(i, pi) {
      const float a = ti[i] / den[0], c = ci[i] / den[1], mk = mask_at(tl, st[2].d, gi, i);
      terms[0] += min2(a, c) * mk;
      terms[1] += a + c;
      terms[2] += a * mk;
      terms[3] += a;
    }
    ATTNFAST_BLOCK_LOOP(i, pl) {
      const float a = tl[i] / den[2], c = cl[i] / den[3], mk = mask_at(tl, st[2].d, gl, i);
      terms[4] += min2(a, c) * mk;
      terms[5] += a + c;
    }
    block_sum(terms);
  }
};

struct SfForward {
  SfMaps m;
  float *inner_iou, *last_iou, *consistency;
  float* maps[2];  // saved maps out: inner, last (2 x N x P)
  static int64_t buf_floats(const SfMaps& m) { return 2 * (m.hi * m.wi + m.hl * m.wl); }
  __device__ void operator()(int64_t n, float* buf) const {
    SfSample s;
    s.build(m, n, buf);
    const int64_t pi = m.pi(), pl = m.pl(), N = m.n_samples;
    ATTNFAST_BLOCK_LOOP(i, pi) {
      maps[0][n * pi + i] = s.ti[i];
      maps[0][(N + n) * pi + i] = s.ci[i];
    }
    ATTNFAST_BLOCK_LOOP(i, pl) {
      maps[1][n * pl + i] = s.tl[i];
      maps[1][(N + n) * pl + i] = s.cl[i];
    }
    if (threadIdx.x != 0) return;
    inner_iou[n] = iou_value(s.terms[0], s.terms[1], m.o.eps);
    last_iou[n] = iou_value(s.terms[4], s.terms[5], m.o.eps);
    consistency[n] = cons_value(s.terms[2], s.terms[3], m.o.alpha, m.o.eps);
  }
};

// Gradients at one pixel w.r.t. the (normalized) target and confuser maps and the mask.
struct PixelGrads {
  float da, db, dm;
};

struct SfBackward {
  SfMaps m;
  const float *g_inner, *g_last, *g_cons;
  float *r_inner, *r_last;  // 2 x N x pi, 2 x N x pl
  int64_t n_samples;
  static int64_t buf_floats(const SfMaps& m) {
    const int64_t pi = m.hi * m.wi, pl = m.hl * m.wl;
    return 2 * (pi + pl) + (m.o.mask_grad ? pi + pl + m.hi * m.wl : 0);
  }

  __device__ void operator()(int64_t n, float* buf) const {
    const int64_t pi = m.pi(), pl = m.pl();
    SfSample s;
    s.build(m, n, buf);
    const IouGrad gi = iou_grad(g_inner[n], s.terms[0], s.terms[1], m.o.eps);
    const IouGrad gl = iou_grad(g_last[n], s.terms[4], s.terms[5], m.o.eps);
    const ConsGrad gc = cons_grad(g_cons[n], s.terms[2], s.terms[3], m.o.eps);
    const MaskGeom mi = m.mask_inner(), ml = m.mask_last();
    auto inner = [&](int64_t i, float& mask) {
      const float a = s.ti[i] / s.den[0], b = s.ci[i] / s.den[1];
      mask = mask_at(s.tl, s.st[2].d, mi, i);
      return PixelGrads{iou_grad_a(gi, a, b, mask) + gc.gm * mask + gc.gs,
                        iou_grad_a(gi, b, a, mask), gi.gi * min2(a, b) + gc.gm * a};
    };
    auto last = [&](int64_t i, float& mask) {
      const float a = s.tl[i] / s.den[2], b = s.cl[i] / s.den[3];
      mask = mask_at(s.tl, s.st[2].d, ml, i);
      return PixelGrads{iou_grad_a(gl, a, b, mask), iou_grad_a(gl, b, a, mask), gl.gi * min2(a, b)};
    };

    // mask_grad: du = dz_last + R^T dz_inner, the gradient at the normalized last target map
    // that the masks see (z = omega (R(u) - sigma)).
    float* du = buf + 2 * (pi + pl);
    if (m.o.mask_grad) {
      float *zi = du + pl, *t = zi + pi;
      ATTNFAST_BLOCK_LOOP(i, pi) {
        float mask;
        const float dm = inner(i, mask).dm;  // sets mask
        zi[i] = mask_z_grad(dm, mask, m.o.omega);
      }
      ATTNFAST_BLOCK_LOOP(i, pl) {
        float mask;
        const float dm = last(i, mask).dm;
        du[i] = mask_z_grad(dm, mask, m.o.omega);
      }
      __syncthreads();
      resize_adjoint_add(zi, mi, t, du);
    }

    // normalize backward: dots sum_p dA_p A_p of the four maps (+ the mask path), ties at the max
    float v[9];
    for (int j = 0; j < 9; ++j) v[j] = 0.f;
    float mask;
    ATTNFAST_BLOCK_LOOP(i, pi) {
      const PixelGrads d = inner(i, mask);
      v[0] += d.da * s.ti[i], v[1] += d.db * s.ci[i];
      v[4] += s.ti[i] == s.st[0].mx ? 1.f : 0.f, v[5] += s.ci[i] == s.st[1].mx ? 1.f : 0.f;
    }
    ATTNFAST_BLOCK_LOOP(i, pl) {
      const PixelGrads d = last(i, mask);
      v[2] += d.da * s.tl[i], v[3] += d.db * s.cl[i];
      v[6] += s.tl[i] == s.st[2].mx ? 1.f : 0.f, v[7] += s.cl[i] == s.st[3].mx ? 1.f : 0.f;
      if (m.o.mask_grad) v[8] += du[i] * s.tl[i];
    }
    block_sum(v);
    float share[4];
    for (int j = 0; j < 4; ++j) share[j] = norm_share(s.st[j], v[j], v[4 + j]);
    const float share_mask = norm_share(s.st[2], v[8], v[6]);
    auto unnormalize = [&](float g, float a, int j) {
      return m.o.normalize ? norm_grad(g, a, s.st[j], share[j]) : g;
    };

    // r = dLoss/dA [A > 0] scale
    ATTNFAST_BLOCK_LOOP(i, pi) {
      const PixelGrads d = inner(i, mask);
      r_inner[n * pi + i] = relu_backward(unnormalize(d.da, s.ti[i], 0), s.ti[i]) * m.scale[0][0];
      r_inner[(n_samples + n) * pi + i] =
          relu_backward(unnormalize(d.db, s.ci[i], 1), s.ci[i]) * m.scale[0][1];
    }
    ATTNFAST_BLOCK_LOOP(i, pl) {
      const PixelGrads d = last(i, mask);
      float dt = unnormalize(d.da, s.tl[i], 2);
      if (m.o.mask_grad) dt += norm_grad(du[i], s.tl[i], s.st[2], share_mask);
      r_last[n * pl + i] = relu_backward(dt, s.tl[i]) * m.scale[1][0];
      r_last[(n_samples + n) * pl + i] =
          relu_backward(unnormalize(d.db, s.cl[i], 3), s.cl[i]) * m.scale[1][1];
    }
  }
};

// `saved`: the saved maps of both layers (backward), or null (forward: from `sums`).
SfMaps sf_maps(const SfLayerPtrs& inner, const SfLayerPtrs& last, const LayerPlan (&lp)[2],
               const Partials (&sums)[2], const SfSavedPtrs* saved, const SfOptions<float>& o) {
  SfMaps m{};
  m.n_samples = inner.geo.n;
  for (int l = 0; l < 2; ++l) {
    m.sums[l] = sums[l];
    m.saved[l] = saved ? saved[l].maps : nullptr;
    for (int c = 0; c < 2; ++c) m.scale[l][c] = lp[l].scale[c];
  }
  m.hi = inner.geo.h, m.wi = inner.geo.w, m.hl = last.geo.h, m.wl = last.geo.w, m.o = o;
  return m;
}

// dg[n,k] = dw[n,k] * dweight/dg for an N x K gradient constant over pixels.
__global__ void __launch_bounds__(kThreads) flat_grad_kernel(const float* dw, const float* g,
                                                             float* dg, int64_t count,
                                                             int64_t kind, float inv_k) {
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * kThreads)
    dg[i] = const_grad_weight_backward(kind, dw[i], g[i], inv_k);
}

// The layer's input gradients from r (2 x N x P): dF, dG of big classes, dw -> dG of small ones.
cudaError_t layer_backward(DType dt, const SfLayerPtrs& l, const LayerPlan& lp, int64_t kind,
                           const float* r, const SfLayerGradPtrs& d, Scratch scratch,
                           cudaStream_t stream) {
  const int64_t nk = l.geo.n * l.geo.k;
  const bool small = lp.v[0].w || lp.v[1].w;
  float* dw = small ? scratch.floats(2 * nk) : nullptr;
  if (small && !dw) return cudaErrorMemoryAllocation;
  ScatterArgs sa{};
  sa.geo = l.geo, sa.f = l.f, sa.d_f = d.d_f;
  for (int c = 0; c < 2; ++c) {
    sa.g[c] = lp.big[c], sa.v[c] = lp.v[c];
    sa.r[c] = r + c * l.geo.n * l.geo.p(), sa.scale[c] = 1.f;
    if (lp.big[c]) sa.d_g[c] = d.d_g[c];
    if (lp.v[c].w) sa.d_w[c] = dw + c * nk;
  }
  ATTNFAST_CUDA_TRY(scatter(dt, sa, scratch, stream));
  if (lp.pooled[0] || lp.pooled[1]) {
    WeightsBackwardArgs wa{};
    wa.geo = l.geo, wa.positive = kind == kChannel;
    for (int c = 0; c < 2; ++c)
      if (lp.pooled[c]) wa.g[c] = l.g[c], wa.d_w[c] = dw + c * nk, wa.d_g[c] = d.d_g[c];
    ATTNFAST_CUDA_TRY(weights_backward(dt, wa, scratch, stream));
  }
  const float inv_k = l.geo.k > 0 ? 1.f / static_cast<float>(l.geo.k) : 0.f;
  for (int c = 0; c < 2; ++c)
    if (l.flat[c])
      ATTNFAST_CUDA_TRY(launch(flat_grad_kernel, grid_for(nk), 0, stream,
                               static_cast<const float*>(dw + c * nk),
                               static_cast<const float*>(l.g[c]),
                               static_cast<float*>(d.d_g[c]), nk, kind, inv_k));
  return cudaSuccess;
}

}  // namespace

cudaError_t sharpen_focus_loss(DType dt, const SfLayerPtrs& inner, const SfLayerPtrs& last,
                               const SfOptions<float>& o, float* inner_iou, float* last_iou,
                               float* consistency, const SfSavedPtrs& s_inner,
                               const SfSavedPtrs& s_last,
                               Scratch scratch, cudaStream_t stream) {
  const SfLayerPtrs layers[2] = {inner, last};
  const SfSavedPtrs saved[2] = {s_inner, s_last};
  LayerPlan lp[2];
  Partials sums[2];
  for (int l = 0; l < 2; ++l) {
    lp[l] = plan_layer(layers[l], o.kind, saved[l].weights, scratch);
    ATTNFAST_CUDA_TRY(layer_sums(dt, layers[l], lp[l], o.kind, scratch, stream, &sums[l]));
  }
  const SfMaps m = sf_maps(inner, last, lp, sums, nullptr, o);
  return run_per_sample(
      SfForward{m, inner_iou, last_iou, consistency, {s_inner.maps, s_last.maps}}, inner.geo.n,
      SfForward::buf_floats(m), &scratch, stream);
}

cudaError_t sharpen_focus_loss_backward(DType dt, const float* g_inner_iou,
                                        const float* g_last_iou, const float* g_consistency,
                                        const SfLayerPtrs& inner, const SfLayerPtrs& last,
                                        const SfSavedPtrs& s_inner, const SfSavedPtrs& s_last,
                                        const SfOptions<float>& o, const SfLayerGradPtrs& d_inner,
                                        const SfLayerGradPtrs& d_last, Scratch scratch,
                                        cudaStream_t stream) {
  const SfLayerPtrs layers[2] = {inner, last};
  const SfSavedPtrs saved[2] = {s_inner, s_last};
  const LayerPlan lp[2] = {plan_layer(inner, o.kind, s_inner.weights, scratch),
                           plan_layer(last, o.kind, s_last.weights, scratch)};
  const Partials sums[2] = {};
  const SfMaps m = sf_maps(inner, last, lp, sums, saved, o);
  float* r[2] = {scratch.floats(2 * inner.geo.n * inner.geo.p()),
                 scratch.floats(2 * last.geo.n * last.geo.p())};
  if (!r[0] || !r[1]) return cudaErrorMemoryAllocation;
  ATTNFAST_CUDA_TRY(run_per_sample(
      SfBackward{m, g_inner_iou, g_last_iou, g_consistency, r[0], r[1], inner.geo.n}, inner.geo.n,
      SfBackward::buf_floats(m), &scratch, stream));
  const SfLayerGradPtrs* grads[2] = {&d_inner, &d_last};
  for (int l = 0; l < 2; ++l)
    ATTNFAST_CUDA_TRY(
        layer_backward(dt, layers[l], lp[l], o.kind, r[l], *grads[l], scratch, stream));
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace attnfast
