// CUDA dispatch of guidance_loss and its backward (entry points, checks and outputs:
// csrc/host/guidance.h; launchers: csrc/cuda/api.h).
#include <torch/library.h>

#include "cuda/glue/launch.h"
#include "host/guidance.h"

namespace attnfast::cuda::glue {
namespace {

// The checked inputs as the launchers take them: F in place (its layout), G 4-D in its own
// layout or R x K float32, the coverage null when it is to be computed from the boxes.
GuidanceArgs args_of(const host::Guidance& in) {
  GuidanceArgs a{};
  a.geo = geometry(in.f);
  a.f = in.f.data_ptr();
  if (in.flat) {
    a.g_flat = fptr(in.g);
  } else {
    a.g = in.g.data_ptr();
    a.lg = host::layout_of(in.g);
  }
  a.rows = in.rows.data_ptr<int64_t>();
  a.r = in.r, a.b = in.boxes.size(1);
  a.boxes = fptr(in.boxes);
  a.coverage = fptr(in.coverage);
  a.cell_weights = fptr(in.cell_weights);
  a.o = host::guidance_options_as<float>(in.o);
  return a;
}

void run(const host::GuidanceLoss& a) {
  launch(a.in.f, guidance_loss, dtype_of(a.in.f), args_of(a.in), fptr(a.loss), fptr(a.maps),
         fptr(a.weights));
}

void run(const host::GuidanceLossBackward& a) {
  GuidanceGrads d{};
  d.d_f = a.df.work.data_ptr(), d.ldf = host::layout_of(a.df.work);
  if (a.in.flat) {
    d.d_g_flat = fptr(a.dg.work);
  } else {
    d.d_g = a.dg.work.data_ptr(), d.ldg = host::layout_of(a.dg.work);
  }
  launch(a.in.f, guidance_loss_backward, dtype_of(a.in.f), args_of(a.in), fptr(a.grad),
         fptr(a.maps), fptr(a.weights), a.order.data_ptr<int64_t>(),
         a.offsets.data_ptr<int64_t>(), d);
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CUDA, m) { ATTNFAST_IMPL(m, kCuda, guidance_loss, run); }

}  // namespace attnfast::cuda::glue
