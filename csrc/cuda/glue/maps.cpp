// CUDA dispatch of the per-sample map ops normalize_attention, soft_mask, soft_iou and
// attention_consistency (entry points and argument forms: csrc/host/maps.h; launchers:
// csrc/cuda/api.h). Maps are float32 N x H x W, read as N x P.
#include <torch/library.h>

#include "cuda/glue/launch.h"
#include "host/maps.h"

namespace attnfast::cuda::glue {
namespace {

int64_t map_pixels(const Tensor& a) { return a.size(1) * a.size(2); }

void run(const host::NormalizeAttention& a) {
  launch(a.attn, normalize_attention, a.attn.size(0), map_pixels(a.attn), fptr(a.attn),
         f32(a.eps), fptr(a.out));
}

void run(const host::NormalizeAttentionBackward& a) {
  launch(a.attn, normalize_attention_backward, a.attn.size(0), map_pixels(a.attn), fptr(a.grad),
         fptr(a.attn), f32(a.eps), fptr(a.d_attn));
}

MaskArgs mask_args(const host::SoftMask& m) {
  return {m.attn.size(1), m.attn.size(2), m.out_h, m.out_w, f32(m.sigma), f32(m.omega),
          f32(m.eps)};
}

void run(const host::SoftMask& a) {
  launch(a.attn, soft_mask, a.attn.size(0), mask_args(a), fptr(a.attn), fptr(a.out));
}

void run(const host::SoftMaskBackward& a) {
  launch(a.m.attn, soft_mask_backward, a.m.attn.size(0), mask_args(a.m), fptr(a.grad),
         fptr(a.m.attn), fptr(a.d_attn));
}

void run(const host::SoftIou& a) {
  launch(a.a, soft_iou, a.a.size(0), map_pixels(a.a), fptr(a.a), fptr(a.b), fptr(a.mask),
         f32(a.eps), fptr(a.out));
}

void run(const host::SoftIouBackward& a) {
  launch(a.a, soft_iou_backward, a.a.size(0), map_pixels(a.a), fptr(a.grad), fptr(a.a),
         fptr(a.b), fptr(a.mask), f32(a.eps), fptr(a.d_a), fptr(a.d_b), fptr(a.d_mask));
}

void run(const host::AttentionConsistency& a) {
  launch(a.attn, attention_consistency, a.attn.size(0), map_pixels(a.attn), fptr(a.attn),
         fptr(a.mask), f32(a.alpha), f32(a.eps), fptr(a.out));
}

void run(const host::AttentionConsistencyBackward& a) {
  launch(a.attn, attention_consistency_backward, a.attn.size(0), map_pixels(a.attn),
         fptr(a.grad), fptr(a.attn), fptr(a.mask), f32(a.eps), fptr(a.d_attn), fptr(a.d_mask));
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CUDA, m) {
  ATTNFAST_IMPL(m, kCuda, normalize_attention, run);
  ATTNFAST_IMPL(m, kCuda, soft_mask, run);
  ATTNFAST_IMPL(m, kCuda, soft_iou, run);
  ATTNFAST_IMPL(m, kCuda, attention_consistency, run);
}

}  // namespace attnfast::cuda::glue
