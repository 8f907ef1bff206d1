// GGAM per-sample math (Xu et al. 2021), framework-free. One sample is a row of K channels.
//
// ggam_kl:  p = S, s = sigmoid(beta), q = s / sum_k s_k, p' = max(p, eps), q' = max(q, eps),
//           L = 0.5 (KL(p'||q') + KL(q'||p')) = 0.5 sum_k (p' - q') (log p' - log q')   (Eq. 5)
// backward: dL/dp' = 0.5 (log p' - log q' + 1 - q'/p'), dL/dq' = 0.5 (log q' - log p' + 1 - p'/q'),
//           the clamps pass the gradient where x >= eps, and through the normalization
//           ds_j = (dq_j - sum_k dq_k q_k) / sum_k s_k, dbeta = ds s (1 - s).
#pragma once

#include "common/defs.h"

namespace attnfast {

// max(x, eps) with NaN kept (torch.clamp_min); its gradient passes where x >= eps (never NaN).
template <class T> ATTNFAST_HD inline T clamp_eps(T x, T eps) { return x < eps ? eps : x; }

template <class T> ATTNFAST_HD inline T sigmoid_sum(const T* beta, int64_t K) {
  T s = T(0);
  for (int64_t k = 0; k < K; ++k) s += sigmoid(beta[k]);
  return s;
}

template <class T> ATTNFAST_HD inline T ggam_kl(const T* p, const T* beta, int64_t K, T eps) {
  using std::log;
  const T ssum = sigmoid_sum(beta, K);
  T total = T(0);
  for (int64_t k = 0; k < K; ++k) {
    const T pc = clamp_eps(p[k], eps), qc = clamp_eps(sigmoid(beta[k]) / ssum, eps);
    total += (pc - qc) * (log(pc) - log(qc));
  }
  return T(0.5) * total;
}

// dL/dq_k (through the clamp) for the k-th channel, and dp_k when dp is given.
template <class T>
ATTNFAST_HD inline T ggam_kl_grads_at(T g, T p, T q, T eps, T* dp) {
  using std::log;
  const T pc = clamp_eps(p, eps), qc = clamp_eps(q, eps), lr = log(pc) - log(qc);
  if (dp) *dp = p >= eps ? T(0.5) * g * (lr + T(1) - qc / pc) : T(0);
  return q >= eps ? T(0.5) * g * (-lr + T(1) - pc / qc) : T(0);
}

// Writes dp (K) and dbeta (K) for upstream gradient g.
template <class T>
ATTNFAST_HD inline void ggam_kl_backward(T g, const T* p, const T* beta, int64_t K, T eps, T* dp,
                                         T* dbeta) {
  const T ssum = sigmoid_sum(beta, K);
  T dq_q = T(0);  // sum_k dq_k q_k
  for (int64_t k = 0; k < K; ++k) {
    const T q = sigmoid(beta[k]) / ssum;
    dq_q += ggam_kl_grads_at(g, p[k], q, eps, dp + k) * q;
  }
  for (int64_t k = 0; k < K; ++k) {
    const T s = sigmoid(beta[k]), q = s / ssum;
    const T dq = ggam_kl_grads_at(g, p[k], q, eps, static_cast<T*>(nullptr));
    dbeta[k] = (dq - dq_q) / ssum * s * (T(1) - s);
  }
}

}  // namespace attnfast
