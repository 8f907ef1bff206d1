// CUDA dispatch of channel_weights, weighted_attention and pixel_attention (entry points and
// argument forms: csrc/host/attention.h; launchers: csrc/cuda/api.h).
#include <torch/library.h>

#include "cuda/glue/launch.h"
#include "host/attention.h"

namespace attnfast::cuda::glue {
namespace {

void run(const host::ChannelWeights& a) {
  launch(a.g, channel_weights, dtype_of(a.g), geometry(a.g), a.g.data_ptr(), a.positive,
         fptr(a.w));
}

void run(const host::ChannelWeightsBackward& a) {
  launch(a.g, channel_weights_backward, dtype_of(a.g), geometry(a.g), fptr(a.grad),
         a.g.data_ptr(), a.positive, a.dg.work.data_ptr());
}

void run(const host::WeightedAttention& a) {
  launch(a.f, weighted_attention, dtype_of(a.f), geometry(a.f), a.f.data_ptr(), fptr(a.w),
         fptr(a.attn));
}

void run(const host::WeightedAttentionBackward& a) {
  launch(a.f, weighted_attention_backward, dtype_of(a.f), geometry(a.f), fptr(a.grad),
         a.f.data_ptr(), fptr(a.w), fptr(a.attn), a.df.work.data_ptr(), fptr(a.dw));
}

void run(const host::PixelAttention& a) {
  launch(a.f, pixel_attention, dtype_of(a.f), geometry(a.f), a.f.data_ptr(), a.g.data_ptr(),
         fptr(a.attn));
}

void run(const host::PixelAttentionBackward& a) {
  launch(a.f, pixel_attention_backward, dtype_of(a.f), geometry(a.f), fptr(a.grad),
         a.f.data_ptr(), a.g.data_ptr(), fptr(a.attn), a.df.work.data_ptr(),
         a.dg.work.data_ptr());
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CUDA, m) {
  ATTNFAST_IMPL(m, kCuda, channel_weights, run);
  ATTNFAST_IMPL(m, kCuda, weighted_attention, run);
  ATTNFAST_IMPL(m, kCuda, pixel_attention, run);
}

}  // namespace attnfast::cuda::glue
