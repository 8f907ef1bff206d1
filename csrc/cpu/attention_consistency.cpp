// attention_consistency: v[n] = alpha - sum_p A M / (sum_p A + eps) -- Sharpen Focus Eq. 8.
// backward: common/maps.h consistency_backward_add.
#include <torch/library.h>

#include "common/maps.h"
#include "cpu/cpu_common.h"
#include "host/maps.h"

namespace attnfast::cpu {
namespace {

void run(const host::AttentionConsistency& a) {
  const int64_t N = a.attn.size(0), P = a.attn.size(1) * a.attn.size(2);
  ATTNFAST_DISPATCH_ACC(a.attn.scalar_type(), "attnfast::attention_consistency", [&] {
    using T = scalar_t;
    const T *ap = a.attn.const_data_ptr<T>(), *mp = a.mask.const_data_ptr<T>();
    T* op = a.out.mutable_data_ptr<T>();
    for_each_sample<T>(N, P, 0, [&](int64_t n, T*) {
      op[n] = consistency(ap + n * P, mp + n * P, P, T(a.alpha), T(a.eps));
    });
  });
}

void run(const host::AttentionConsistencyBackward& a) {
  const int64_t N = a.attn.size(0), P = a.attn.size(1) * a.attn.size(2);
  ATTNFAST_DISPATCH_ACC(a.attn.scalar_type(), "attnfast::attention_consistency_backward", [&] {
    using T = scalar_t;
    const T *ap = a.attn.const_data_ptr<T>(), *mp = a.mask.const_data_ptr<T>(),
            *gp = a.grad.const_data_ptr<T>();
    T *dap = a.d_attn.mutable_data_ptr<T>(), *dmp = a.d_mask.mutable_data_ptr<T>();
    for_each_sample<T>(N, P, 0, [&](int64_t n, T*) {
      fill(dap + n * P, P, T(0));
      fill(dmp + n * P, P, T(0));
      consistency_backward_add(gp[n], ap + n * P, mp + n * P, P, T(a.eps), dap + n * P,
                               dmp + n * P);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CPU, m) { ATTNFAST_IMPL(m, kCpu, attention_consistency, run); }

}  // namespace attnfast::cpu
