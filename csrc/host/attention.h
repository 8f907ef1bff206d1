// Entry points of the attention-map ops over big tensors (host.h explains the pattern):
//   channel_weights     w[n,k] = mean_p term(G[n,k,p]), term = ReLU (positive) or identity
//   weighted_attention  A[n,p] = ReLU(sum_k w[n,k] F[n,k,p])
//   pixel_attention     A[n,p] = ReLU((1/K) sum_k G[n,k,p] F[n,k,p])
// and their backwards. Each struct is the op's arguments as its kernel reads them (inputs first,
// then the outputs the kernel writes); `op<target, kernel>` is what the backend registers.
#pragma once

#include "host/host.h"

namespace attnfast::host {

// ---------------------------------------------------------------- channel_weights
struct ChannelWeights {
  Tensor g;  // big
  bool positive;
  Tensor w;  // out: N x K
};
template <const Target& tg, Kernel<ChannelWeights> kernel>
Tensor channel_weights(const Tensor& grads, bool positive) {
  const BigCall c(grads, "grads", tg);
  const ChannelWeights a{c.f, positive, c.new_nk()};
  kernel(a);
  return a.w;
}

struct ChannelWeightsBackward {
  Tensor grad, g;  // N x K, big
  bool positive;
  BigOut dg;
};
template <const Target& tg, Kernel<ChannelWeightsBackward> kernel>
Tensor channel_weights_backward(const Tensor& grad, const Tensor& grads, bool positive) {
  const BigCall c(grads, "grads", tg);
  const ChannelWeightsBackward a{c.nk(grad, "grad"), c.f, positive, c.grad_of(grads)};
  kernel(a);
  return a.dg.done();
}

// ---------------------------------------------------------------- weighted_attention
struct WeightedAttention {
  Tensor f, w;  // big, N x K
  Tensor attn;  // out: N x H x W
};
template <const Target& tg, Kernel<WeightedAttention> kernel>
Tensor weighted_attention(const Tensor& features, const Tensor& weights) {
  const BigCall c(features, "features", tg);
  const WeightedAttention a{c.f, c.nk(weights, "weights"), c.new_map()};
  kernel(a);
  return a.attn;
}

struct WeightedAttentionBackward {
  Tensor grad, f, w, attn;  // N x H x W, big, N x K, N x H x W
  BigOut df;
  Tensor dw;  // out: N x K
};
template <const Target& tg, Kernel<WeightedAttentionBackward> kernel>
Tensor2 weighted_attention_backward(const Tensor& grad, const Tensor& features,
                                    const Tensor& weights, const Tensor& attn) {
  const BigCall c(features, "features", tg);
  const WeightedAttentionBackward a{c.map(grad, "grad"), c.f, c.nk(weights, "weights"),
                                    c.map(attn, "attn"), c.grad_of(features), c.new_nk()};
  kernel(a);
  return {a.df.done(), a.dw};
}

// ---------------------------------------------------------------- pixel_attention
struct PixelAttention {
  Tensor f, g;  // big, big (f's layout)
  Tensor attn;  // out: N x H x W
};
template <const Target& tg, Kernel<PixelAttention> kernel>
Tensor pixel_attention(const Tensor& features, const Tensor& grads) {
  const BigCall c(features, "features", tg);
  check_channels(c.f, "features", "pixel_attention", tg);
  const PixelAttention a{c.f, c.big(grads, "grads"), c.new_map()};
  kernel(a);
  return a.attn;
}

struct PixelAttentionBackward {
  Tensor grad, f, g, attn;  // N x H x W, big, big, N x H x W
  BigOut df, dg;
};
template <const Target& tg, Kernel<PixelAttentionBackward> kernel>
Tensor2 pixel_attention_backward(const Tensor& grad, const Tensor& features, const Tensor& grads,
                                 const Tensor& attn) {
  const BigCall c(features, "features", tg);
  check_channels(c.f, "features", "pixel_attention", tg);
  const PixelAttentionBackward a{c.map(grad, "grad"), c.f, c.big(grads, "grads"),
                                 c.map(attn, "attn"), c.grad_of(features), c.grad_of(grads)};
  kernel(a);
  return {a.df.done(), a.dg.done()};
}

}  // namespace attnfast::host
