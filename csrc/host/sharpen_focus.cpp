// The per-layer input handling of sharpen_focus_loss (host/sharpen_focus.h).
#include "host/sharpen_focus.h"

namespace attnfast::host {
namespace {

const char* const kNames[2][3] = {
    {"inner_features", "inner_grads_target", "inner_grads_confuser"},
    {"last_features", "last_grads_target", "last_grads_confuser"}};

SfLayer sf_layer(const SfLayerTensors& t, const char* const names[3], const Target& tg) {
  const BigCall c(t[0], names[0], tg);
  SfLayer l;
  l.f = c.f;
  for (int j = 0; j < 2; ++j) {
    const Tensor& g = t[1 + j];
    l.flat[j] = g.dim() == 2;
    if (!l.flat[j]) check_dim(g, names[1 + j], 4, "N x K x H x W or N x K", tg);
    l.g[j] = l.flat[j] ? c.nk(g, names[1 + j]) : c.big(g, names[1 + j]);
  }
  return l;
}

}  // namespace

SfInputs sf_inputs(const SfLayerTensors& inner, const SfLayerTensors& last,
                   const SfOptions<double>& o, const Target& tg) {
  TORCH_CHECK(o.kind >= kPixel && o.kind <= kGradcam, tg.prefix,
              "kind must be 0 (pixel), 1 (channel) or 2 (gradcam), got ", o.kind);
  SfInputs in{{sf_layer(inner, kNames[0], tg), sf_layer(last, kNames[1], tg)}, o, 0, {}};
  const Tensor &fi = in.layer[0].f, &fl = in.layer[1].f;
  TORCH_CHECK(fi.size(0) == fl.size(0), tg.prefix, "inner_features has N = ", fi.size(0),
              " but last_features has N = ", fl.size(0));
  TORCH_CHECK(fi.scalar_type() == fl.scalar_type(), tg.prefix, "inner_features has dtype ",
              fi.scalar_type(), " but last_features has dtype ", fl.scalar_type());
  TORCH_CHECK(fi.device() == fl.device(), tg.prefix, "inner_features is on ", fi.device(),
              " but last_features is on ", fl.device());
  if (o.kind == kPixel)
    for (int l = 0; l < 2; ++l) check_channels(in.layer[l].f, kNames[l][0], "kind pixel", tg);
  in.n = fi.size(0);
  in.acc = fi.options().dtype(acc_dtype({fi}, tg));
  return in;
}

namespace {
// Shapes of a layer's saved maps (2 x N x H x W) and weights (2 x N x K, K = 0 for the pixel kind).
std::array<int64_t, 4> saved_maps_shape(const SfInputs& in, int layer) {
  const Tensor& f = in.layer[layer].f;
  return {2, in.n, f.size(2), f.size(3)};
}
std::array<int64_t, 3> saved_weights_shape(const SfInputs& in, int layer) {
  return {2, in.n, in.o.kind == kPixel ? 0 : in.layer[layer].f.size(1)};
}
}  // namespace

SfSaved sf_new_saved(const SfInputs& in, int layer) {
  return {at::empty(saved_maps_shape(in, layer), in.acc),
          at::empty(saved_weights_shape(in, layer), in.acc)};
}

SfSaved sf_saved(const Tensor& maps, const Tensor& weights, const SfInputs& in, int layer,
                 const Target& tg) {
  static const char* const names[2][2] = {{"inner_maps", "inner_weights"},
                                          {"last_maps", "last_weights"}};
  const auto dt = in.acc.dtype().toScalarType();
  return {small(maps, names[layer][0], saved_maps_shape(in, layer), dt, tg),
          small(weights, names[layer][1], saved_weights_shape(in, layer), dt, tg)};
}

SfLayerGrads sf_layer_grads(const SfLayerTensors& inputs, const SfLayer& layer) {
  return {BigOut(inputs[0], layer.f), {BigOut(inputs[1], layer.f), BigOut(inputs[2], layer.f)}};
}

}  // namespace attnfast::host
