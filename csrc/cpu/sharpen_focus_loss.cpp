// sharpen_focus_loss, fused (docs/SPEC.md "sharpen_focus_loss"). Per sample n, one read pass over each
// layer's features builds its target AND confuser maps together (after one pass over the 4-D
// gradients for the channel weights of the channel/gradcam kinds); the map math of
// common/sharpen_focus.h then runs in thread-local buffers. The maps are written straight into the
// saved outputs (host::SfSaved), and the channel kinds' weights copied there.
//
// The map of class c (0 = target, 1 = confuser) of a layer, g its gradient:
//   pixel kind, g 4-D:   A = ReLU((1/K) sum_k g[k,p] F[k,p])                       ("pixel mode")
//   otherwise:           A = ReLU(sum_k w[k] F[k,p])                                ("weights mode")
//     w = mean_p ReLU(g) (channel) or mean_p g (gradcam) for 4-D g; for N x K g (a gradient
//     constant over pixels) w = g/K (pixel), ReLU(g) (channel), g (gradcam).
// Backward: the maps and weights are the forward's saved ones (the pixel kind saves no weights:
// those of its N x K gradients are g/K again), get dA from sf_backward, e = dA [A > 0], then ONE
// streaming pass over the layer (tile by tile) writing dF and dG of pixel-mode classes:
//   pixel mode:   dF += (e/K) g,  dg = (e/K) F
//   weights mode: dF += e w[k],   r[k] = sum_p e F;  then dg[k,p] = r[k]/P * [g > 0 or 1] (4-D,
//                 a write pass over g) or dg[k] = r[k] * dw/dg (N x K; no K x H x W tensor).
#include <torch/library.h>

#include <type_traits>

#include "common/sharpen_focus.h"
#include "cpu/channel_weights.h"
#include "host/sharpen_focus.h"

namespace attnfast::cpu {
namespace {

// Raw pointers of one layer (S: element type, A: accumulation type); outputs null in forward.
template <class S, class A> struct Layer {
  const S* f = nullptr;
  const S* g[2] = {nullptr, nullptr};   // 4-D gradients
  const A* g2[2] = {nullptr, nullptr};  // N x K gradients
  S* df = nullptr;
  S* dg[2] = {nullptr, nullptr};
  A* dg2[2] = {nullptr, nullptr};
  Layout L;
  int64_t K, P, kind;
  bool px[2];  // pixel mode per class
};

template <class S, class A> Layer<S, A> layer_ptrs(const host::SfLayer& in, int64_t kind) {
  Layer<S, A> ly;
  ly.f = in.f.const_data_ptr<S>();
  for (int c = 0; c < 2; ++c) {
    if (in.flat[c]) {
      ly.g2[c] = in.g[c].const_data_ptr<A>();
    } else {
      ly.g[c] = in.g[c].const_data_ptr<S>();
    }
    ly.px[c] = kind == kPixel && !in.flat[c];
  }
  ly.L = layout_of(in.f), ly.K = in.f.size(1), ly.P = pixels(in.f), ly.kind = kind;
  return ly;
}

// fn(px0, px1) with the pixel modes as compile-time constants.
template <class Fn> void with_modes(const bool* px, const Fn& fn) {
  using T = std::true_type;
  using F = std::false_type;
  if (px[0]) {
    px[1] ? fn(T{}, T{}) : fn(T{}, F{});
  } else {
    px[1] ? fn(F{}, T{}) : fn(F{}, F{});
  }
}

// p + off, or null for an absent (N x K) gradient.
template <class S> S* at_sample(S* p, int64_t off) { return p ? p + off : nullptr; }

// w[k] of class c of sample n (weights mode only).
template <class S, class A> void class_weights(const Layer<S, A>& ly, int c, int64_t n, A* w) {
  const int64_t K = ly.K;
  if (ly.g2[c]) {
    for (int64_t k = 0; k < K; ++k) w[k] = const_grad_weight(ly.kind, ly.g2[c][n * K + k], A(1) / A(K));
    return;
  }
  fill(w, K, A(0));
  add_channel_sums(ly.g[c] + n * ly.L.sn, ly.L, 0, K, ly.P, ly.kind == kChannel, w);
  for (int64_t k = 0; k < K; ++k) w[k] /= A(ly.P);
}

// The raw maps a0 (target), a1 (confuser) of sample n; w: 2K scratch that keeps the weights.
// Tile by tile, the tile's map values accumulate in local arrays.
template <class S, class A>
void layer_maps(const Layer<S, A>& ly, int64_t n, A* w, A* a0, A* a1) {
  const int64_t K = ly.K, P = ly.P, base = n * ly.L.sn;
  for (int c = 0; c < 2; ++c)
    if (!ly.px[c]) class_weights(ly, c, n, w + c * K);
  fill(a0, P, A(0));
  fill(a1, P, A(0));
  const S *f = ly.f + base, *g0 = at_sample(ly.g[0], base), *g1 = at_sample(ly.g[1], base);
  const A *w0 = w, *w1 = w + K;
  with_modes(ly.px, [&](auto px0, auto px1) {
    for_tiles(ly.L, 0, K, 0, P, [&](int64_t k0, int64_t k1, int64_t p0, int64_t p1) {
      A z0[kTile], z1[kTile];
      std::copy(a0 + p0, a0 + p1, z0);
      std::copy(a1 + p0, a1 + p1, z1);
      visit(ly.L, k0, k1, p0, p1, [&](int64_t k, int64_t p, int64_t off) {
        const A fv = static_cast<A>(f[off]);
        if constexpr (decltype(px0)::value) z0[p - p0] += static_cast<A>(g0[off]) * fv;
        else z0[p - p0] += w0[k] * fv;
        if constexpr (decltype(px1)::value) z1[p - p0] += static_cast<A>(g1[off]) * fv;
        else z1[p - p0] += w1[k] * fv;
      });
      std::copy(z0, z0 + (p1 - p0), a0 + p0);
      std::copy(z1, z1 + (p1 - p0), a1 + p0);
    });
  });
  for (int64_t p = 0; p < P; ++p) {
    a0[p] = relu(ly.px[0] ? a0[p] / A(K) : a0[p]);
    a1[p] = relu(ly.px[1] ? a1[p] / A(K) : a1[p]);
  }
}

// dg of a weights-mode class c from r[k] = sum_p e[p] F[k,p] = dL/dw[k] (r is overwritten).
template <class S, class A>
void class_weights_backward(const Layer<S, A>& ly, int c, int64_t n, A* r) {
  const int64_t K = ly.K;
  if (ly.g2[c]) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t i = n * K + k;
      ly.dg2[c][i] = const_grad_weight_backward(ly.kind, r[k], ly.g2[c][i], A(1) / A(K));
    }
    return;
  }
  const bool positive = ly.kind == kChannel;
  const int64_t base = n * ly.L.sn;
  const S* g = ly.g[c] + base;
  S* dg = ly.dg[c] + base;
  for (int64_t k = 0; k < K; ++k) r[k] /= A(ly.P);
  visit(ly.L, 0, K, 0, ly.P, [&](int64_t k, int64_t, int64_t off) {
    dg[off] = static_cast<S>(weight_term_backward(positive, r[k], static_cast<A>(g[off])));
  });
}

// Gradients of sample n given e0 = dA_target, e1 = dA_confuser (overwritten); w as left by
// layer_maps; r: 2K scratch. One streaming pass over the layer, tile by tile: dF (and the
// r[k] sums) from the tile, then dG of pixel-mode classes from the same, cached, tile.
template <class S, class A>
void layer_backward(const Layer<S, A>& ly, int64_t n, const A* w, const A* a0, const A* a1, A* e0,
                    A* e1, A* r) {
  const int64_t K = ly.K, P = ly.P, base = n * ly.L.sn;
  const A s0 = ly.px[0] ? A(1) / A(K) : A(1), s1 = ly.px[1] ? A(1) / A(K) : A(1);
  for (int64_t p = 0; p < P; ++p) {
    e0[p] = relu_backward(e0[p], a0[p]) * s0;
    e1[p] = relu_backward(e1[p], a1[p]) * s1;
  }
  fill(r, 2 * K, A(0));
  const S *f = ly.f + base, *g0 = at_sample(ly.g[0], base), *g1 = at_sample(ly.g[1], base);
  S *df = ly.df + base, *dg0 = at_sample(ly.dg[0], base), *dg1 = at_sample(ly.dg[1], base);
  with_modes(ly.px, [&](auto px0, auto px1) {
    constexpr bool pix0 = decltype(px0)::value, pix1 = decltype(px1)::value;
    for_tiles(ly.L, 0, K, 0, P, [&](int64_t k0, int64_t k1, int64_t p0, int64_t p1) {
      A u0[kTile], u1[kTile], v0[kTile], v1[kTile], r0[kTile], r1[kTile];  // e, w, r of the tile
      std::copy(e0 + p0, e0 + p1, u0);
      std::copy(e1 + p0, e1 + p1, u1);
      std::copy(w + k0, w + k1, v0);
      std::copy(w + K + k0, w + K + k1, v1);
      std::fill(r0, r0 + (k1 - k0), A(0));
      std::fill(r1, r1 + (k1 - k0), A(0));
      visit(ly.L, k0, k1, p0, p1, [&](int64_t k, int64_t p, int64_t off) {
        [[maybe_unused]] const A fv = static_cast<A>(f[off]);
        A d;
        if constexpr (pix0) {
          d = u0[p - p0] * static_cast<A>(g0[off]);
        } else {
          d = u0[p - p0] * v0[k - k0];
          r0[k - k0] += u0[p - p0] * fv;
        }
        if constexpr (pix1) {
          d += u1[p - p0] * static_cast<A>(g1[off]);
        } else {
          d += u1[p - p0] * v1[k - k0];
          r1[k - k0] += u1[p - p0] * fv;
        }
        df[off] = static_cast<S>(d);
      });
      if constexpr (pix0 || pix1) {
        visit(ly.L, k0, k1, p0, p1, [&](int64_t, int64_t p, int64_t off) {
          const A fv = static_cast<A>(f[off]);
          if constexpr (pix0) dg0[off] = static_cast<S>(u0[p - p0] * fv);
          if constexpr (pix1) dg1[off] = static_cast<S>(u1[p - p0] * fv);
        });
      }
      for (int64_t k = k0; k < k1; ++k) {
        r[k] += r0[k - k0];
        r[K + k] += r1[k - k0];
      }
    });
  });
  for (int c = 0; c < 2; ++c)
    if (!ly.px[c]) class_weights_backward(ly, c, n, r + c * K);
}

// Weights w (2K: target, confuser) of sample n for layer_backward: the saved ones (2 x N x K) for
// the channel kinds; for the pixel kind only N x K classes have weights, rebuilt from g.
template <class S, class A>
void saved_weights(const Layer<S, A>& ly, int64_t n, int64_t N, const A* saved, A* w) {
  const int64_t K = ly.K;
  for (int c = 0; c < 2; ++c) {
    if (ly.px[c]) continue;
    if (ly.kind == kPixel) {
      class_weights(ly, c, n, w + c * K);
    } else {
      std::copy(saved + (c * N + n) * K, saved + (c * N + n + 1) * K, w + c * K);
    }
  }
}

// The saved maps and weights of one layer as pointers: map of class c of sample n at
// maps + (c N + n) P, weights at weights + (c N + n) K (channel kinds only).
template <class A> struct SavedPtrs {
  A *maps, *weights;
  int64_t N, P, K;
  A* map(int c, int64_t n) const { return maps + (c * N + n) * P; }
};
template <class A> SavedPtrs<A> saved_ptrs(const host::SfSaved& s) {
  return {s.maps.data_ptr<A>(), s.weights.data_ptr<A>(), s.maps.size(1),
          s.maps.size(2) * s.maps.size(3), s.weights.size(2)};
}

// Thread-local scratch of one sample: 4 map gradients, weights of both layers, r, and the map
// math's own scratch.
struct Scratch {
  int64_t pi, pl, ki, kl;
  SfShape shape;
  Scratch(const Tensor& fi, const Tensor& fl)
      : pi(pixels(fi)), pl(pixels(fl)), ki(fi.size(1)), kl(fl.size(1)),
        shape{fi.size(2), fi.size(3), fl.size(2), fl.size(3)} {}
  int64_t size() const {
    return (2 * pi + 2 * pl) + 2 * ki + 2 * kl + 2 * std::max(ki, kl) + sf_scratch_size(shape);
  }
  template <class A> struct Parts {
    A *dti, *dci, *dtl, *dcl, *wi, *wl, *r, *sf;
  };
  template <class A> Parts<A> split(A* s) const {
    Parts<A> q;
    q.dti = s, q.dci = q.dti + pi, q.dtl = q.dci + pi, q.dcl = q.dtl + pl;
    q.wi = q.dcl + pl, q.wl = q.wi + 2 * ki, q.r = q.wl + 2 * kl, q.sf = q.r + 2 * std::max(ki, kl);
    return q;
  }
};

void run(const host::SharpenFocusLoss& a) {
  const host::SfLayer &in_i = a.in.layer[0], &in_l = a.in.layer[1];
  const int64_t N = a.in.n, kind = a.in.o.kind;
  const Scratch sc(in_i.f, in_l.f);
  ATTNFAST_DISPATCH_BIG(in_i.f.scalar_type(), "attnfast::sharpen_focus_loss", [&] {
    using A = at::opmath_type<scalar_t>;
    const auto li = layer_ptrs<scalar_t, A>(in_i, kind), ll = layer_ptrs<scalar_t, A>(in_l, kind);
    const auto o = host::options_as<A>(a.in.o);
    A *oi = a.inner_iou.mutable_data_ptr<A>(), *ol = a.last_iou.mutable_data_ptr<A>(),
      *oc = a.consistency.mutable_data_ptr<A>();
    const SavedPtrs<A> si = saved_ptrs<A>(a.saved[0]), sl = saved_ptrs<A>(a.saved[1]);
    const int64_t work = 3 * (sc.ki * sc.pi + sc.kl * sc.pl);
    for_each_sample<A>(N, work, sc.size(), [&](int64_t n, A* s) {
      const auto q = sc.split(s);
      layer_maps(li, n, q.wi, si.map(0, n), si.map(1, n));
      layer_maps(ll, n, q.wl, sl.map(0, n), sl.map(1, n));
      for (int c = 0; c < 2; ++c) {  // weights of the channel kinds (K = 0 for the pixel kind)
        std::copy(q.wi + c * si.K, q.wi + (c + 1) * si.K, si.weights + (c * N + n) * si.K);
        std::copy(q.wl + c * sl.K, q.wl + (c + 1) * sl.K, sl.weights + (c * N + n) * sl.K);
      }
      A v[3];
      sf_forward<A>(si.map(0, n), si.map(1, n), sl.map(0, n), sl.map(1, n), sc.shape, o, q.sf, v);
      oi[n] = v[0], ol[n] = v[1], oc[n] = v[2];
    });
  });
}

void run(const host::SharpenFocusLossBackward& a) {
  const host::SfLayer &in_i = a.in.layer[0], &in_l = a.in.layer[1];
  const int64_t N = a.in.n, kind = a.in.o.kind;
  const Scratch sc(in_i.f, in_l.f);
  ATTNFAST_DISPATCH_BIG(in_i.f.scalar_type(), "attnfast::sharpen_focus_loss_backward", [&] {
    using S = scalar_t;
    using A = at::opmath_type<S>;
    Layer<S, A> ly[2] = {layer_ptrs<S, A>(in_i, kind), layer_ptrs<S, A>(in_l, kind)};
    for (int j = 0; j < 2; ++j) {
      ly[j].df = a.d[j].df.work.mutable_data_ptr<S>();
      for (int c = 0; c < 2; ++c) {
        const Tensor& w = a.d[j].dg[c].work;
        if (a.in.layer[j].flat[c]) {
          ly[j].dg2[c] = w.mutable_data_ptr<A>();
        } else {
          ly[j].dg[c] = w.mutable_data_ptr<S>();
        }
      }
    }
    const auto o = host::options_as<A>(a.in.o);
    const A *gip = a.grad[0].const_data_ptr<A>(), *glp = a.grad[1].const_data_ptr<A>(),
            *gcp = a.grad[2].const_data_ptr<A>();
    const SavedPtrs<A> si = saved_ptrs<A>(a.saved[0]), sl = saved_ptrs<A>(a.saved[1]);
    const int64_t work = 6 * (sc.ki * sc.pi + sc.kl * sc.pl);
    for_each_sample<A>(N, work, sc.size(), [&](int64_t n, A* s) {
      const auto q = sc.split(s);
      const A *ti = si.map(0, n), *ci = si.map(1, n), *tl = sl.map(0, n), *cl = sl.map(1, n);
      saved_weights(ly[0], n, N, si.weights, q.wi);
      saved_weights(ly[1], n, N, sl.weights, q.wl);
      sf_backward(gip[n], glp[n], gcp[n], ti, ci, tl, cl, sc.shape, o, q.sf, q.dti, q.dci, q.dtl,
                  q.dcl);
      layer_backward(ly[0], n, q.wi, ti, ci, q.dti, q.dci, q.r);
      layer_backward(ly[1], n, q.wl, tl, cl, q.dtl, q.dcl, q.r);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CPU, m) { ATTNFAST_IMPL(m, kCpu, sharpen_focus_loss, run); }

}  // namespace attnfast::cpu
