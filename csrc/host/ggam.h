// Entry points of the GGAM ops (host.h explains the pattern):
//   channel_spatial_attention  c[p] = sum_k S[k] F[k,p], T = c / (sum c + eps), D = F T
//   ggam_loss                  L = 0.5 (KL(p'||q') + KL(q'||p')), p = S, q = softmax-like(beta)
// and their backwards (math: csrc/cpu/channel_spatial_attention.cpp, common/ggam.h).
#pragma once

#include "host/host.h"

namespace attnfast::host {

// ---------------------------------------------------------------- channel_spatial_attention
struct ChannelSpatialAttention {
  Tensor f, s;  // big, N x K
  double eps;
  BigOut out;       // D, like features
  Tensor spatial;   // out: T, N x H x W
};
template <const Target& tg, Kernel<ChannelSpatialAttention> kernel>
Tensor2 channel_spatial_attention(const Tensor& features, const Tensor& channel_weights,
                                  double eps) {
  const BigCall c(features, "features", tg);
  const ChannelSpatialAttention a{c.f, c.nk(channel_weights, "channel_weights"), eps,
                                  c.grad_of(features), c.new_map()};
  kernel(a);
  return {a.out.done(), a.spatial};
}

struct ChannelSpatialAttentionBackward {
  Tensor grad_out, grad_spatial, f, s, spatial;  // big (f's layout), N x H x W, big, N x K, map
  double eps;
  BigOut df;
  Tensor ds;  // out: N x K
};
template <const Target& tg, Kernel<ChannelSpatialAttentionBackward> kernel>
Tensor2 channel_spatial_attention_backward(const Tensor& grad_out, const Tensor& grad_spatial,
                                           const Tensor& features, const Tensor& channel_weights,
                                           const Tensor& spatial, double eps) {
  const BigCall c(features, "features", tg);
  const ChannelSpatialAttentionBackward a{
      c.big(grad_out, "grad_out"), c.map(grad_spatial, "grad_spatial"), c.f,
      c.nk(channel_weights, "channel_weights"), c.map(spatial, "spatial"), eps,
      c.grad_of(features), c.new_nk()};
  kernel(a);
  return {a.df.done(), a.ds};
}

// ---------------------------------------------------------------- ggam_loss
struct GgamLoss {
  Tensor s, beta;  // N x K each
  double eps;
  Tensor out;  // N
};
// {S, beta}: 2-D N x K, same shape, in their accumulation dtype.
inline Tensor2 ggam_inputs(const Tensor& channel_weights, const Tensor& gradcam_weights,
                           const Target& tg) {
  check_dim(channel_weights, "channel_weights", 2, "N x K", tg);
  const auto acc = acc_dtype({channel_weights, gradcam_weights}, tg);
  return {small(channel_weights, "channel_weights", channel_weights.sizes(), acc, tg),
          small(gradcam_weights, "gradcam_weights", channel_weights.sizes(), acc, tg)};
}

template <const Target& tg, Kernel<GgamLoss> kernel>
Tensor ggam_loss(const Tensor& channel_weights, const Tensor& gradcam_weights, double eps) {
  const auto [s, beta] = ggam_inputs(channel_weights, gradcam_weights, tg);
  const GgamLoss a{s, beta, eps, at::empty({s.size(0)}, s.options())};
  kernel(a);
  return a.out;
}

struct GgamLossBackward {
  Tensor grad, s, beta;  // N, N x K, N x K
  double eps;
  Tensor ds, dbeta;
};
template <const Target& tg, Kernel<GgamLossBackward> kernel>
Tensor2 ggam_loss_backward(const Tensor& grad, const Tensor& channel_weights,
                           const Tensor& gradcam_weights, double eps) {
  const auto [s, beta] = ggam_inputs(channel_weights, gradcam_weights, tg);
  const GgamLossBackward a{small(grad, "grad", {s.size(0)}, s.scalar_type(), tg), s, beta, eps,
                           at::empty_like(s), at::empty_like(beta)};
  kernel(a);
  return {a.ds, a.dbeta};
}

}  // namespace attnfast::host
