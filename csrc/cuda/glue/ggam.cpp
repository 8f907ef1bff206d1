// CUDA dispatch of channel_spatial_attention and ggam_loss (entry points and argument forms:
// csrc/host/ggam.h; launchers: csrc/cuda/api.h).
#include <torch/library.h>

#include "cuda/glue/launch.h"
#include "host/ggam.h"

namespace attnfast::cuda::glue {
namespace {

void run(const host::ChannelSpatialAttention& a) {
  launch(a.f, channel_spatial_attention, dtype_of(a.f), geometry(a.f), a.f.data_ptr(),
         fptr(a.s), f32(a.eps), a.out.work.data_ptr(), fptr(a.spatial));
}

void run(const host::ChannelSpatialAttentionBackward& a) {
  launch(a.f, channel_spatial_attention_backward, dtype_of(a.f), geometry(a.f),
         a.grad_out.data_ptr(), fptr(a.grad_spatial), a.f.data_ptr(), fptr(a.s),
         fptr(a.spatial), f32(a.eps), a.df.work.data_ptr(), fptr(a.ds));
}

void run(const host::GgamLoss& a) {
  launch(a.s, ggam_loss, a.s.size(0), a.s.size(1), fptr(a.s), fptr(a.beta), f32(a.eps),
         fptr(a.out));
}

void run(const host::GgamLossBackward& a) {
  launch(a.s, ggam_loss_backward, a.s.size(0), a.s.size(1), fptr(a.grad), fptr(a.s),
         fptr(a.beta), f32(a.eps), fptr(a.ds), fptr(a.dbeta));
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CUDA, m) {
  ATTNFAST_IMPL(m, kCuda, channel_spatial_attention, run);
  ATTNFAST_IMPL(m, kCuda, ggam_loss, run);
}

}  // namespace attnfast::cuda::glue
