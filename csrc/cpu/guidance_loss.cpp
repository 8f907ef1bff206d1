// guidance_loss (docs/SPEC.md "guidance_loss"): per row r = (image n = rows[r], class), the map A
// of F[n] and G[r] in one pass (after one pass over a 4-D G for the channel weights of the channel
// and gradcam kinds), the box coverage of the row's cells (common/guidance.h, no coverage tensor),
// and the loss. Rows run in parallel; the maps and weights go to the saved outputs.
//   pixel mode (kinds pixel and ixg with 4-D G): A = s sum_k G[r,k,p] F[n,k,p], s = 1/K (pixel) or 1
//   weights mode (channel, gradcam, or R x K G):  A = sum_k w[k] F[n,k,p]
//   then ReLU for every kind but ixg.
// Backward: images run in parallel, each over its rows (host: order/offsets), so dF[n] sums its
// rows' contributions without races, in the accumulation type: e = dL/dA (guidance_backward),
// e *= [A > 0] unless ixg, then pixel mode dF += s e G, dG = s e F; weights mode dF += e w[k],
// q[k] = sum_p e F, dG = q[k]/P * [G > 0 for channel] (4-D) or q[k] * dw/dg (R x K).
#include <torch/library.h>

#include "common/guidance.h"
#include "cpu/channel_weights.h"
#include "host/guidance.h"

namespace attnfast::cpu {
namespace {

// Raw pointers of one call (S: element type, A: accumulation type).
template <class S, class A> struct Ptrs {
  const S* f;
  const S* g = nullptr;   // 4-D G
  const A* g2 = nullptr;  // R x K G
  const int64_t* rows;
  const A *boxes, *cov;   // cov null: from the boxes
  const A* t;             // cell weights of the energy's total, null: 1
  Layout lf, lg;
  int64_t K, P, h, w, B;
  bool pixel_mode;
  GuidanceOptions<A> o;
};

template <class S, class A> Ptrs<S, A> ptrs(const host::Guidance& in) {
  Ptrs<S, A> q;
  q.f = in.f.const_data_ptr<S>();
  if (in.flat) {
    q.g2 = in.g.const_data_ptr<A>();
  } else {
    q.g = in.g.const_data_ptr<S>();
    q.lg = layout_of(in.g);
  }
  q.rows = in.rows.const_data_ptr<int64_t>();
  q.boxes = in.boxes.const_data_ptr<A>();
  q.cov = in.coverage.numel() ? in.coverage.const_data_ptr<A>() : nullptr;
  q.t = in.cell_weights.numel() ? in.cell_weights.const_data_ptr<A>() : nullptr;
  q.lf = layout_of(in.f);
  q.K = in.f.size(1), q.h = in.f.size(2), q.w = in.f.size(3), q.P = q.h * q.w;
  q.B = in.boxes.size(1);
  q.o = host::guidance_options_as<A>(in.o);
  q.pixel_mode = !in.flat && (q.o.kind == kPixel || q.o.kind == kIxg);
  return q;
}

// 1/K for the pixel kind, else 1: the factor of the pixel-mode map.
template <class S, class A> A pixel_scale(const Ptrs<S, A>& q) {
  return q.o.kind == kPixel ? A(1) / A(q.K) : A(1);
}

// Channel weights w (K) of row r in weights mode.
template <class S, class A> void row_weights(const Ptrs<S, A>& q, int64_t r, A* w) {
  const int64_t K = q.K;
  if (q.g2) {
    for (int64_t k = 0; k < K; ++k) w[k] = const_grad_weight(q.o.kind, q.g2[r * K + k], A(1) / A(K));
    return;
  }
  fill(w, K, A(0));
  add_channel_sums(q.g + r * q.lg.sn, q.lg, 0, K, q.P, q.o.kind == kChannel, w);
  for (int64_t k = 0; k < K; ++k) w[k] /= A(q.P);
}

// Offset of element (k, p) of a row of G: F's own offset when G's sample layout is F's.
template <class S, class A> struct GridG {
  const Layout &lf, &lg;
  bool same;
  int64_t at(int64_t k, int64_t p, int64_t off) const { return same ? off : k * lg.sk + p * lg.sp; }
};
template <class S, class A> GridG<S, A> grid_g(const Ptrs<S, A>& q) {
  return {q.lf, q.lg, q.lf.sk == q.lg.sk && q.lf.sp == q.lg.sp};
}

// The map a (P) of row r; w (K) holds the weights in weights mode. Tile by tile (cpu_common.h
// for_tiles), the tile's map values accumulate in a local array (no aliasing: it vectorizes).
template <class S, class A> void row_map(const Ptrs<S, A>& q, int64_t r, A* w, A* a) {
  const int64_t n = q.rows[r];
  const S* f = q.f + n * q.lf.sn;
  const S* g = q.pixel_mode ? q.g + r * q.lg.sn : nullptr;
  const auto gg = grid_g(q);
  if (!q.pixel_mode) row_weights(q, r, w);
  fill(a, q.P, A(0));
  for_tiles(q.lf, 0, q.K, 0, q.P, [&](int64_t k0, int64_t k1, int64_t p0, int64_t p1) {
    A z[kTile], v[kTile];
    std::copy(a + p0, a + p1, z);
    if (!q.pixel_mode) std::copy(w + k0, w + k1, v);
    if (q.pixel_mode) {
      visit(q.lf, k0, k1, p0, p1, [&](int64_t k, int64_t p, int64_t off) {
        z[p - p0] += static_cast<A>(g[gg.at(k, p, off)]) * static_cast<A>(f[off]);
      });
    } else {
      visit(q.lf, k0, k1, p0, p1, [&](int64_t k, int64_t p, int64_t off) {
        z[p - p0] += v[k - k0] * static_cast<A>(f[off]);
      });
    }
    std::copy(z, z + (p1 - p0), a + p0);
  });
  const A s = q.pixel_mode ? pixel_scale(q) : A(1);
  for (int64_t p = 0; p < q.P; ++p) a[p] = q.o.kind == kIxg ? a[p] * s : relu(a[p] * s);
}

// One row's contribution to dF[n] (acc, K x P in F's element order: acc[k * P + p]) and its dG,
// given e = dL/dA after the map's ReLU (pixel mode: times the 1/K of the pixel kind); w: the
// weights (weights mode); qk: K scratch. Tile by tile with local copies, as row_map.
template <class S, class A>
void row_backward(const Ptrs<S, A>& q, int64_t r, const A* e, const A* w, A* acc, A* qk, S* dgr,
                  const Layout& ldg, A* dg2) {
  const int64_t K = q.K, P = q.P;
  const S* f = q.f + q.rows[r] * q.lf.sn;
  const S* g = q.g ? q.g + r * q.lg.sn : nullptr;
  const auto gg = grid_g(q);
  const bool same_dg = ldg.sk == q.lf.sk && ldg.sp == q.lf.sp;
  fill(qk, K, A(0));
  for_tiles(q.lf, 0, K, 0, P, [&](int64_t k0, int64_t k1, int64_t p0, int64_t p1) {
    A u[kTile], v[kTile], rk[kTile];
    std::copy(e + p0, e + p1, u);
    if (q.pixel_mode) {
      visit(q.lf, k0, k1, p0, p1, [&](int64_t k, int64_t p, int64_t off) {
        acc[k * P + p] += u[p - p0] * static_cast<A>(g[gg.at(k, p, off)]);
        dgr[same_dg ? off : k * ldg.sk + p * ldg.sp] = static_cast<S>(u[p - p0] * static_cast<A>(f[off]));
      });
      return;
    }
    std::copy(w + k0, w + k1, v);
    std::fill(rk, rk + (k1 - k0), A(0));
    visit(q.lf, k0, k1, p0, p1, [&](int64_t k, int64_t p, int64_t off) {
      acc[k * P + p] += u[p - p0] * v[k - k0];
      rk[k - k0] += u[p - p0] * static_cast<A>(f[off]);
    });
    for (int64_t k = k0; k < k1; ++k) qk[k] += rk[k - k0];
  });
  if (q.pixel_mode) return;
  if (dg2) {  // R x K grads: dg = q[k] dw/dg
    for (int64_t k = 0; k < K; ++k)
      dg2[r * K + k] = const_grad_weight_backward(q.o.kind, qk[k], q.g2[r * K + k], A(1) / A(K));
    return;
  }
  const bool positive = q.o.kind == kChannel;  // 4-D grads of the channel kinds: q[k] / P [g > 0]
  for (int64_t k = 0; k < K; ++k) qk[k] /= A(P);
  visit(q.lg, 0, K, 0, P, [&](int64_t k, int64_t p, int64_t off) {
    dgr[k * ldg.sk + p * ldg.sp] = static_cast<S>(weight_term_backward(positive, qk[k], static_cast<A>(g[off])));
  });
}

// The coverage of row r: the given one, or computed into cov (grid: box_grid_size(B) scratch).
template <class S, class A> const A* row_coverage(const Ptrs<S, A>& q, int64_t r, A* grid, A* cov) {
  if (q.cov) return q.cov + r * q.P;
  box_coverage(q.boxes + r * q.B * 4, q.B, q.o.image_h, q.o.image_w, q.h, q.w, grid, cov);
  return cov;
}

void run(const host::GuidanceLoss& a) {
  const host::Guidance& in = a.in;
  ATTNFAST_DISPATCH_BIG(in.f.scalar_type(), "attnfast::guidance_loss", [&] {
    using A = acc_t;
    const auto q = ptrs<scalar_t, A>(in);
    const int64_t K = q.K, P = q.P, kw = a.weights.size(1);
    A *out = a.loss.mutable_data_ptr<A>(), *maps = a.maps.mutable_data_ptr<A>(),
      *weights = a.weights.mutable_data_ptr<A>();
    for_each_sample<A>(in.r, 2 * K * P, K + 2 * P + box_grid_size(q.B), [&](int64_t r, A* s) {
      A *w = s, *cov = w + K, *ap = cov + P, *grid = ap + P;
      A* m = maps + r * P;
      row_map(q, r, w, m);
      std::copy(w, w + kw, weights + r * kw);
      out[r] = guidance_value(m, row_coverage(q, r, grid, cov), q.t, P, q.o.loss, q.o.eps, ap);
    });
  });
}

void run(const host::GuidanceLossBackward& a) {
  const host::Guidance& in = a.in;
  ATTNFAST_DISPATCH_BIG(in.f.scalar_type(), "attnfast::guidance_loss_backward", [&] {
    using S = scalar_t;
    using A = acc_t;
    const auto q = ptrs<S, A>(in);
    const int64_t K = q.K, P = q.P, N = in.f.size(0), kw = a.weights.size(1);
    const A *grad = a.grad.const_data_ptr<A>(), *maps = a.maps.const_data_ptr<A>(),
            *saved_w = a.weights.const_data_ptr<A>();
    const int64_t *order = a.order.const_data_ptr<int64_t>(),
                  *offsets = a.offsets.const_data_ptr<int64_t>();
    S* df = a.df.work.mutable_data_ptr<S>();
    S* dg = in.flat ? nullptr : a.dg.work.mutable_data_ptr<S>();
    A* dg2 = in.flat ? a.dg.work.mutable_data_ptr<A>() : nullptr;
    const Layout ldg = in.flat ? Layout{} : layout_of(a.dg.work);
    const int64_t scratch = K * P + 2 * K + 4 * P + box_grid_size(q.B);
    for_each_sample<A>(N, 3 * K * P, scratch, [&](int64_t n, A* s) {
      A *acc = s, *w = acc + K * P, *qk = w + K, *cov = qk + K, *e = cov + P, *sc = e + P,
        *grid = sc + 2 * P;
      const S* f = q.f + n * q.lf.sn;
      fill(acc, K * P, A(0));
      for (int64_t j = offsets[n]; j < offsets[n + 1]; ++j) {
        const int64_t r = order[j];
        const A* m = maps + r * P;
        guidance_backward(grad[r], m, row_coverage(q, r, grid, cov), q.t, P, q.o.loss, q.o.eps, sc, e);
        const A scale = q.pixel_mode ? pixel_scale(q) : A(1);
        for (int64_t p = 0; p < P; ++p)
          e[p] = (q.o.kind == kIxg ? e[p] : relu_backward(e[p], m[p])) * scale;
        if (!q.pixel_mode) {
          if (kw) {
            std::copy(saved_w + r * kw, saved_w + (r + 1) * kw, w);
          } else {
            row_weights(q, r, w);  // R x K grads of the pixel and ixg kinds: w from g again
          }
        }
        row_backward(q, r, e, w, acc, qk, dg ? dg + r * ldg.sn : nullptr, ldg, dg2);
      }
      S* dfn = df + n * q.lf.sn;
      visit(q.lf, 0, K, 0, P, [&](int64_t k, int64_t p, int64_t off) {
        dfn[off] = static_cast<S>(acc[k * P + p]);
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CPU, m) { ATTNFAST_IMPL(m, kCpu, guidance_loss, run); }

}  // namespace attnfast::cpu
