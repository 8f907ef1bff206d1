// Checks and prepared forms of guidance_loss's arguments (host/guidance.h).
#include "host/guidance.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>

namespace attnfast::host {

Guidance guidance_inputs(const Tensor& features, const Tensor& grads, const Tensor& boxes,
                         const Tensor& rows, const Tensor& coverage, const Tensor& cell_weights,
                         const GuidanceOptions<double>& o, const Target& tg) {
  TORCH_CHECK_VALUE(o.kind >= kPixel && o.kind <= kIxg, tg.prefix, "kind must be 0..3, got ", o.kind);
  TORCH_CHECK_VALUE(o.loss >= kEnergy && o.loss <= kRrr, tg.prefix, "loss must be 0..3, got ", o.loss);
  TORCH_CHECK_VALUE(o.eps > 0 && o.image_h > 0 && o.image_w > 0, tg.prefix,
                    "eps, image_h and image_w must be > 0");
  const BigCall c(features, "features", tg);
  if (o.kind == kPixel) check_channels(c.f, "features", "guidance_loss with kind pixel", tg);
  Guidance in;
  in.f = c.f, in.o = o, in.flat = grads.dim() == 2;
  check_device(rows, "rows", tg);
  TORCH_CHECK(rows.dim() == 1 && rows.scalar_type() == at::kLong, tg.prefix,
              "rows must be a 1-D int64 tensor, got ", rows.scalar_type(), " of shape ", rows.sizes());
  in.r = rows.size(0);
  in.rows = rows.contiguous();
  in.g = in.flat ? small(grads, "grads", {in.r, c.k}, c.acc, tg) : c.big_rows(grads, "grads", in.r);
  check_dim(boxes, "boxes", 3, "R x B x 4 boxes", tg);
  TORCH_CHECK(boxes.size(0) == in.r && boxes.size(2) == 4, tg.prefix,
              "boxes must be R x B x 4 with R = ", in.r, ", got ", boxes.sizes());
  in.boxes = boxes.to(c.acc).contiguous();
  in.coverage = coverage.numel() == 0 ? coverage
                                      : small(coverage, "coverage", {in.r, c.h, c.w}, c.acc, tg);
  in.cell_weights = cell_weights.numel() == 0
                        ? cell_weights
                        : small(cell_weights, "cell_weights", {c.h, c.w}, c.acc, tg);
  return in;
}

GuidanceLossBackward guidance_backward_args(const Tensor& grad, Guidance in, const Tensor& maps,
                                            const Tensor& weights, const Tensor& features,
                                            const Tensor& grads, const Target& tg) {
  const auto acc = acc_dtype({in.f}, tg);
  const int64_t n = in.f.size(0), k = guidance_has_weights(in.o.kind) ? in.f.size(1) : 0;
  const auto sorted = at::sort(in.rows, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const Tensor images = at::arange(n + 1, in.rows.options());
  GuidanceLossBackward a;
  a.grad = small(grad, "grad", {in.r}, acc, tg);
  a.maps = small(maps, "maps", {in.r, in.f.size(2), in.f.size(3)}, acc, tg);
  a.weights = small(weights, "weights", {in.r, k}, acc, tg);
  a.order = std::get<1>(sorted).contiguous();
  a.offsets = at::searchsorted(std::get<0>(sorted), images).contiguous();
  a.df = BigOut(features, in.f);
  a.dg = BigOut(grads, in.g);
  a.in = std::move(in);
  return a;
}

}  // namespace attnfast::host
