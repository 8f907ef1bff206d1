// Framework-free basics shared by the CPU and CUDA kernels: the host/device qualifier, the
// element layout of a big N x K x (H*W) tensor, and the scalar subgradient rules of docs/SPEC.md
// decision 6. No ATen here: this header compiles with a plain C++ compiler or nvcc alone.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define ATTNFAST_HD __host__ __device__
#else
#define ATTNFAST_HD
#endif

namespace attnfast {

// Attention kinds, as the `kind` argument encodes them (attnfast/_schema.py KIND_CODES); kIxg
// (input x gradient at the layer, no ReLU) is taken by guidance_loss only.
enum Kind : int64_t { kPixel = 0, kChannel = 1, kGradcam = 2, kIxg = 3 };

// The non-tensor arguments of sharpen_focus_loss (attnfast/_schema.py), in T (float, double).
template <class T> struct SfOptions {
  int64_t kind;  // Kind
  T sigma, omega, alpha, eps;
  bool normalize, mask_grad;
};

// Element strides of a big tensor seen as N x K x P, P = H * W, pixel p = i * W + j:
// element (n, k, p) sits at n * sn + k * sk + p * sp. Contiguous NCHW is (K P, P, 1),
// channels_last is (P K, 1, K); a dimension of size 1 is given stride 0.
struct Layout {
  int64_t sn, sk, sp;
  ATTNFAST_HD int64_t at(int64_t n, int64_t k, int64_t p) const { return n * sn + k * sk + p * sp; }
  ATTNFAST_HD bool operator==(const Layout& o) const { return sn == o.sn && sk == o.sk && sp == o.sp; }
  // True when consecutive pixels are closer in memory than consecutive channels (NCHW).
  ATTNFAST_HD bool pixels_inner() const { return sk == 0 || (sp != 0 && sp < sk); }
};

// ReLU(x) = max(x, 0) (NaN stays NaN, as torch.relu) and its subgradient with ReLU'(0) = 0.
// ReLU'(NaN) = 1, as torch's threshold_backward (it zeroes only where x <= 0): docs/SPEC.md decision 15.
template <class T> ATTNFAST_HD inline T relu(T x) { return x < T(0) ? T(0) : x; }
// g ReLU'(x) as torch's threshold_backward computes it: a select, not a product, so that a NaN
// (or Inf) upstream g gives 0 where x <= 0 instead of NaN * 0 = NaN.
template <class T> ATTNFAST_HD inline T relu_backward(T g, T x) { return x <= T(0) ? T(0) : g; }

// NaN-propagating max and min (torch.amax, torch.maximum, torch.minimum; docs/SPEC.md decision 15):
// a NaN operand gives NaN whichever side it is on (std::max/fmax would drop it).
template <class T> ATTNFAST_HD inline T nan_max(T a, T b) { return (a > b || a != a) ? a : b; }
template <class T> ATTNFAST_HD inline T nan_min(T a, T b) { return (a < b || a != a) ? a : b; }

// sigmoid(x) = 1 / (1 + exp(-x)); exp overflow gives exactly 0, never NaN.
template <class T> ATTNFAST_HD inline T sigmoid(T x) {
  using std::exp;
  return T(1) / (T(1) + exp(-x));
}

// Per-element term of the channel weights: ReLU(g) (positive, Sharpen Focus A_ch) or g
// (Grad-CAM), and its derivative in g.
template <class T> ATTNFAST_HD inline T weight_term(bool positive, T g) { return positive ? relu(g) : g; }
// d * d(weight_term)/dg, a select like relu_backward.
template <class T> ATTNFAST_HD inline T weight_term_backward(bool positive, T d, T g) {
  return positive && g <= T(0) ? T(0) : d;
}

// A gradient g[n,k] that is the same at every pixel (N x K grads) acts through one effective
// channel weight: pixel A = ReLU(sum_k (g/K) F) -> g/K; channel mean_p ReLU(g) -> ReLU(g);
// gradcam mean_p g -> g. `const_grad_weight_backward` is d * d(weight)/dg.
template <class T> ATTNFAST_HD inline T const_grad_weight(int64_t kind, T g, T inv_k) {
  return kind == kPixel ? g * inv_k : weight_term(kind == kChannel, g);
}
template <class T>
ATTNFAST_HD inline T const_grad_weight_backward(int64_t kind, T d, T g, T inv_k) {
  return kind == kPixel ? d * inv_k : weight_term_backward(kind == kChannel, d, g);
}

}  // namespace attnfast
