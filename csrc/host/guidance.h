// Entry points of guidance_loss and its backward (host.h explains the pattern; the math is
// common/guidance.h, the kernels csrc/cpu/guidance_loss.cpp and csrc/cuda/guidance_loss.cu).
// Rows r = (image rows[r], class): F is N x K x h x w (the lead big tensor), G is R x K x h x w
// (its own pixel-strided layout) or R x K (`flat`: a gradient equal at every pixel, accumulation
// dtype); boxes R x B x 4, coverage (R x h x w, or empty: computed from the boxes) and
// cell_weights (h x w, the energy's total weights, or empty: 1) in the accumulation dtype; rows R int64 in [0, N). Outputs: the per-row loss and the hidden maps
// (R x h x w, the raw A) and channel weights (R x K for the channel and gradcam kinds, R x 0
// otherwise) the backward takes again.
#pragma once

#include "common/guidance.h"
#include "host/host.h"

namespace attnfast::host {

// The checked inputs of one call.
struct Guidance {
  Tensor f, g, boxes, rows, coverage, cell_weights;  // cell_weights: h x w, or empty (all 1)
  bool flat;
  int64_t r;  // rows
  GuidanceOptions<double> o;
};
Guidance guidance_inputs(const Tensor& features, const Tensor& grads, const Tensor& boxes,
                         const Tensor& rows, const Tensor& coverage, const Tensor& cell_weights,
                         const GuidanceOptions<double>& o, const Target& tg);

// True for the kinds whose maps are built from channel weights (saved by the forward).
inline bool guidance_has_weights(int64_t kind) { return kind == kChannel || kind == kGradcam; }

template <class T> GuidanceOptions<T> guidance_options_as(const GuidanceOptions<double>& o) {
  return {o.kind, o.loss, T(o.image_h), T(o.image_w), T(o.eps)};
}

// ---------------------------------------------------------------- forward
struct GuidanceLoss {
  Guidance in;
  Tensor loss, maps, weights;  // out: R, R x h x w, R x K (or R x 0)
};
template <const Target& tg, Kernel<GuidanceLoss> kernel>
Tensor3 guidance_loss(const Tensor& features, const Tensor& grads, const Tensor& boxes,
                      const Tensor& rows, const Tensor& coverage, const Tensor& cell_weights,
                      int64_t kind, int64_t loss, double image_h, double image_w, double eps) {
  const Guidance in = guidance_inputs(features, grads, boxes, rows, coverage, cell_weights,
                                      {kind, loss, image_h, image_w, eps}, tg);
  const auto acc = in.f.options().dtype(acc_dtype({in.f}, tg));
  const int64_t k = guidance_has_weights(kind) ? in.f.size(1) : 0;
  const GuidanceLoss a{in, at::empty({in.r}, acc), at::empty({in.r, in.f.size(2), in.f.size(3)}, acc),
                       at::empty({in.r, k}, acc)};
  kernel(a);
  return {a.loss, a.maps, a.weights};
}

// ---------------------------------------------------------------- backward
// The rows grouped by image: order (R int64) lists the rows of image 0, then of image 1, ...;
// the rows of image n are order[offsets[n] : offsets[n + 1]] (offsets: N + 1 int64).
struct GuidanceLossBackward {
  Tensor grad;  // R
  Guidance in;
  Tensor maps, weights;  // as the forward left them
  Tensor order, offsets;
  BigOut df, dg;
};
GuidanceLossBackward guidance_backward_args(const Tensor& grad, Guidance in, const Tensor& maps,
                                            const Tensor& weights, const Tensor& features,
                                            const Tensor& grads, const Target& tg);

template <const Target& tg, Kernel<GuidanceLossBackward> kernel>
Tensor2 guidance_loss_backward(const Tensor& grad, const Tensor& features, const Tensor& grads,
                               const Tensor& boxes, const Tensor& rows, const Tensor& coverage,
                               const Tensor& cell_weights, const Tensor& maps,
                               const Tensor& weights, int64_t kind, int64_t loss, double image_h,
                               double image_w, double eps) {
  const GuidanceLossBackward a = guidance_backward_args(
      grad, guidance_inputs(features, grads, boxes, rows, coverage, cell_weights,
                            {kind, loss, image_h, image_w, eps}, tg),
      maps, weights, features, grads, tg);
  kernel(a);
  return {a.df.done(), a.dg.done()};
}

}  // namespace attnfast::host
