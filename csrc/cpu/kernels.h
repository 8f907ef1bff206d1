// The C++ CPU kernels, one per op of attnfast/_schema.py (same names, same arguments), each in
// csrc/cpu/<op>.cpp. csrc/ops.cpp registers them for the CPU dispatch key.
#pragma once

#include "cpu/cpu_common.h"

namespace attnfast::cpu {

Tensor channel_weights(const Tensor& grads, bool positive);
Tensor channel_weights_backward(const Tensor& grad, const Tensor& grads, bool positive);

Tensor weighted_attention(const Tensor& features, const Tensor& weights);
Tensor2 weighted_attention_backward(const Tensor& grad, const Tensor& features,
                                    const Tensor& weights, const Tensor& attn);

Tensor pixel_attention(const Tensor& features, const Tensor& grads);
Tensor2 pixel_attention_backward(const Tensor& grad, const Tensor& features, const Tensor& grads,
                                 const Tensor& attn);

Tensor normalize_attention(const Tensor& attn, double eps);
Tensor normalize_attention_backward(const Tensor& grad, const Tensor& attn, double eps);

Tensor soft_mask(const Tensor& attn, double sigma, double omega, int64_t out_h, int64_t out_w,
                 double eps);
Tensor soft_mask_backward(const Tensor& grad, const Tensor& attn, double sigma, double omega,
                          int64_t out_h, int64_t out_w, double eps);

Tensor soft_iou(const Tensor& attn_a, const Tensor& attn_b, const Tensor& mask, double eps);
Tensor3 soft_iou_backward(const Tensor& grad, const Tensor& attn_a, const Tensor& attn_b,
                          const Tensor& mask, double eps);

Tensor attention_consistency(const Tensor& attn, const Tensor& mask, double alpha, double eps);
Tensor2 attention_consistency_backward(const Tensor& grad, const Tensor& attn, const Tensor& mask,
                                       double alpha, double eps);

Tensor3 sharpen_focus_loss(const Tensor& inner_features, const Tensor& inner_grads_target,
                           const Tensor& inner_grads_confuser, const Tensor& last_features,
                           const Tensor& last_grads_target, const Tensor& last_grads_confuser,
                           int64_t kind, double sigma, double omega, double alpha, bool normalize,
                           bool mask_grad, double eps);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sharpen_focus_loss_backward(
    const Tensor& grad_inner_iou, const Tensor& grad_last_iou, const Tensor& grad_consistency,
    const Tensor& inner_features, const Tensor& inner_grads_target,
    const Tensor& inner_grads_confuser, const Tensor& last_features,
    const Tensor& last_grads_target, const Tensor& last_grads_confuser, int64_t kind,
    double sigma, double omega, double alpha, bool normalize, bool mask_grad, double eps);

Tensor2 channel_spatial_attention(const Tensor& features, const Tensor& channel_weights,
                                  double eps);
Tensor2 channel_spatial_attention_backward(const Tensor& grad_out, const Tensor& grad_spatial,
                                           const Tensor& features, const Tensor& channel_weights,
                                           const Tensor& spatial, double eps);

Tensor ggam_loss(const Tensor& channel_weights, const Tensor& gradcam_weights, double eps);
Tensor2 ggam_loss_backward(const Tensor& grad, const Tensor& channel_weights,
                           const Tensor& gradcam_weights, double eps);

}  // namespace attnfast::cpu
