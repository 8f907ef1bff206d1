// Entry points of the per-sample map ops (host.h explains the pattern; the math of each is
// common/maps.h):
//   normalize_attention    u = A / (max(max_q A, 0) + eps)
//   soft_mask              M = sigmoid(omega (R(normalize(A)) - sigma)), R a bilinear resize
//   soft_iou               v = 2 sum_p min(a, b) M / (sum_p (a + b) + eps); empty mask: M = 1
//   attention_consistency  v = alpha - sum_p A M / (sum_p A + eps)
// and their backwards. Every map is N x H x W, contiguous, in its accumulation dtype; outputs
// are allocated uninitialized (a kernel that accumulates clears them itself).
#pragma once

#include "host/host.h"

namespace attnfast::host {

// t checked to have a's shape, in a's dtype.
inline Tensor like_map(const Tensor& t, const char* name, const Tensor& a, const Target& tg) {
  return small(t, name, a.sizes(), a.scalar_type(), tg);
}
// A per-sample N tensor (an incoming gradient of a per-sample output) in a's dtype.
inline Tensor per_sample(const Tensor& t, const char* name, const Tensor& a, const Target& tg) {
  return small(t, name, {a.size(0)}, a.scalar_type(), tg);
}

// ---------------------------------------------------------------- normalize_attention
struct NormalizeAttention {
  Tensor attn;
  double eps;
  Tensor out;
};
template <const Target& tg, Kernel<NormalizeAttention> kernel>
Tensor normalize_attention(const Tensor& attn, double eps) {
  const Tensor a = map_in(attn, "attn", tg);
  const NormalizeAttention args{a, eps, at::empty_like(a)};
  kernel(args);
  return args.out;
}

struct NormalizeAttentionBackward {
  Tensor grad, attn;
  double eps;
  Tensor d_attn;
};
template <const Target& tg, Kernel<NormalizeAttentionBackward> kernel>
Tensor normalize_attention_backward(const Tensor& grad, const Tensor& attn, double eps) {
  const Tensor a = map_in(attn, "attn", tg);
  const NormalizeAttentionBackward args{like_map(grad, "grad", a, tg), a, eps, at::empty_like(a)};
  kernel(args);
  return args.d_attn;
}

// ---------------------------------------------------------------- soft_mask
struct SoftMask {
  Tensor attn;  // N x h x w
  double sigma, omega;
  int64_t out_h, out_w;
  double eps;
  Tensor out;  // N x out_h x out_w
};
inline Tensor mask_input(const Tensor& attn, int64_t out_h, int64_t out_w, const Target& tg) {
  const Tensor a = map_in(attn, "attn", tg);
  TORCH_CHECK_VALUE(out_h > 0 && out_w > 0, tg.prefix,
                    "soft_mask output size must be positive, got (", out_h, ", ", out_w, ")");
  return a;
}

template <const Target& tg, Kernel<SoftMask> kernel>
Tensor soft_mask(const Tensor& attn, double sigma, double omega, int64_t out_h, int64_t out_w,
                 double eps) {
  const Tensor a = mask_input(attn, out_h, out_w, tg);
  const SoftMask args{a, sigma, omega, out_h, out_w, eps, at::empty({a.size(0), out_h, out_w},
                                                                    a.options())};
  kernel(args);
  return args.out;
}

struct SoftMaskBackward {
  Tensor grad;  // N x out_h x out_w
  SoftMask m;   // its `out` is not allocated
  Tensor d_attn;
};
template <const Target& tg, Kernel<SoftMaskBackward> kernel>
Tensor soft_mask_backward(const Tensor& grad, const Tensor& attn, double sigma, double omega,
                          int64_t out_h, int64_t out_w, double eps) {
  const Tensor a = mask_input(attn, out_h, out_w, tg);
  const SoftMaskBackward args{small(grad, "grad", {a.size(0), out_h, out_w}, a.scalar_type(), tg),
                              {a, sigma, omega, out_h, out_w, eps, Tensor()},
                              at::empty_like(a)};
  kernel(args);
  return args.d_attn;
}

// ---------------------------------------------------------------- soft_iou
struct SoftIou {
  Tensor a, b, mask;  // mask empty: M = 1
  double eps;
  Tensor out;  // N
};
// {a, b, mask} checked and converted.
inline Tensor3 iou_inputs(const Tensor& attn_a, const Tensor& attn_b, const Tensor& mask,
                          const Target& tg) {
  const Tensor a = map_in(attn_a, "attn_a", tg);
  if (mask.numel() == 0) check_device(mask, "mask", tg);
  return {a, like_map(attn_b, "attn_b", a, tg),
          mask.numel() == 0 ? mask.to(a.scalar_type()) : like_map(mask, "mask", a, tg)};
}

template <const Target& tg, Kernel<SoftIou> kernel>
Tensor soft_iou(const Tensor& attn_a, const Tensor& attn_b, const Tensor& mask, double eps) {
  const auto [a, b, m] = iou_inputs(attn_a, attn_b, mask, tg);
  const SoftIou args{a, b, m, eps, at::empty({a.size(0)}, a.options())};
  kernel(args);
  return args.out;
}

struct SoftIouBackward {
  Tensor grad, a, b, mask;
  double eps;
  Tensor d_a, d_b, d_mask;  // d_mask empty when mask is
};
template <const Target& tg, Kernel<SoftIouBackward> kernel>
Tensor3 soft_iou_backward(const Tensor& grad, const Tensor& attn_a, const Tensor& attn_b,
                          const Tensor& mask, double eps) {
  const auto [a, b, m] = iou_inputs(attn_a, attn_b, mask, tg);
  const SoftIouBackward args{per_sample(grad, "grad", a, tg), a, b, m, eps,
                             at::empty_like(a), at::empty_like(a), at::empty_like(m)};
  kernel(args);
  return {args.d_a, args.d_b, args.d_mask};
}

// ---------------------------------------------------------------- attention_consistency
struct AttentionConsistency {
  Tensor attn, mask;
  double alpha, eps;
  Tensor out;  // N
};
template <const Target& tg, Kernel<AttentionConsistency> kernel>
Tensor attention_consistency(const Tensor& attn, const Tensor& mask, double alpha, double eps) {
  const Tensor a = map_in(attn, "attn", tg);
  const AttentionConsistency args{a, like_map(mask, "mask", a, tg), alpha, eps,
                                  at::empty({a.size(0)}, a.options())};
  kernel(args);
  return args.out;
}

struct AttentionConsistencyBackward {
  Tensor grad, attn, mask;
  double eps;  // alpha, a constant, has no gradient
  Tensor d_attn, d_mask;
};
template <const Target& tg, Kernel<AttentionConsistencyBackward> kernel>
Tensor2 attention_consistency_backward(const Tensor& grad, const Tensor& attn, const Tensor& mask,
                                       double /*alpha*/, double eps) {
  const Tensor a = map_in(attn, "attn", tg);
  const AttentionConsistencyBackward args{per_sample(grad, "grad", a, tg), a,
                                          like_map(mask, "mask", a, tg), eps, at::empty_like(a),
                                          at::empty_like(a)};
  kernel(args);
  return {args.d_attn, args.d_mask};
}

}  // namespace attnfast::host
