// The attnfast operator library: every schema of attnfast/_schema.py (same names, same
// arguments), and the C++ CPU kernels (csrc/cpu/<op>.cpp) for the CPU dispatch key. The CUDA
// kernels, when built, register themselves for the CUDA key from csrc/cuda/.
// Arguments are validated in Python (attnfast.ops) first; the kernels re-check only shapes and
// dtypes they rely on, with TORCH_CHECK.
#include <Python.h>
#include <torch/library.h>

#include "cpu/kernels.h"

// `import attnfast._C` loads this library (and so runs the registrations below); the module
// itself is empty.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

#define ATTNFAST_SF_IN                                                                          \
  "Tensor inner_features, Tensor inner_grads_target, Tensor inner_grads_confuser, "           \
  "Tensor last_features, Tensor last_grads_target, Tensor last_grads_confuser, "              \
  "int kind, float sigma, float omega, float alpha, bool normalize, bool mask_grad, float eps"

TORCH_LIBRARY(attnfast, m) {
  m.def("channel_weights(Tensor grads, bool positive) -> Tensor");
  m.def("channel_weights_backward(Tensor grad, Tensor grads, bool positive) -> Tensor");
  m.def("weighted_attention(Tensor features, Tensor weights) -> Tensor");
  m.def("weighted_attention_backward(Tensor grad, Tensor features, Tensor weights, Tensor attn)"
        " -> (Tensor, Tensor)");
  m.def("pixel_attention(Tensor features, Tensor grads) -> Tensor");
  m.def("pixel_attention_backward(Tensor grad, Tensor features, Tensor grads, Tensor attn)"
        " -> (Tensor, Tensor)");
  m.def("normalize_attention(Tensor attn, float eps) -> Tensor");
  m.def("normalize_attention_backward(Tensor grad, Tensor attn, float eps) -> Tensor");
  m.def("soft_mask(Tensor attn, float sigma, float omega, int out_h, int out_w, float eps)"
        " -> Tensor");
  m.def("soft_mask_backward(Tensor grad, Tensor attn, float sigma, float omega, int out_h, "
        "int out_w, float eps) -> Tensor");
  m.def("soft_iou(Tensor attn_a, Tensor attn_b, Tensor mask, float eps) -> Tensor");
  m.def("soft_iou_backward(Tensor grad, Tensor attn_a, Tensor attn_b, Tensor mask, float eps)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("attention_consistency(Tensor attn, Tensor mask, float alpha, float eps) -> Tensor");
  m.def("attention_consistency_backward(Tensor grad, Tensor attn, Tensor mask, float alpha, "
        "float eps) -> (Tensor, Tensor)");
  m.def("sharpen_focus_loss(" ATTNFAST_SF_IN ") -> (Tensor, Tensor, Tensor)");
  m.def("sharpen_focus_loss_backward(Tensor grad_inner_iou, Tensor grad_last_iou, "
        "Tensor grad_consistency, " ATTNFAST_SF_IN
        ") -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("channel_spatial_attention(Tensor features, Tensor channel_weights, float eps)"
        " -> (Tensor, Tensor)");
  m.def("channel_spatial_attention_backward(Tensor grad_out, Tensor grad_spatial, "
        "Tensor features, Tensor channel_weights, Tensor spatial, float eps) -> (Tensor, Tensor)");
  m.def("ggam_loss(Tensor channel_weights, Tensor gradcam_weights, float eps) -> Tensor");
  m.def("ggam_loss_backward(Tensor grad, Tensor channel_weights, Tensor gradcam_weights, "
        "float eps) -> (Tensor, Tensor)");
}

#define ATTNFAST_IMPL(name) m.impl(#name, &attnfast::cpu::name)

TORCH_LIBRARY_IMPL(attnfast, CPU, m) {
  ATTNFAST_IMPL(channel_weights);
  ATTNFAST_IMPL(channel_weights_backward);
  ATTNFAST_IMPL(weighted_attention);
  ATTNFAST_IMPL(weighted_attention_backward);
  ATTNFAST_IMPL(pixel_attention);
  ATTNFAST_IMPL(pixel_attention_backward);
  ATTNFAST_IMPL(normalize_attention);
  ATTNFAST_IMPL(normalize_attention_backward);
  ATTNFAST_IMPL(soft_mask);
  ATTNFAST_IMPL(soft_mask_backward);
  ATTNFAST_IMPL(soft_iou);
  ATTNFAST_IMPL(soft_iou_backward);
  ATTNFAST_IMPL(attention_consistency);
  ATTNFAST_IMPL(attention_consistency_backward);
  ATTNFAST_IMPL(sharpen_focus_loss);
  ATTNFAST_IMPL(sharpen_focus_loss_backward);
  ATTNFAST_IMPL(channel_spatial_attention);
  ATTNFAST_IMPL(channel_spatial_attention_backward);
  ATTNFAST_IMPL(ggam_loss);
  ATTNFAST_IMPL(ggam_loss_backward);
}
