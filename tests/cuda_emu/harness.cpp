// ctypes entry points for the host-emulated CUDA launchers (test only).
#include <memory>
#include <vector>

#include "cuda/common.cuh"

using namespace attnfast;
using namespace attnfast::cuda;

// The CUDA runtime calls: runtime_stubs.cpp.

struct Pool {
  std::vector<std::unique_ptr<float[]>> keep;
  static void* alloc(void* ctx, size_t bytes) {
    auto* p = static_cast<Pool*>(ctx);
    const size_t n = (bytes + 3) / 4;
    p->keep.emplace_back(new float[n]);
    for (size_t i = 0; i < n; ++i) p->keep.back()[i] = __builtin_nanf("");  // poison
    return p->keep.back().get();
  }
  Scratch h() { return {this, &alloc}; }
};

static Geometry geo(const int64_t* g) { return {g[0], g[1], g[2], g[3], {g[4], g[5], g[6]}}; }

extern "C" {
int emu_channel_weights(int dt, const int64_t* g, const void* grads, int positive, float* w) {
  Pool p; return channel_weights(DType(dt), geo(g), grads, positive, w, p.h(), nullptr);
}
int emu_channel_weights_backward(int dt, const int64_t* g, const float* grad, const void* grads, int positive, void* dg) {
  Pool p; return channel_weights_backward(DType(dt), geo(g), grad, grads, positive, dg, p.h(), nullptr);
}
int emu_weighted_attention(int dt, const int64_t* g, const void* f, const float* w, float* attn) {
  Pool p; return weighted_attention(DType(dt), geo(g), f, w, attn, p.h(), nullptr);
}
int emu_weighted_attention_backward(int dt, const int64_t* g, const float* grad, const void* f, const float* w, const float* attn, void* df, float* dw) {
  Pool p; return weighted_attention_backward(DType(dt), geo(g), grad, f, w, attn, df, dw, p.h(), nullptr);
}
int emu_pixel_attention(int dt, const int64_t* g, const void* f, const void* gr, float* attn) {
  Pool p; return pixel_attention(DType(dt), geo(g), f, gr, attn, p.h(), nullptr);
}
int emu_pixel_attention_backward(int dt, const int64_t* g, const float* grad, const void* f, const void* gr, const float* attn, void* df, void* dg) {
  Pool p; return pixel_attention_backward(DType(dt), geo(g), grad, f, gr, attn, df, dg, p.h(), nullptr);
}
int emu_normalize_attention(int64_t n, int64_t P, const float* a, float eps, float* out) {
  return normalize_attention(n, P, a, eps, out, nullptr);
}
int emu_normalize_attention_backward(int64_t n, int64_t P, const float* g, const float* a, float eps, float* da) {
  return normalize_attention_backward(n, P, g, a, eps, da, nullptr);
}
int emu_soft_mask(int64_t n, int64_t h, int64_t w, int64_t oh, int64_t ow, float sigma, float omega, float eps, const float* a, float* out) {
  return soft_mask(n, MaskArgs{h, w, oh, ow, sigma, omega, eps}, a, out, nullptr);
}
int emu_soft_mask_backward(int64_t n, int64_t h, int64_t w, int64_t oh, int64_t ow, float sigma, float omega, float eps, const float* g, const float* a, float* da) {
  Pool p; return soft_mask_backward(n, MaskArgs{h, w, oh, ow, sigma, omega, eps}, g, a, da, p.h(), nullptr);
}
int emu_soft_iou(int64_t n, int64_t P, const float* a, const float* b, const float* m, float eps, float* out) {
  return soft_iou(n, P, a, b, m, eps, out, nullptr);
}
int emu_soft_iou_backward(int64_t n, int64_t P, const float* g, const float* a, const float* b, const float* m, float eps, float* da, float* db, float* dm) {
  return soft_iou_backward(n, P, g, a, b, m, eps, da, db, dm, nullptr);
}
int emu_attention_consistency(int64_t n, int64_t P, const float* a, const float* m, float alpha, float eps, float* out) {
  return attention_consistency(n, P, a, m, alpha, eps, out, nullptr);
}
int emu_attention_consistency_backward(int64_t n, int64_t P, const float* g, const float* a, const float* m, float eps, float* da, float* dm) {
  return attention_consistency_backward(n, P, g, a, m, eps, da, dm, nullptr);
}
// layers: geo[2][7], ptr[2][3] (f, g0, g1), flat[2][2]; opts: kind, normalize, mask_grad; fo: sigma, omega, alpha, eps
static void sf_layers(const int64_t* g, void* const* ptr, const int* flat, SfLayerPtrs (&l)[2]) {
  for (int i = 0; i < 2; ++i) {
    l[i].geo = geo(g + 7 * i);
    l[i].f = ptr[3 * i];
    l[i].g[0] = ptr[3 * i + 1], l[i].g[1] = ptr[3 * i + 2];
    l[i].flat[0] = flat[2 * i], l[i].flat[1] = flat[2 * i + 1];
  }
}
static SfOptions<float> sf_opts(const int* o, const float* fo) {
  return {o[0], fo[0], fo[1], fo[2], fo[3], o[1] != 0, o[2] != 0};
}
// saved[4]: inner maps, last maps (2 x N x P), inner weights, last weights (2 x N x K, null for pixel)
int emu_sharpen_focus_loss(int dt, const int64_t* g, void* const* ptr, const int* flat, const int* o, const float* fo, float* out3, float* const* saved) {
  SfLayerPtrs l[2]; sf_layers(g, ptr, flat, l);
  const int64_t n = l[0].geo.n;
  Pool p; return sharpen_focus_loss(DType(dt), l[0], l[1], sf_opts(o, fo), out3, out3 + n, out3 + 2 * n, {saved[0], saved[2]}, {saved[1], saved[3]}, p.h(), nullptr);
}
int emu_sharpen_focus_loss_backward(int dt, const float* g3, const int64_t* g, void* const* ptr, const int* flat, const int* o, const float* fo, float* const* saved, void* const* dptr) {
  SfLayerPtrs l[2]; sf_layers(g, ptr, flat, l);
  const int64_t n = l[0].geo.n;
  SfLayerGradPtrs d[2];
  for (int i = 0; i < 2; ++i) d[i].d_f = dptr[3 * i], d[i].d_g[0] = dptr[3 * i + 1], d[i].d_g[1] = dptr[3 * i + 2];
  Pool p; return sharpen_focus_loss_backward(DType(dt), g3, g3 + n, g3 + 2 * n, l[0], l[1], {saved[0], saved[2]}, {saved[1], saved[3]}, sf_opts(o, fo), d[0], d[1], p.h(), nullptr);
}
int emu_channel_spatial_attention(int dt, const int64_t* g, const void* f, const float* s, float eps, void* out, float* t) {
  Pool p; return channel_spatial_attention(DType(dt), geo(g), f, s, eps, out, t, p.h(), nullptr);
}
int emu_channel_spatial_attention_backward(int dt, const int64_t* g, const void* gout, const float* gt, const void* f, const float* s, const float* t, float eps, void* df, float* ds) {
  Pool p; return channel_spatial_attention_backward(DType(dt), geo(g), gout, gt, f, s, t, eps, df, ds, p.h(), nullptr);
}
int emu_ggam_loss(int64_t n, int64_t k, const float* s, const float* b, float eps, float* out) {
  return ggam_loss(n, k, s, b, eps, out, nullptr);
}
int emu_ggam_loss_backward(int64_t n, int64_t k, const float* g, const float* s, const float* b, float eps, float* ds, float* db) {
  return ggam_loss_backward(n, k, g, s, b, eps, ds, db, nullptr);
}
// guidance: gf[7] F's geometry, lg[3] G's layout; ib: r, b, kind, loss, flat; fo: image_h, image_w, eps;
// ptr: f, g (4-D or R x K), rows, boxes, coverage (null: from the boxes), cell weights (null: 1)
static GuidanceArgs guide_args(const int64_t* gf, const int64_t* lg, const int64_t* ib, const float* fo, void* const* ptr) {
  GuidanceArgs a{};
  a.geo = geo(gf), a.f = ptr[0];
  if (ib[4]) a.g_flat = static_cast<const float*>(ptr[1]); else a.g = ptr[1], a.lg = {lg[0], lg[1], lg[2]};
  a.rows = static_cast<const int64_t*>(ptr[2]), a.r = ib[0], a.b = ib[1];
  a.boxes = static_cast<const float*>(ptr[3]), a.coverage = static_cast<const float*>(ptr[4]);
  a.cell_weights = static_cast<const float*>(ptr[5]);
  a.o = {ib[2], ib[3], fo[0], fo[1], fo[2]};
  return a;
}
int emu_guidance_loss(int dt, const int64_t* gf, const int64_t* lg, const int64_t* ib, const float* fo, void* const* ptr, float* loss, float* maps, float* weights) {
  Pool p; return guidance_loss(DType(dt), guide_args(gf, lg, ib, fo, ptr), loss, maps, weights, p.h(), nullptr);
}
// grads: grad, maps, weights; order, offsets; d: d_f (layout of F), d_g (layout lg, or R x K when flat)
int emu_guidance_loss_backward(int dt, const int64_t* gf, const int64_t* lg, const int64_t* ib, const float* fo, void* const* ptr, const float* grad, const float* maps, const float* weights, const int64_t* order, const int64_t* offsets, void* df, void* dg) {
  const GuidanceArgs a = guide_args(gf, lg, ib, fo, ptr);
  GuidanceGrads d{};
  d.d_f = df, d.ldf = a.geo.lay;
  if (ib[4]) d.d_g_flat = static_cast<float*>(dg); else d.d_g = dg, d.ldg = a.lg;
  Pool p; return guidance_loss_backward(DType(dt), a, grad, maps, weights, order, offsets, d, p.h(), nullptr);
}
}
