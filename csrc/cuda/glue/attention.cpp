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
}  // namespace attnfast::cuda::glue

TORCH_LIBRARY_IMPL(attnfast, CUDA, m) {
  using namespace attnfast;
  using cuda::glue::run;
  m.impl("channel_weights", &host::channel_weights<host::kCuda, run>);
  m.impl("channel_weights_backward", &host::channel_weights_backward<host::kCuda, run>);
  m.impl("weighted_attention", &host::weighted_attention<host::kCuda, run>);
  m.impl("weighted_attention_backward", &host::weighted_attention_backward<host::kCuda, run>);
  m.impl("pixel_attention", &host::pixel_attention<host::kCuda, run>);
  m.impl("pixel_attention_backward", &host::pixel_attention_backward<host::kCuda, run>);
}
