// soft_iou: v[n] = 2 sum_p min(a,b) M / (sum_p (a + b) + eps) -- Sharpen Focus Eq. 6.
// An empty `mask` (numel 0) means M = 1 (then its gradient is empty too).
// backward: common/maps.h soft_iou_backward_add (ties of min split 1/2 - 1/2).
#include <torch/library.h>

#include "common/maps.h"
#include "cpu/cpu_common.h"
#include "host/maps.h"

namespace attnfast::cpu {
namespace {

void run(const host::SoftIou& a) {
  const int64_t N = a.a.size(0), P = a.a.size(1) * a.a.size(2);
  ATTNFAST_DISPATCH_ACC(a.a.scalar_type(), "attnfast::soft_iou", [&] {
    using T = scalar_t;
    const T *ap = a.a.const_data_ptr<T>(), *bp = a.b.const_data_ptr<T>();
    const T* mp = a.mask.numel() ? a.mask.const_data_ptr<T>() : nullptr;
    T* op = a.out.mutable_data_ptr<T>();
    for_each_sample<T>(N, P, 0, [&](int64_t n, T*) {
      op[n] = soft_iou(ap + n * P, bp + n * P, mp ? mp + n * P : nullptr, P, T(a.eps));
    });
  });
}

void run(const host::SoftIouBackward& a) {
  const int64_t N = a.a.size(0), P = a.a.size(1) * a.a.size(2);
  ATTNFAST_DISPATCH_ACC(a.a.scalar_type(), "attnfast::soft_iou_backward", [&] {
    using T = scalar_t;
    const T *ap = a.a.const_data_ptr<T>(), *bp = a.b.const_data_ptr<T>(),
            *gp = a.grad.const_data_ptr<T>();
    const T* mp = a.mask.numel() ? a.mask.const_data_ptr<T>() : nullptr;
    T *dap = a.d_a.mutable_data_ptr<T>(), *dbp = a.d_b.mutable_data_ptr<T>();
    T* dmp = a.mask.numel() ? a.d_mask.mutable_data_ptr<T>() : nullptr;
    for_each_sample<T>(N, P, 0, [&](int64_t n, T*) {
      fill(dap + n * P, P, T(0));
      fill(dbp + n * P, P, T(0));
      if (dmp) fill(dmp + n * P, P, T(0));
      soft_iou_backward_add(gp[n], ap + n * P, bp + n * P, mp ? mp + n * P : nullptr, P, T(a.eps),
                            dap + n * P, dbp + n * P, dmp ? dmp + n * P : nullptr);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CPU, m) { ATTNFAST_IMPL(m, kCpu, soft_iou, run); }

}  // namespace attnfast::cpu
