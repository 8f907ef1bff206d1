// Layout and check helpers of cpu_common.h.
#include "cpu/cpu_common.h"

namespace attnfast::cpu {

void check_big(const Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, "attnfast: ", name, " must be 4-D N x K x H x W, got shape ", t.sizes());
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "attnfast: ", name, " must be float16, bfloat16, float32 or float64, got ", dt);
}

void check_same_big(const Tensor& ref, const char* ref_name, const Tensor& t, const char* name) {
  check_big(t, name);
  TORCH_CHECK(t.sizes() == ref.sizes(), "attnfast: ", name, " has shape ", t.sizes(), " but ",
              ref_name, " has shape ", ref.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "attnfast: ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type());
}

void check_dim(const Tensor& t, const char* name, int64_t dim, const char* what) {
  TORCH_CHECK(t.dim() == dim, "attnfast: ", name, " must be ", dim, "-D ", what, ", got shape ",
              t.sizes());
}

void check_shape(const Tensor& t, const char* name, at::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, "attnfast: ", name, " must have shape ", want, ", got ",
              t.sizes());
}

// p = i * W + j has one stride.
static bool pixel_strided(const Tensor& t) {
  return t.size(2) == 1 || t.size(3) == 1 || t.stride(2) == t.size(3) * t.stride(3);
}

Layout layout_of(const Tensor& t) {
  TORCH_CHECK(t.dim() == 4 && pixel_strided(t),
              "attnfast: internal error, big tensor without a single pixel stride: shape ",
              t.sizes(), ", strides ", t.strides());
  const int64_t sp = pixels(t) == 1 ? 0 : (t.size(3) == 1 ? t.stride(2) : t.stride(3));
  return {t.size(0) == 1 ? 0 : t.stride(0), t.size(1) == 1 ? 0 : t.stride(1), sp};
}

Tensor dense(const Tensor& t) {
  return t.is_non_overlapping_and_dense() && pixel_strided(t) ? t : t.contiguous();
}

Tensor like_layout(const Tensor& t, const Tensor& ref) {
  if (pixel_strided(t) && layout_of(t) == layout_of(ref)) return t;
  return at::empty_like(ref, t.options()).copy_(t);
}

BigOut::BigOut(const Tensor& input, const Tensor& ref) : user(at::empty_like(input)) {
  if (input.dim() != 4) {  // a small (N x K) gradient: written contiguous, accumulation dtype
    const auto acc = acc_dtype(ref);
    work = user.is_contiguous() && user.scalar_type() == acc
               ? user
               : at::empty(user.sizes(), user.options().dtype(acc));
  } else if (pixel_strided(user) && layout_of(user) == layout_of(ref)) {
    work = user;
  } else {
    work = at::empty_like(ref, user.options());
  }
}

Tensor BigOut::done() const {
  if (!work.is_same(user)) user.copy_(work);
  return user;
}

}  // namespace attnfast::cpu
