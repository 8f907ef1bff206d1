// Entry points of the fused sharpen_focus_loss and its backward (host.h explains the pattern;
// the math is common/sharpen_focus.h, csrc/cpu/sharpen_focus_loss.cpp and
// csrc/cuda/sharpen_focus_loss.cu). Two layers, inner and last, each with its features F and the
// gradients of the target and confuser class scores; per sample three values: inner_iou,
// last_iou, consistency, and the hidden outputs the backward takes again (attnfast/_schema.py):
// per layer the raw maps of target [0] and confuser [1] (2 x N x H x W) and, for the channel
// kinds, the channel weights they were built from (2 x N x K; 2 x N x 0 for the pixel kind), so
// that the backward reads F, G_t and G_c of each layer once.
//
// The per-layer handling is written once here (SfLayer, SfLayerGrads): a layer's tensors are
// brought to the kernels' forms and its gradients allocated in one place, so that a new per-layer
// input or output (e.g. maps the forward saves for the backward) is one more field here.
#pragma once

#include <array>

#include "host/host.h"

namespace attnfast::host {

using Tensor6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tensor7 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// One layer as the kernels read it: F (the layer's lead big tensor) and the gradients of the
// target (0) and confuser (1) class scores, each 4-D in F's layout or, when `flat`, N x K in the
// accumulation dtype (a gradient that is the same at every pixel).
struct SfLayer {
  Tensor f, g[2];
  bool flat[2];
};

// The tensor inputs of one layer as the caller gave them: features, grads_target, grads_confuser.
using SfLayerTensors = std::array<Tensor, 3>;

// Both layers (inner, last) and the options, checked: same N, dtype and device for both layers,
// kind in {0, 1, 2}.
struct SfInputs {
  SfLayer layer[2];
  SfOptions<double> o;
  int64_t n;
  at::TensorOptions acc;  // of the per-sample outputs: accumulation dtype, device
};
SfInputs sf_inputs(const SfLayerTensors& inner, const SfLayerTensors& last,
                   const SfOptions<double>& o, const Target& tg);

// The options in the kernels' type T.
template <class T> SfOptions<T> options_as(const SfOptions<double>& o) {
  return {o.kind, T(o.sigma), T(o.omega), T(o.alpha), T(o.eps), o.normalize, o.mask_grad};
}

// What the forward of one layer leaves for the backward (contiguous, accumulation dtype):
// maps[c] = A_c (N x H x W, after the ReLU, before any normalization), weights[c] = the w of
// A_c = ReLU(sum_k w[k] F[k]) (N x K; K = 0 for the pixel kind).
struct SfSaved {
  Tensor maps, weights;
};
// New (forward) or given (backward, checked: `layer` 0 inner, 1 last) saved tensors of a layer.
SfSaved sf_new_saved(const SfInputs& in, int layer);
SfSaved sf_saved(const Tensor& maps, const Tensor& weights, const SfInputs& in, int layer,
                 const Target& tg);

// ---------------------------------------------------------------- forward
struct SharpenFocusLoss {
  SfInputs in;
  Tensor inner_iou, last_iou, consistency;  // out: N each
  SfSaved saved[2];                         // out: inner, last
};
template <const Target& tg, Kernel<SharpenFocusLoss> kernel>
Tensor7 sharpen_focus_loss(const Tensor& inner_features, const Tensor& inner_grads_target,
                           const Tensor& inner_grads_confuser, const Tensor& last_features,
                           const Tensor& last_grads_target, const Tensor& last_grads_confuser,
                           int64_t kind, double sigma, double omega, double alpha, bool normalize,
                           bool mask_grad, double eps) {
  const SfInputs in = sf_inputs({inner_features, inner_grads_target, inner_grads_confuser},
                                {last_features, last_grads_target, last_grads_confuser},
                                {kind, sigma, omega, alpha, eps, normalize, mask_grad}, tg);
  const SharpenFocusLoss a{in, at::empty({in.n}, in.acc), at::empty({in.n}, in.acc),
                           at::empty({in.n}, in.acc), {sf_new_saved(in, 0), sf_new_saved(in, 1)}};
  kernel(a);
  return {a.inner_iou, a.last_iou, a.consistency, a.saved[0].maps, a.saved[1].maps,
          a.saved[0].weights, a.saved[1].weights};
}

// ---------------------------------------------------------------- backward
// The gradients of one layer's inputs, each like its input (BigOut; an N x K gradient is
// written contiguous in the accumulation dtype).
struct SfLayerGrads {
  BigOut df, dg[2];
};
SfLayerGrads sf_layer_grads(const SfLayerTensors& inputs, const SfLayer& layer);

struct SharpenFocusLossBackward {
  Tensor grad[3];  // of inner_iou, last_iou, consistency: N each
  SfInputs in;
  SfSaved saved[2];  // inner, last: as the forward left them
  SfLayerGrads d[2];
};
template <const Target& tg, Kernel<SharpenFocusLossBackward> kernel>
Tensor6 sharpen_focus_loss_backward(
    const Tensor& grad_inner_iou, const Tensor& grad_last_iou, const Tensor& grad_consistency,
    const Tensor& inner_features, const Tensor& inner_grads_target,
    const Tensor& inner_grads_confuser, const Tensor& last_features,
    const Tensor& last_grads_target, const Tensor& last_grads_confuser, const Tensor& inner_maps,
    const Tensor& last_maps, const Tensor& inner_weights, const Tensor& last_weights, int64_t kind,
    double sigma, double omega, double alpha, bool normalize, bool mask_grad, double eps) {
  const SfLayerTensors inner{inner_features, inner_grads_target, inner_grads_confuser},
      last{last_features, last_grads_target, last_grads_confuser};
  const SfInputs in = sf_inputs(inner, last,
                                {kind, sigma, omega, alpha, eps, normalize, mask_grad}, tg);
  const auto dt = in.acc.dtype().toScalarType();
  const SharpenFocusLossBackward a{
      {small(grad_inner_iou, "grad_inner_iou", {in.n}, dt, tg),
       small(grad_last_iou, "grad_last_iou", {in.n}, dt, tg),
       small(grad_consistency, "grad_consistency", {in.n}, dt, tg)},
      in,
      {sf_saved(inner_maps, inner_weights, in, 0, tg), sf_saved(last_maps, last_weights, in, 1, tg)},
      {sf_layer_grads(inner, in.layer[0]), sf_layer_grads(last, in.layer[1])}};
  kernel(a);
  const SfLayerGrads &di = a.d[0], &dl = a.d[1];
  return {di.df.done(), di.dg[0].done(), di.dg[1].done(),
          dl.df.done(), dl.dg[0].done(), dl.dg[1].done()};
}

}  // namespace attnfast::host
