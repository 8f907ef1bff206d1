// normalize_attention: u[n,p] = A[n,p] / (max(max_q A[n,q], 0) + eps); backward: the normalize
// backward of common/maps.h (even split among ties at the max, nothing through a max < 0).
#include <torch/library.h>

#include "common/maps.h"
#include "cpu/cpu_common.h"
#include "host/maps.h"

namespace attnfast::cpu {
namespace {

void run(const host::NormalizeAttention& a) {
  const int64_t N = a.attn.size(0), P = a.attn.size(1) * a.attn.size(2);
  ATTNFAST_DISPATCH_ACC(a.attn.scalar_type(), "attnfast::normalize_attention", [&] {
    const scalar_t* ap = a.attn.const_data_ptr<scalar_t>();
    scalar_t* op = a.out.mutable_data_ptr<scalar_t>();
    for_each_sample<scalar_t>(N, P, 0, [&](int64_t n, scalar_t*) {
      normalize(ap + n * P, P, static_cast<scalar_t>(a.eps), op + n * P);
    });
  });
}

void run(const host::NormalizeAttentionBackward& a) {
  const int64_t N = a.attn.size(0), P = a.attn.size(1) * a.attn.size(2);
  ATTNFAST_DISPATCH_ACC(a.attn.scalar_type(), "attnfast::normalize_attention_backward", [&] {
    const scalar_t *ap = a.attn.const_data_ptr<scalar_t>(), *gp = a.grad.const_data_ptr<scalar_t>();
    scalar_t* dp = a.d_attn.mutable_data_ptr<scalar_t>();
    for_each_sample<scalar_t>(N, P, 0, [&](int64_t n, scalar_t*) {
      fill(dp + n * P, P, scalar_t(0));
      normalize_backward_add(gp + n * P, ap + n * P, P, static_cast<scalar_t>(a.eps), dp + n * P);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CPU, m) { ATTNFAST_IMPL(m, kCpu, normalize_attention, run); }

}  // namespace attnfast::cpu
