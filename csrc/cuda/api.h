// The CUDA launchers of attnfast, framework-free: raw pointers, sizes, element strides
// (common/defs.h Layout), a dtype tag and a cudaStream_t. csrc/cuda/glue/ is the only caller and
// the only CUDA code that knows about tensors. One function per op of attnfast/_schema.py, same
// name; the math of each is attnfast/reference.py.
//
// Conventions (the ones attnfast/_schema.py lets kernels assume):
//  * big tensors (F, G, and the N x K x H x W gradients) have element type `DType` and share
//    ONE layout per call (per layer for sharpen_focus_loss): `Geometry` gives the sizes and
//    the element strides, element (n, k, p) at ptr + n*sn + k*sk + p*sp, p = i*W + j; any such
//    strides work (NCHW, channels_last, broadcast), 16-byte vector accesses are used where the
//    strides and alignment allow. A null big pointer means "not read" / "not wanted";
//  * small tensors (maps N x P, weights N x K, per-sample N) are contiguous float32;
//  * every launcher enqueues its work on `stream` and never synchronizes; it returns the first
//    CUDA error it saw (the caller also checks cudaGetLastError after it);
//  * temporary device memory comes from `Scratch` and must stay valid until the work enqueued
//    on `stream` is done (the PyTorch caching allocator gives exactly that).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "common/defs.h"
#include "common/guidance.h"

namespace attnfast {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Sizes and the common layout of the big tensors of a call.
struct Geometry {
  int64_t n, k, h, w;
  Layout lay;
  int64_t p() const { return h * w; }
};

// Device memory for temporaries: alloc(ctx, bytes) returns 16-byte aligned memory or null.
struct Scratch {
  void* ctx;
  void* (*alloc)(void* ctx, size_t bytes);
  float* floats(int64_t count) const {
    const size_t n = static_cast<size_t>(count > 0 ? count : 1);
    return static_cast<float*>(alloc(ctx, sizeof(float) * n));
  }
};

// ---------------------------------------------------------------- attention maps
cudaError_t channel_weights(DType dt, const Geometry& g, const void* grads, bool positive,
                            float* weights, Scratch scratch, cudaStream_t stream);
cudaError_t channel_weights_backward(DType dt, const Geometry& g, const float* grad,
                                     const void* grads, bool positive, void* d_grads,
                                     Scratch scratch, cudaStream_t stream);

cudaError_t weighted_attention(DType dt, const Geometry& g, const void* features,
                               const float* weights, float* attn, Scratch scratch,
                               cudaStream_t stream);
cudaError_t weighted_attention_backward(DType dt, const Geometry& g, const float* grad,
                                        const void* features, const float* weights,
                                        const float* attn, void* d_features, float* d_weights,
                                        Scratch scratch, cudaStream_t stream);

cudaError_t pixel_attention(DType dt, const Geometry& g, const void* features, const void* grads,
                            float* attn, Scratch scratch, cudaStream_t stream);
cudaError_t pixel_attention_backward(DType dt, const Geometry& g, const float* grad,
                                     const void* features, const void* grads, const float* attn,
                                     void* d_features, void* d_grads, Scratch scratch,
                                     cudaStream_t stream);

// ---------------------------------------------------------------- per-sample map ops
cudaError_t normalize_attention(int64_t n, int64_t p, const float* attn, float eps, float* out,
                                cudaStream_t stream);
cudaError_t normalize_attention_backward(int64_t n, int64_t p, const float* grad,
                                         const float* attn, float eps, float* d_attn,
                                         cudaStream_t stream);

struct MaskArgs {
  int64_t h, w, out_h, out_w;
  float sigma, omega, eps;
};
cudaError_t soft_mask(int64_t n, const MaskArgs& m, const float* attn, float* out,
                      cudaStream_t stream);
cudaError_t soft_mask_backward(int64_t n, const MaskArgs& m, const float* grad, const float* attn,
                               float* d_attn, Scratch scratch, cudaStream_t stream);

// `mask` null: M = 1 (then `d_mask` is ignored); `d_mask` null: not wanted.
cudaError_t soft_iou(int64_t n, int64_t p, const float* a, const float* b, const float* mask,
                     float eps, float* out, cudaStream_t stream);
cudaError_t soft_iou_backward(int64_t n, int64_t p, const float* grad, const float* a,
                              const float* b, const float* mask, float eps, float* d_a,
                              float* d_b, float* d_mask, cudaStream_t stream);

cudaError_t attention_consistency(int64_t n, int64_t p, const float* attn, const float* mask,
                                  float alpha, float eps, float* out, cudaStream_t stream);
cudaError_t attention_consistency_backward(int64_t n, int64_t p, const float* grad,
                                           const float* attn, const float* mask, float eps,
                                           float* d_attn, float* d_mask, cudaStream_t stream);

// ---------------------------------------------------------------- fused Sharpen Focus
// The raw-pointer forms of csrc/host/sharpen_focus.h's SfLayer, SfLayerGrads and SfSaved (the
// glue, csrc/cuda/glue/sharpen_focus.cpp, converts one into the other): distinct names, so that
// one name means one struct in the whole of csrc/.
// One layer: features F and the gradients of the target (0) and confuser (1) class scores,
// each either big (`flat[c]` false) or N x K float32 (`flat[c]` true: the same at every pixel;
// g[c] is then a const float*).
struct SfLayerPtrs {
  Geometry geo;
  const void* f;
  const void* g[2];
  bool flat[2];
};
// Its gradients: d_f like F, d_g[c] like g[c] (a float* N x K when flat[c]).
struct SfLayerGradPtrs {
  void* d_f;
  void* d_g[2];
};
// What the forward leaves of one layer for the backward (float32, contiguous): maps 2 x N x P,
// the raw maps A_c (after the ReLU, before any normalization) of target (0) and confuser (1);
// weights 2 x N x K, the w of A_c = ReLU(sum_k w[k] F[k]) (channel kinds; null for the pixel
// kind). The forward writes them, the backward only reads them.
struct SfSavedPtrs {
  float* maps;
  float* weights;
};
// The options (kind, sigma, omega, alpha, eps, normalize, mask_grad): SfOptions of common/defs.h.
cudaError_t sharpen_focus_loss(DType dt, const SfLayerPtrs& inner, const SfLayerPtrs& last,
                               const SfOptions<float>& o, float* inner_iou, float* last_iou,
                               float* consistency, const SfSavedPtrs& s_inner,
                               const SfSavedPtrs& s_last,
                               Scratch scratch, cudaStream_t stream);
cudaError_t sharpen_focus_loss_backward(DType dt, const float* g_inner_iou,
                                        const float* g_last_iou, const float* g_consistency,
                                        const SfLayerPtrs& inner, const SfLayerPtrs& last,
                                        const SfSavedPtrs& s_inner, const SfSavedPtrs& s_last,
                                        const SfOptions<float>& o, const SfLayerGradPtrs& d_inner,
                                        const SfLayerGradPtrs& d_last, Scratch scratch,
                                        cudaStream_t stream);

// ---------------------------------------------------------------- GGAM
cudaError_t channel_spatial_attention(DType dt, const Geometry& g, const void* features,
                                      const float* channel_weights, float eps, void* out,
                                      float* spatial, Scratch scratch, cudaStream_t stream);
cudaError_t channel_spatial_attention_backward(DType dt, const Geometry& g,
                                               const void* grad_out, const float* grad_spatial,
                                               const void* features,
                                               const float* channel_weights,
                                               const float* spatial, float eps, void* d_features,
                                               float* d_channel_weights, Scratch scratch,
                                               cudaStream_t stream);

cudaError_t ggam_loss(int64_t n, int64_t k, const float* channel_weights,
                      const float* gradcam_weights, float eps, float* out, cudaStream_t stream);
cudaError_t ggam_loss_backward(int64_t n, int64_t k, const float* grad,
                               const float* channel_weights, const float* gradcam_weights,
                               float eps, float* d_channel_weights, float* d_gradcam_weights,
                               cudaStream_t stream);

// ---------------------------------------------------------------- guidance from boxes
// guidance_loss (csrc/host/guidance.h): rows r = (image rows[r], class). F is geo (N x K x h x w,
// its layout geo.lay); G is either R x K x h x w of the same dtype in its own layout `lg` (g),
// or R x K float32 (g_flat, a gradient equal at every pixel); exactly one is non-null.
struct GuidanceArgs {
  Geometry geo;
  const void* f;
  const void* g;
  Layout lg;
  const float* g_flat;
  const int64_t* rows;    // R image indices in [0, N)
  int64_t r, b;           // rows; boxes per row
  const float* boxes;     // R x b x 4 (y0, x0, y1, x1), image pixels; read when coverage is null
  const float* coverage;  // R x h x w, or null: computed from the boxes
  const float* cell_weights;  // h x w weights of the energy's total (decision 24), or null: 1
  GuidanceOptions<float> o;
};
// Outputs: loss R; maps R x h x w (the raw A); weights R x K for the channel and gradcam kinds
// (null otherwise: not written).
cudaError_t guidance_loss(DType dt, const GuidanceArgs& a, float* loss, float* maps,
                          float* weights, Scratch scratch, cudaStream_t stream);
// Its gradients: d_f in layout ldf (F's dtype), d_g in layout ldg (4-D G) or d_g_flat (R x K).
struct GuidanceGrads {
  void* d_f;
  Layout ldf;
  void* d_g;
  Layout ldg;
  float* d_g_flat;
};
// grad R; maps, weights as the forward left them; the rows grouped by image: the rows of image
// n are order[offsets[n] : offsets[n + 1]].
cudaError_t guidance_loss_backward(DType dt, const GuidanceArgs& a, const float* grad,
                                   const float* maps, const float* weights,
                                   const int64_t* order, const int64_t* offsets,
                                   const GuidanceGrads& d, Scratch scratch, cudaStream_t stream);

}  // namespace cuda
}  // namespace attnfast
