// The checks, small-tensor forms, layouts and outputs of host.h.
#include "host/host.h"

namespace attnfast::host {

void check_device(const Tensor& t, const char* name, const Target& tg) {
  TORCH_CHECK(t.device().type() == tg.device, tg.prefix, name, " must be a ",
              c10::DeviceTypeName(tg.device), " tensor, got device ", t.device());
}

void check_dim(const Tensor& t, const char* name, int64_t dim, const char* what, const Target& tg) {
  check_device(t, name, tg);
  TORCH_CHECK(t.dim() == dim, tg.prefix, name, " must be ", dim, "-D ", what, ", got shape ",
              t.sizes());
}

void check_shape(const Tensor& t, const char* name, at::IntArrayRef want, const Target& tg) {
  check_device(t, name, tg);
  TORCH_CHECK(t.sizes() == want, tg.prefix, name, " must have shape ", want, ", got ", t.sizes());
}

at::ScalarType acc_dtype(std::initializer_list<Tensor> ts, const Target& tg) {
  for (const Tensor& t : ts)
    if (tg.float64 && t.scalar_type() == at::kDouble) return at::kDouble;
  return at::kFloat;
}

Tensor small(const Tensor& t, const char* name, at::IntArrayRef want, at::ScalarType dtype,
             const Target& tg) {
  check_shape(t, name, want, tg);
  return t.to(dtype).contiguous();
}

void check_spatial(const Tensor& t, const char* name, const Target& tg) {
  TORCH_CHECK_VALUE(t.size(-2) > 0 && t.size(-1) > 0, tg.prefix, name,
                    " has an empty H x W map (shape ", t.sizes(),
                    "); H and W must be >= 1 (docs/SPEC.md decision 17)");
}

void check_channels(const Tensor& t, const char* name, const char* what, const Target& tg) {
  TORCH_CHECK_VALUE(t.size(1) > 0, tg.prefix, name, " has K = 0 channels; ", what,
                    " needs K >= 1 (docs/SPEC.md decision 17)");
}

Tensor map_in(const Tensor& t, const char* name, const Target& tg) {
  check_dim(t, name, 3, "N x H x W (a map)", tg);
  check_spatial(t, name, tg);
  return t.to(acc_dtype({t}, tg)).contiguous();
}

// ---------------------------------------------------------------- layouts
bool pixel_strided(const Tensor& t) {
  return t.size(2) == 1 || t.size(3) == 1 || t.stride(2) == t.size(3) * t.stride(3);
}

Layout layout_of(const Tensor& t) {
  TORCH_CHECK(t.dim() == 4 && pixel_strided(t),
              "attnfast: internal error, big tensor without a single pixel stride: shape ",
              t.sizes(), ", strides ", t.strides());
  const int64_t sp = pixels(t) == 1 ? 0 : (t.size(3) == 1 ? t.stride(2) : t.stride(3));
  return {t.size(0) == 1 ? 0 : t.stride(0), t.size(1) == 1 ? 0 : t.stride(1), sp};
}

static bool has_layout_of(const Tensor& t, const Tensor& ref) {
  return pixel_strided(t) && layout_of(t) == layout_of(ref);
}

BigOut::BigOut(const Tensor& input, const Tensor& ref) : user(at::empty_like(input)) {
  if (input.dim() != 4) {  // a small (N x K) gradient: written contiguous, accumulation dtype
    const auto acc = ref.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    work = user.is_contiguous() && user.scalar_type() == acc
               ? user
               : at::empty(user.sizes(), user.options().dtype(acc));
  } else if (has_layout_of(user, ref)) {
    work = user;
  } else {
    work = at::empty_like(ref, user.options());
  }
}

Tensor BigOut::done() const {
  if (!work.is_same(user)) user.copy_(work);
  return user;
}

// ---------------------------------------------------------------- the big tensors of a call
static void check_big(const Tensor& t, const char* name, const Target& tg) {
  check_dim(t, name, 4, "N x K x H x W", tg);
  const auto dt = t.scalar_type();
  const bool ok = dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 ||
                  (tg.float64 && dt == at::kDouble);
  TORCH_CHECK(ok, tg.prefix, name, " must be ",
              tg.float64 ? "float16, bfloat16, float32 or float64" : "float16, bfloat16 or float32",
              ", got ", dt, tg.float64 ? "" : " (float64 runs on the 'torch' and 'cpu' backends)");
  check_spatial(t, name, tg);
}

BigCall::BigCall(const Tensor& lead, const char* lead_name, const Target& target)
    : tg(target), name(lead_name) {
  check_big(lead, lead_name, tg);
  f = lead.is_non_overlapping_and_dense() && pixel_strided(lead) ? lead : lead.contiguous();
  n = f.size(0), k = f.size(1), h = f.size(2), w = f.size(3);
  acc = acc_dtype({f}, tg);
}

Tensor BigCall::big(const Tensor& t, const char* t_name) const {
  check_big(t, t_name, tg);
  TORCH_CHECK(t.sizes() == f.sizes(), tg.prefix, t_name, " has shape ", t.sizes(), " but ", name,
              " has shape ", f.sizes(), "; they must match");
  TORCH_CHECK(t.scalar_type() == f.scalar_type(), tg.prefix, t_name, " has dtype ",
              t.scalar_type(), " but ", name, " has dtype ", f.scalar_type());
  TORCH_CHECK(t.device() == f.device(), tg.prefix, t_name, " is on ", t.device(), " but ", name,
              " is on ", f.device());
  return has_layout_of(t, f) ? t : at::empty_like(f).copy_(t);
}

Tensor BigCall::big_rows(const Tensor& t, const char* t_name, int64_t rows) const {
  check_big(t, t_name, tg);
  TORCH_CHECK(t.size(0) == rows && t.size(1) == k && t.size(2) == h && t.size(3) == w, tg.prefix,
              t_name, " must be ", rows, " x ", k, " x ", h, " x ", w, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == f.scalar_type(), tg.prefix, t_name, " has dtype ",
              t.scalar_type(), " but ", name, " has dtype ", f.scalar_type());
  TORCH_CHECK(t.device() == f.device(), tg.prefix, t_name, " is on ", t.device(), " but ", name,
              " is on ", f.device());
  return t.is_non_overlapping_and_dense() && pixel_strided(t) ? t : t.contiguous();
}

}  // namespace attnfast::host
