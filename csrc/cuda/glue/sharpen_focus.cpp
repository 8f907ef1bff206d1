// CUDA dispatch of the fused sharpen_focus_loss and its backward (entry points and per-layer
// argument forms: csrc/host/sharpen_focus.h; launchers: csrc/cuda/api.h).
#include <torch/library.h>

#include "cuda/glue/launch.h"
#include "host/sharpen_focus.h"

namespace attnfast::cuda::glue {
namespace {

// A layer as the launchers take it; an N x K (flat) gradient is a const float*.
SfLayerPtrs layer_of(const host::SfLayer& l) {
  SfLayerPtrs out{geometry(l.f), l.f.data_ptr(), {vptr(l.g[0]), vptr(l.g[1])},
              {l.flat[0], l.flat[1]}};
  return out;
}

// Its gradients: d_f like F, d_g[c] big or (flat) float32 N x K.
SfLayerGradPtrs grads_of(const host::SfLayerGrads& d, const host::SfLayer& l) {
  void* dg[2];
  for (int c = 0; c < 2; ++c) dg[c] = l.flat[c] ? vptr(d.dg[c].work) : d.dg[c].work.data_ptr();
  return {d.df.work.data_ptr(), {dg[0], dg[1]}};
}

// The saved maps and weights of a layer (null when empty: weights of the pixel kind).
SfSavedPtrs saved_of(const host::SfSaved& s) {
  return {fptr(s.maps), fptr(s.weights)};
}

void run(const host::SharpenFocusLoss& a) {
  const Tensor& f = a.in.layer[0].f;
  launch(f, sharpen_focus_loss, dtype_of(f), layer_of(a.in.layer[0]), layer_of(a.in.layer[1]),
         host::options_as<float>(a.in.o), fptr(a.inner_iou), fptr(a.last_iou),
         fptr(a.consistency), saved_of(a.saved[0]), saved_of(a.saved[1]));
}

void run(const host::SharpenFocusLossBackward& a) {
  const host::SfLayer &inner = a.in.layer[0], &last = a.in.layer[1];
  launch(inner.f, sharpen_focus_loss_backward, dtype_of(inner.f), fptr(a.grad[0]),
         fptr(a.grad[1]), fptr(a.grad[2]), layer_of(inner), layer_of(last),
         saved_of(a.saved[0]), saved_of(a.saved[1]), host::options_as<float>(a.in.o), grads_of(a.d[0], inner), grads_of(a.d[1], last));
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CUDA, m) {
  ATTNFAST_IMPL(m, kCuda, sharpen_focus_loss, run);
}

}  // namespace attnfast::cuda::glue
