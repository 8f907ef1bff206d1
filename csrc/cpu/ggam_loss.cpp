// ggam_loss: L[n] = 0.5 (KL(p'||q') + KL(q'||p')), p = S, q = sigmoid(beta) / sum_k sigmoid(beta),
// clamped at eps -- GGAM Eq. 5; backward w.r.t. S and beta: common/ggam.h.
#include <torch/library.h>

#include "common/ggam.h"
#include "cpu/cpu_common.h"
#include "host/ggam.h"

namespace attnfast::cpu {
namespace {

void run(const host::GgamLoss& a) {
  const int64_t N = a.s.size(0), K = a.s.size(1);
  ATTNFAST_DISPATCH_ACC(a.s.scalar_type(), "attnfast::ggam_loss", [&] {
    using T = scalar_t;
    const T *sp = a.s.const_data_ptr<T>(), *bp = a.beta.const_data_ptr<T>();
    T* op = a.out.mutable_data_ptr<T>();
    for_each_sample<T>(N, 8 * K, 0, [&](int64_t n, T*) {
      op[n] = ggam_kl(sp + n * K, bp + n * K, K, T(a.eps));
    });
  });
}

void run(const host::GgamLossBackward& a) {
  const int64_t N = a.s.size(0), K = a.s.size(1);
  ATTNFAST_DISPATCH_ACC(a.s.scalar_type(), "attnfast::ggam_loss_backward", [&] {
    using T = scalar_t;
    const T *sp = a.s.const_data_ptr<T>(), *bp = a.beta.const_data_ptr<T>(),
            *gp = a.grad.const_data_ptr<T>();
    T *dsp = a.ds.mutable_data_ptr<T>(), *dbp = a.dbeta.mutable_data_ptr<T>();
    for_each_sample<T>(N, 16 * K, 0, [&](int64_t n, T*) {
      ggam_kl_backward(gp[n], sp + n * K, bp + n * K, K, T(a.eps), dsp + n * K, dbp + n * K);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(attnfast, CPU, m) { ATTNFAST_IMPL(m, kCpu, ggam_loss, run); }

}  // namespace attnfast::cpu
