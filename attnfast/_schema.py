"""The kernel interface every compiled backend implements: one name per op, everywhere.

The C++ extension defines these schemas in namespace ``attnfast`` (CPU kernels, and CUDA kernels
when built with CUDA); the Triton backend defines the same names and signatures in namespace
``attnfast_triton`` through ``torch.library.triton_op``. ``tests/test_registration.py`` checks that
both match this table. ``attnfast.ops`` validates every argument *before* calling a kernel, so
kernels may assume:

* features/grads (``F``, ``G``) are 4-D N x K x H x W (``G`` may be 2-D N x K in
  ``sharpen_focus_loss``: a gradient that is the same at every pixel), same dtype and device,
  dtype in {float16, bfloat16, float32} (+ float64 on CPU); N may be 0.
* big tensors arrive with strides such that the pixel index p = i * W + j has one stride
  (``stride(2) == W * stride(3)``): contiguous NCHW and channels_last both qualify and must be
  read in place; ``ops`` copies anything else to contiguous first.
* everything small -- maps (N x H x W), per-channel weights (N x K: ``weights``,
  ``channel_weights``, ``gradcam_weights``, 2-D ``grads``), per-sample values (N) and every
  incoming ``grad`` of a small output -- is contiguous and already in the accumulation dtype:
  float32, or float64 when the big inputs are float64. ``grad_out`` of
  ``channel_spatial_attention_backward`` is big: dtype of ``features``, pixel-stride rule above.

Kernels compute in float32 (float64 for float64), return maps/losses in that dtype and input
gradients in the dtype of the input (big-tensor gradients in the input's memory layout), and use
64-bit index arithmetic. ``kind``: 0 = pixel, 1 = channel (positive weights), 2 = gradcam.
Every ``*_backward`` returns the gradient of each tensor input of its forward, in order.
The math of every op is ``attnfast.reference``.
"""

KIND_CODES = {"pixel": 0, "channel": 1, "gradcam": 2}

_SF_IN = ("Tensor inner_features, Tensor inner_grads_target, Tensor inner_grads_confuser, "
          "Tensor last_features, Tensor last_grads_target, Tensor last_grads_confuser, "
          "int kind, float sigma, float omega, float alpha, bool normalize, bool mask_grad, "
          "float eps")

SCHEMAS = {
    "channel_weights": "(Tensor grads, bool positive) -> Tensor",
    "channel_weights_backward": "(Tensor grad, Tensor grads, bool positive) -> Tensor",
    "weighted_attention": "(Tensor features, Tensor weights) -> Tensor",
    "weighted_attention_backward":
        "(Tensor grad, Tensor features, Tensor weights, Tensor attn) -> (Tensor, Tensor)",
    "pixel_attention": "(Tensor features, Tensor grads) -> Tensor",
    "pixel_attention_backward":
        "(Tensor grad, Tensor features, Tensor grads, Tensor attn) -> (Tensor, Tensor)",
    "normalize_attention": "(Tensor attn, float eps) -> Tensor",
    "normalize_attention_backward": "(Tensor grad, Tensor attn, float eps) -> Tensor",
    "soft_mask": "(Tensor attn, float sigma, float omega, int out_h, int out_w, float eps) -> Tensor",
    "soft_mask_backward": "(Tensor grad, Tensor attn, float sigma, float omega, int out_h, "
                          "int out_w, float eps) -> Tensor",
    "soft_iou": "(Tensor attn_a, Tensor attn_b, Tensor mask, float eps) -> Tensor",
    "soft_iou_backward": "(Tensor grad, Tensor attn_a, Tensor attn_b, Tensor mask, float eps) "
                         "-> (Tensor, Tensor, Tensor)",
    "attention_consistency": "(Tensor attn, Tensor mask, float alpha, float eps) -> Tensor",
    "attention_consistency_backward":
        "(Tensor grad, Tensor attn, Tensor mask, float alpha, float eps) -> (Tensor, Tensor)",
    "sharpen_focus_loss": f"({_SF_IN}) -> (Tensor, Tensor, Tensor)",
    "sharpen_focus_loss_backward":
        f"(Tensor grad_inner_iou, Tensor grad_last_iou, Tensor grad_consistency, {_SF_IN}) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "channel_spatial_attention":
        "(Tensor features, Tensor channel_weights, float eps) -> (Tensor, Tensor)",
    "channel_spatial_attention_backward":
        "(Tensor grad_out, Tensor grad_spatial, Tensor features, Tensor channel_weights, "
        "Tensor spatial, float eps) -> (Tensor, Tensor)",
    "ggam_loss": "(Tensor channel_weights, Tensor gradcam_weights, float eps) -> Tensor",
    "ggam_loss_backward":
        "(Tensor grad, Tensor channel_weights, Tensor gradcam_weights, float eps) -> (Tensor, Tensor)",
}

FORWARD_OPS = tuple(name for name in SCHEMAS if not name.endswith("_backward"))
