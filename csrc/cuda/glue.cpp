// CUDA dispatch of every attnfast op (schemas: csrc/ops.cpp, attnfast/_schema.py): argument
// checks, the device guard and current stream, outputs allocated in the input's layout, the
// launch (csrc/cuda/api.h, framework-free) and the launch check. The only CUDA file that knows
// about tensors.
//
// Big tensors (N x K x H x W) of one call are brought to ONE layout, the "lead" one (the
// features' own when they are dense and pixel-strided: NCHW and channels_last are read in
// place); another big input is copied to it only when its layout differs. A big gradient is
// returned in its input's layout (written in place when that is the lead layout, else copied).
// Small tensors (maps, N x K weights, per-sample values) are used as contiguous float32.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cuda/api.h"

namespace attnfast {
namespace cuda {
namespace {

using at::Tensor;
using Tensor2 = std::tuple<Tensor, Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;

// ---------------------------------------------------------------- checks
void check_device(const Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "attnfast (CUDA): ", name, " must be a CUDA tensor, got device ",
              t.device());
}

void check_dim(const Tensor& t, const char* name, int64_t dim, const char* what) {
  check_device(t, name);
  TORCH_CHECK(t.dim() == dim, "attnfast (CUDA): ", name, " must be ", dim, "-D ", what,
              ", got shape ", t.sizes());
}

void check_shape(const Tensor& t, const char* name, at::IntArrayRef want) {
  check_device(t, name);
  TORCH_CHECK(t.sizes() == want, "attnfast (CUDA): ", name, " must have shape ", want, ", got ",
              t.sizes());
}

DType dtype_of(const Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK(false, "attnfast (CUDA): ", name, " must be float16, bfloat16 or float32, got ",
                  t.scalar_type(), " (float64 runs on the 'torch' and 'cpu' backends)");
  }
  return DType::kFloat32;
}

// ---------------------------------------------------------------- layouts
bool pixel_strided(const Tensor& t) {
  return t.size(2) == 1 || t.size(3) == 1 || t.stride(2) == t.size(3) * t.stride(3);
}

// Element strides as N x K x P (common/defs.h), 0 for a dimension of size 1.
Layout layout_of(const Tensor& t) {
  const int64_t sp = t.size(2) * t.size(3) == 1 ? 0 : (t.size(3) == 1 ? t.stride(2) : t.stride(3));
  return {t.size(0) == 1 ? 0 : t.stride(0), t.size(1) == 1 ? 0 : t.stride(1), sp};
}

bool has_layout(const Tensor& t, const Layout& l) { return pixel_strided(t) && layout_of(t) == l; }

Geometry geometry(const Tensor& lead) {
  return {lead.size(0), lead.size(1), lead.size(2), lead.size(3), layout_of(lead)};
}

// The lead big tensor: t itself when dense and pixel-strided (a layout outputs can have).
Tensor lead_big(const Tensor& t, const char* name) {
  check_dim(t, name, 4, "N x K x H x W");
  dtype_of(t, name);
  return t.is_non_overlapping_and_dense() && pixel_strided(t) ? t : t.contiguous();
}

// Another big input of the call: same shape and dtype as the lead, in its layout.
Tensor like_lead(const Tensor& t, const char* name, const Tensor& lead, const char* lead_name) {
  check_device(t, name);
  TORCH_CHECK(t.sizes() == lead.sizes(), "attnfast (CUDA): ", name, " has shape ", t.sizes(),
              " but ", lead_name, " has shape ", lead.sizes(), "; they must match");
  TORCH_CHECK(t.scalar_type() == lead.scalar_type(), "attnfast (CUDA): ", name, " has dtype ",
              t.scalar_type(), " but ", lead_name, " has dtype ", lead.scalar_type());
  TORCH_CHECK(t.device() == lead.device(), "attnfast (CUDA): ", name, " is on ", t.device(),
              " but ", lead_name, " is on ", lead.device());
  if (has_layout(t, layout_of(lead))) return t;
  return at::empty_like(lead).copy_(t);
}

// A big output like `input` (its dtype and memory format); kernels write `work`, in the lead
// layout; done() copies when the two differ.
struct BigOut {
  Tensor user, work;
  BigOut(const Tensor& input, const Tensor& lead) : user(at::empty_like(input)) {
    work = has_layout(user, layout_of(lead)) ? user : at::empty_like(lead, user.options());
  }
  void* ptr() { return work.data_ptr(); }
  Tensor done() {
    if (!work.is_same(user)) user.copy_(work);
    return user;
  }
};

// Small tensors as the kernels read them.
Tensor small(const Tensor& t, const char* name) {
  check_device(t, name);
  return t.to(at::kFloat).contiguous();
}
Tensor map_of(const Tensor& t, const char* name) {
  check_dim(t, name, 3, "N x H x W (a map)");
  return small(t, name);
}

// ---------------------------------------------------------------- launches
// Temporary device memory from the caching allocator, alive until the op returns (its reuse
// is ordered on the current stream).
struct TorchScratch {
  at::TensorOptions options;
  std::vector<Tensor> keep;
  explicit TorchScratch(const Tensor& like) : options(like.options().dtype(at::kByte)) {}
  static void* alloc(void* ctx, size_t bytes) {
    auto* self = static_cast<TorchScratch*>(ctx);
    self->keep.push_back(at::empty({static_cast<int64_t>(bytes)}, self->options));
    return self->keep.back().data_ptr();
  }
  Scratch handle() { return {this, &alloc}; }
};

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void check_launch(cudaError_t err) {
  C10_CUDA_CHECK(err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::TensorOptions f32(const Tensor& like) { return like.options().dtype(at::kFloat); }

float* fptr(const Tensor& t) { return t.numel() ? t.data_ptr<float>() : nullptr; }
const float* cfptr(const Tensor& t) { return t.numel() ? t.data_ptr<float>() : nullptr; }

// ---------------------------------------------------------------- attention maps
Tensor channel_weights_cuda(const Tensor& grads, bool positive) {
  const c10::cuda::CUDAGuard guard(grads.device());
  const Tensor g = lead_big(grads, "grads");
  Tensor w = at::empty({g.size(0), g.size(1)}, f32(g));
  TorchScratch s(g);
  check_launch(channel_weights(dtype_of(g, "grads"), geometry(g), g.data_ptr(), positive,
                               fptr(w), s.handle(), stream()));
  return w;
}

Tensor channel_weights_backward_cuda(const Tensor& grad, const Tensor& grads, bool positive) {
  const c10::cuda::CUDAGuard guard(grads.device());
  const Tensor g = lead_big(grads, "grads");
  check_shape(grad, "grad", {g.size(0), g.size(1)});
  const Tensor gw = small(grad, "grad");
  BigOut dg(grads, g);
  TorchScratch s(g);
  check_launch(channel_weights_backward(dtype_of(g, "grads"), geometry(g), cfptr(gw),
                                        g.data_ptr(), positive, dg.ptr(), s.handle(), stream()));
  return dg.done();
}

Tensor weighted_attention_cuda(const Tensor& features, const Tensor& weights) {
  const c10::cuda::CUDAGuard guard(features.device());
  const Tensor f = lead_big(features, "features");
  check_shape(weights, "weights", {f.size(0), f.size(1)});
  const Tensor w = small(weights, "weights");
  Tensor attn = at::empty({f.size(0), f.size(2), f.size(3)}, f32(f));
  TorchScratch s(f);
  check_launch(weighted_attention(dtype_of(f, "features"), geometry(f), f.data_ptr(), cfptr(w),
                                  fptr(attn), s.handle(), stream()));
  return attn;
}

Tensor2 weighted_attention_backward_cuda(const Tensor& grad, const Tensor& features,
                                         const Tensor& weights, const Tensor& attn) {
  const c10::cuda::CUDAGuard guard(features.device());
  const Tensor f = lead_big(features, "features");
  const std::vector<int64_t> map_shape = {f.size(0), f.size(2), f.size(3)};
  check_shape(weights, "weights", {f.size(0), f.size(1)});
  check_shape(grad, "grad", map_shape);
  check_shape(attn, "attn", map_shape);
  const Tensor w = small(weights, "weights"), g = small(grad, "grad"), a = small(attn, "attn");
  BigOut df(features, f);
  Tensor dw = at::empty_like(w);
  TorchScratch s(f);
  check_launch(weighted_attention_backward(dtype_of(f, "features"), geometry(f), cfptr(g),
                                           f.data_ptr(), cfptr(w), cfptr(a), df.ptr(), fptr(dw),
                                           s.handle(), stream()));
  return {df.done(), dw};
}

Tensor pixel_attention_cuda(const Tensor& features, const Tensor& grads) {
  const c10::cuda::CUDAGuard guard(features.device());
  const Tensor f = lead_big(features, "features");
  const Tensor g = like_lead(grads, "grads", f, "features");
  Tensor attn = at::empty({f.size(0), f.size(2), f.size(3)}, f32(f));
  TorchScratch s(f);
  check_launch(pixel_attention(dtype_of(f, "features"), geometry(f), f.data_ptr(), g.data_ptr(),
                               fptr(attn), s.handle(), stream()));
  return attn;
}

Tensor2 pixel_attention_backward_cuda(const Tensor& grad, const Tensor& features,
                                      const Tensor& grads, const Tensor& attn) {
  const c10::cuda::CUDAGuard guard(features.device());
  const Tensor f = lead_big(features, "features");
  const Tensor g = like_lead(grads, "grads", f, "features");
  const std::vector<int64_t> map_shape = {f.size(0), f.size(2), f.size(3)};
  check_shape(grad, "grad", map_shape);
  check_shape(attn, "attn", map_shape);
  const Tensor gm = small(grad, "grad"), a = small(attn, "attn");
  BigOut df(features, f), dg(grads, f);
  TorchScratch s(f);
  check_launch(pixel_attention_backward(dtype_of(f, "features"), geometry(f), cfptr(gm),
                                        f.data_ptr(), g.data_ptr(), cfptr(a), df.ptr(), dg.ptr(),
                                        s.handle(), stream()));
  return {df.done(), dg.done()};
}

// ---------------------------------------------------------------- per-sample map ops
Tensor normalize_attention_cuda(const Tensor& attn, double eps) {
  const c10::cuda::CUDAGuard guard(attn.device());
  const Tensor a = map_of(attn, "attn");
  Tensor out = at::empty_like(a);
  check_launch(normalize_attention(a.size(0), a.size(1) * a.size(2), cfptr(a),
                                   static_cast<float>(eps), fptr(out), stream()));
  return out;
}

Tensor normalize_attention_backward_cuda(const Tensor& grad, const Tensor& attn, double eps) {
  const c10::cuda::CUDAGuard guard(attn.device());
  const Tensor a = map_of(attn, "attn");
  check_shape(grad, "grad", a.sizes());
  const Tensor g = small(grad, "grad");
  Tensor da = at::empty_like(a);
  check_launch(normalize_attention_backward(a.size(0), a.size(1) * a.size(2), cfptr(g), cfptr(a),
                                            static_cast<float>(eps), fptr(da), stream()));
  return da;
}

MaskArgs mask_args(const Tensor& a, double sigma, double omega, int64_t out_h, int64_t out_w,
                   double eps) {
  TORCH_CHECK(out_h > 0 && out_w > 0, "attnfast (CUDA): soft_mask size must be positive, got ",
              out_h, " x ", out_w);
  return {a.size(1), a.size(2), out_h, out_w, static_cast<float>(sigma),
          static_cast<float>(omega), static_cast<float>(eps)};
}

Tensor soft_mask_cuda(const Tensor& attn, double sigma, double omega, int64_t out_h,
                      int64_t out_w, double eps) {
  const c10::cuda::CUDAGuard guard(attn.device());
  const Tensor a = map_of(attn, "attn");
  const MaskArgs m = mask_args(a, sigma, omega, out_h, out_w, eps);
  Tensor out = at::empty({a.size(0), out_h, out_w}, a.options());
  check_launch(soft_mask(a.size(0), m, cfptr(a), fptr(out), stream()));
  return out;
}

Tensor soft_mask_backward_cuda(const Tensor& grad, const Tensor& attn, double sigma, double omega,
                               int64_t out_h, int64_t out_w, double eps) {
  const c10::cuda::CUDAGuard guard(attn.device());
  const Tensor a = map_of(attn, "attn");
  const MaskArgs m = mask_args(a, sigma, omega, out_h, out_w, eps);
  check_shape(grad, "grad", {a.size(0), out_h, out_w});
  const Tensor g = small(grad, "grad");
  Tensor da = at::empty_like(a);
  TorchScratch s(a);
  check_launch(soft_mask_backward(a.size(0), m, cfptr(g), cfptr(a), fptr(da), s.handle(),
                                  stream()));
  return da;
}

// The optional mask of soft_iou: empty (numel 0) means M = 1.
Tensor iou_mask(const Tensor& mask, const Tensor& a) {
  if (mask.numel() == 0) return small(mask, "mask");
  check_shape(mask, "mask", a.sizes());
  return small(mask, "mask");
}

Tensor soft_iou_cuda(const Tensor& attn_a, const Tensor& attn_b, const Tensor& mask, double eps) {
  const c10::cuda::CUDAGuard guard(attn_a.device());
  const Tensor a = map_of(attn_a, "attn_a");
  check_shape(attn_b, "attn_b", a.sizes());
  const Tensor b = small(attn_b, "attn_b"), m = iou_mask(mask, a);
  Tensor out = at::empty({a.size(0)}, a.options());
  check_launch(soft_iou(a.size(0), a.size(1) * a.size(2), cfptr(a), cfptr(b), cfptr(m),
                        static_cast<float>(eps), fptr(out), stream()));
  return out;
}

Tensor3 soft_iou_backward_cuda(const Tensor& grad, const Tensor& attn_a, const Tensor& attn_b,
                               const Tensor& mask, double eps) {
  const c10::cuda::CUDAGuard guard(attn_a.device());
  const Tensor a = map_of(attn_a, "attn_a");
  check_shape(attn_b, "attn_b", a.sizes());
  check_shape(grad, "grad", {a.size(0)});
  const Tensor b = small(attn_b, "attn_b"), m = iou_mask(mask, a), g = small(grad, "grad");
  Tensor da = at::empty_like(a), db = at::empty_like(a), dm = at::empty_like(m);
  check_launch(soft_iou_backward(a.size(0), a.size(1) * a.size(2), cfptr(g), cfptr(a), cfptr(b),
                                 cfptr(m), static_cast<float>(eps), fptr(da), fptr(db), fptr(dm),
                                 stream()));
  return {da, db, dm};
}

Tensor attention_consistency_cuda(const Tensor& attn, const Tensor& mask, double alpha,
                                  double eps) {
  const c10::cuda::CUDAGuard guard(attn.device());
  const Tensor a = map_of(attn, "attn");
  check_shape(mask, "mask", a.sizes());
  const Tensor m = small(mask, "mask");
  Tensor out = at::empty({a.size(0)}, a.options());
  check_launch(attention_consistency(a.size(0), a.size(1) * a.size(2), cfptr(a), cfptr(m),
                                     static_cast<float>(alpha), static_cast<float>(eps),
                                     fptr(out), stream()));
  return out;
}

Tensor2 attention_consistency_backward_cuda(const Tensor& grad, const Tensor& attn,
                                            const Tensor& mask, double /*alpha*/, double eps) {
  const c10::cuda::CUDAGuard guard(attn.device());
  const Tensor a = map_of(attn, "attn");
  check_shape(mask, "mask", a.sizes());
  check_shape(grad, "grad", {a.size(0)});
  const Tensor m = small(mask, "mask"), g = small(grad, "grad");
  Tensor da = at::empty_like(a), dm = at::empty_like(m);
  check_launch(attention_consistency_backward(a.size(0), a.size(1) * a.size(2), cfptr(g),
                                              cfptr(a), cfptr(m), static_cast<float>(eps),
                                              fptr(da), fptr(dm), stream()));
  return {da, dm};
}

// ---------------------------------------------------------------- fused Sharpen Focus
// One layer's inputs as the kernels read them; `keep` holds the tensors behind the pointers.
struct LayerIn {
  Tensor f, g[2];
  SfLayer l;
};

LayerIn layer_in(const Tensor& features, const Tensor& grads_t, const Tensor& grads_c,
                 const char* const names[3]) {
  LayerIn in;
  in.f = lead_big(features, names[0]);
  in.l.geo = geometry(in.f);
  in.l.f = in.f.data_ptr();
  const Tensor* gs[2] = {&grads_t, &grads_c};
  for (int c = 0; c < 2; ++c) {
    in.l.flat[c] = gs[c]->dim() == 2;
    if (in.l.flat[c]) {
      check_shape(*gs[c], names[1 + c], {in.f.size(0), in.f.size(1)});
      in.g[c] = small(*gs[c], names[1 + c]);
    } else {
      check_dim(*gs[c], names[1 + c], 4, "N x K x H x W or N x K");
      in.g[c] = like_lead(*gs[c], names[1 + c], in.f, names[0]);
    }
    in.l.g[c] = in.g[c].numel() ? in.g[c].data_ptr() : nullptr;
  }
  return in;
}

constexpr const char* kInnerNames[3] = {"inner_features", "inner_grads_target",
                                        "inner_grads_confuser"};
constexpr const char* kLastNames[3] = {"last_features", "last_grads_target",
                                       "last_grads_confuser"};

SfOptions sf_options(int64_t kind, double sigma, double omega, double alpha, bool normalize,
                     bool mask_grad, double eps) {
  TORCH_CHECK(kind >= 0 && kind <= 2, "attnfast (CUDA): kind must be 0 (pixel), 1 (channel) or ",
              "2 (gradcam), got ", kind);
  return {kind, static_cast<float>(sigma), static_cast<float>(omega), static_cast<float>(alpha),
          static_cast<float>(eps), normalize, mask_grad};
}

void check_pair(const LayerIn& inner, const LayerIn& last) {
  TORCH_CHECK(inner.f.size(0) == last.f.size(0), "attnfast (CUDA): inner_features has N = ",
              inner.f.size(0), " but last_features has N = ", last.f.size(0));
  TORCH_CHECK(inner.f.scalar_type() == last.f.scalar_type() && inner.f.device() == last.f.device(),
              "attnfast (CUDA): inner_features and last_features must share dtype and device");
}

Tensor3 sharpen_focus_loss_cuda(const Tensor& inner_features, const Tensor& inner_grads_target,
                                const Tensor& inner_grads_confuser, const Tensor& last_features,
                                const Tensor& last_grads_target,
                                const Tensor& last_grads_confuser, int64_t kind, double sigma,
                                double omega, double alpha, bool normalize, bool mask_grad,
                                double eps) {
  const c10::cuda::CUDAGuard guard(inner_features.device());
  const LayerIn inner = layer_in(inner_features, inner_grads_target, inner_grads_confuser,
                                 kInnerNames);
  const LayerIn last = layer_in(last_features, last_grads_target, last_grads_confuser,
                                kLastNames);
  check_pair(inner, last);
  const SfOptions o = sf_options(kind, sigma, omega, alpha, normalize, mask_grad, eps);
  const auto opts = f32(inner.f);
  const int64_t n = inner.f.size(0);
  Tensor inner_iou = at::empty({n}, opts), last_iou = at::empty({n}, opts),
         consistency = at::empty({n}, opts);
  TorchScratch s(inner.f);
  check_launch(sharpen_focus_loss(dtype_of(inner.f, kInnerNames[0]), inner.l, last.l, o,
                                  fptr(inner_iou), fptr(last_iou), fptr(consistency), s.handle(),
                                  stream()));
  return {inner_iou, last_iou, consistency};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sharpen_focus_loss_backward_cuda(
    const Tensor& grad_inner_iou, const Tensor& grad_last_iou, const Tensor& grad_consistency,
    const Tensor& inner_features, const Tensor& inner_grads_target,
    const Tensor& inner_grads_confuser, const Tensor& last_features,
    const Tensor& last_grads_target, const Tensor& last_grads_confuser, int64_t kind,
    double sigma, double omega, double alpha, bool normalize, bool mask_grad, double eps) {
  const c10::cuda::CUDAGuard guard(inner_features.device());
  const LayerIn inner = layer_in(inner_features, inner_grads_target, inner_grads_confuser,
                                 kInnerNames);
  const LayerIn last = layer_in(last_features, last_grads_target, last_grads_confuser,
                                kLastNames);
  check_pair(inner, last);
  const SfOptions o = sf_options(kind, sigma, omega, alpha, normalize, mask_grad, eps);
  const int64_t n = inner.f.size(0);
  check_shape(grad_inner_iou, "grad_inner_iou", {n});
  check_shape(grad_last_iou, "grad_last_iou", {n});
  check_shape(grad_consistency, "grad_consistency", {n});
  const Tensor gi = small(grad_inner_iou, "grad_inner_iou"),
               gl = small(grad_last_iou, "grad_last_iou"),
               gc = small(grad_consistency, "grad_consistency");
  // Gradients: big ones like their inputs (BigOut), N x K ones float32 contiguous.
  const Tensor* inputs[2][3] = {{&inner_features, &inner_grads_target, &inner_grads_confuser},
                                {&last_features, &last_grads_target, &last_grads_confuser}};
  const LayerIn* layers[2] = {&inner, &last};
  std::vector<BigOut> big;
  big.reserve(6);
  Tensor flat[2][2];
  SfLayerGrads d[2];
  for (int l = 0; l < 2; ++l) {
    big.emplace_back(*inputs[l][0], layers[l]->f);
    d[l].d_f = big.back().ptr();
    for (int c = 0; c < 2; ++c) {
      if (layers[l]->l.flat[c]) {
        flat[l][c] = at::empty_like(layers[l]->g[c]);
        d[l].d_g[c] = flat[l][c].numel() ? flat[l][c].data_ptr() : nullptr;
      } else {
        big.emplace_back(*inputs[l][1 + c], layers[l]->f);
        d[l].d_g[c] = big.back().ptr();
      }
    }
  }
  TorchScratch s(inner.f);
  check_launch(sharpen_focus_loss_backward(dtype_of(inner.f, kInnerNames[0]), cfptr(gi),
                                           cfptr(gl), cfptr(gc), inner.l, last.l, o, d[0], d[1],
                                           s.handle(), stream()));
  // Back to the order of the inputs.
  Tensor out[2][3];
  size_t next = 0;
  for (int l = 0; l < 2; ++l) {
    out[l][0] = big[next++].done();
    for (int c = 0; c < 2; ++c) {
      if (layers[l]->l.flat[c]) {
        out[l][1 + c] = flat[l][c].to(inputs[l][1 + c]->scalar_type());
      } else {
        out[l][1 + c] = big[next++].done();
      }
    }
  }
  return {out[0][0], out[0][1], out[0][2], out[1][0], out[1][1], out[1][2]};
}

// ---------------------------------------------------------------- GGAM
Tensor2 channel_spatial_attention_cuda(const Tensor& features, const Tensor& channel_weights,
                                       double eps) {
  const c10::cuda::CUDAGuard guard(features.device());
  const Tensor f = lead_big(features, "features");
  check_shape(channel_weights, "channel_weights", {f.size(0), f.size(1)});
  const Tensor w = small(channel_weights, "channel_weights");
  BigOut out(features, f);
  Tensor spatial = at::empty({f.size(0), f.size(2), f.size(3)}, f32(f));
  TorchScratch s(f);
  check_launch(channel_spatial_attention(dtype_of(f, "features"), geometry(f), f.data_ptr(),
                                         cfptr(w), static_cast<float>(eps), out.ptr(),
                                         fptr(spatial), s.handle(), stream()));
  return {out.done(), spatial};
}

Tensor2 channel_spatial_attention_backward_cuda(const Tensor& grad_out, const Tensor& grad_spatial,
                                                const Tensor& features,
                                                const Tensor& channel_weights,
                                                const Tensor& spatial, double eps) {
  const c10::cuda::CUDAGuard guard(features.device());
  const Tensor f = lead_big(features, "features");
  const Tensor gout = like_lead(grad_out, "grad_out", f, "features");
  const std::vector<int64_t> map_shape = {f.size(0), f.size(2), f.size(3)};
  check_shape(channel_weights, "channel_weights", {f.size(0), f.size(1)});
  check_shape(grad_spatial, "grad_spatial", map_shape);
  check_shape(spatial, "spatial", map_shape);
  const Tensor w = small(channel_weights, "channel_weights"),
               gs = small(grad_spatial, "grad_spatial"), t = small(spatial, "spatial");
  BigOut df(features, f);
  Tensor dw = at::empty_like(w);
  TorchScratch s(f);
  check_launch(channel_spatial_attention_backward(
      dtype_of(f, "features"), geometry(f), gout.data_ptr(), cfptr(gs), f.data_ptr(), cfptr(w),
      cfptr(t), static_cast<float>(eps), df.ptr(), fptr(dw), s.handle(), stream()));
  return {df.done(), dw};
}

Tensor ggam_loss_cuda(const Tensor& channel_weights, const Tensor& gradcam_weights, double eps) {
  const c10::cuda::CUDAGuard guard(channel_weights.device());
  check_dim(channel_weights, "channel_weights", 2, "N x K");
  check_shape(gradcam_weights, "gradcam_weights", channel_weights.sizes());
  const Tensor p = small(channel_weights, "channel_weights"),
               beta = small(gradcam_weights, "gradcam_weights");
  Tensor out = at::empty({p.size(0)}, p.options());
  check_launch(ggam_loss(p.size(0), p.size(1), cfptr(p), cfptr(beta), static_cast<float>(eps),
                         fptr(out), stream()));
  return out;
}

Tensor2 ggam_loss_backward_cuda(const Tensor& grad, const Tensor& channel_weights,
                                const Tensor& gradcam_weights, double eps) {
  const c10::cuda::CUDAGuard guard(channel_weights.device());
  check_dim(channel_weights, "channel_weights", 2, "N x K");
  check_shape(gradcam_weights, "gradcam_weights", channel_weights.sizes());
  check_shape(grad, "grad", {channel_weights.size(0)});
  const Tensor p = small(channel_weights, "channel_weights"),
               beta = small(gradcam_weights, "gradcam_weights"), g = small(grad, "grad");
  Tensor dp = at::empty_like(p), dbeta = at::empty_like(beta);
  check_launch(ggam_loss_backward(p.size(0), p.size(1), cfptr(g), cfptr(p), cfptr(beta),
                                  static_cast<float>(eps), fptr(dp), fptr(dbeta), stream()));
  return {dp, dbeta};
}

}  // namespace
}  // namespace cuda
}  // namespace attnfast

#define ATTNFAST_CUDA_IMPL(name) m.impl(#name, &attnfast::cuda::name##_cuda)

TORCH_LIBRARY_IMPL(attnfast, CUDA, m) {
  ATTNFAST_CUDA_IMPL(channel_weights);
  ATTNFAST_CUDA_IMPL(channel_weights_backward);
  ATTNFAST_CUDA_IMPL(weighted_attention);
  ATTNFAST_CUDA_IMPL(weighted_attention_backward);
  ATTNFAST_CUDA_IMPL(pixel_attention);
  ATTNFAST_CUDA_IMPL(pixel_attention_backward);
  ATTNFAST_CUDA_IMPL(normalize_attention);
  ATTNFAST_CUDA_IMPL(normalize_attention_backward);
  ATTNFAST_CUDA_IMPL(soft_mask);
  ATTNFAST_CUDA_IMPL(soft_mask_backward);
  ATTNFAST_CUDA_IMPL(soft_iou);
  ATTNFAST_CUDA_IMPL(soft_iou_backward);
  ATTNFAST_CUDA_IMPL(attention_consistency);
  ATTNFAST_CUDA_IMPL(attention_consistency_backward);
  ATTNFAST_CUDA_IMPL(sharpen_focus_loss);
  ATTNFAST_CUDA_IMPL(sharpen_focus_loss_backward);
  ATTNFAST_CUDA_IMPL(channel_spatial_attention);
  ATTNFAST_CUDA_IMPL(channel_spatial_attention_backward);
  ATTNFAST_CUDA_IMPL(ggam_loss);
  ATTNFAST_CUDA_IMPL(ggam_loss_backward);
}
