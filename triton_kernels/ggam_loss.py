"""ggam_loss: L[n] = 0.5 (KL(p'||q') + KL(q'||p')) = 0.5 sum_k (p' - q') (log p' - log q'),
p = S, s = sigmoid(beta), q = s / sum_k s, p' = max(p, eps), q' = max(q, eps) -- GGAM Eq. 5.

Backward for upstream g[n] (clamp passes where x >= eps):
  dp  = g/2 (log p' - log q' + 1 - q'/p') [p >= eps]
  dq  = g/2 (log q' - log p' + 1 - p'/q') [q >= eps]
  dbeta_k = s_k (1 - s_k) (dq_k - sum_j dq_j q_j) / sum_j s_j.
One program per sample over the K channels (one tile up to MAP_TILE channels).
"""
import triton
import triton.language as tl
from torch import Tensor

from ._common import per_sample_loss, register
from ._maps import load_map, map_chunk, map_tile


@triton.jit
def _ps(src, start, offs, OPT1: tl.constexpr, OPT2: tl.constexpr):
    """Loader (see _maps.map_chunk): (p, s = sigmoid(beta), valid) at channels start + offs."""
    p_ptr, beta_ptr, n, K = src
    p, valid = load_map(p_ptr, n, start, offs, K)
    beta = load_map(beta_ptr, n, start, offs, K)[0]
    return p, tl.where(valid, tl.sigmoid(beta), 0.0), valid


@triton.jit
def _kl_terms(p, s, sum_s, eps):
    """(p', q', log p' - log q', q) of the symmetric KL."""
    q = s / sum_s
    pc = tl.where(p < eps, eps, p)  # clamp_min keeping NaN (torch.clamp_min)
    qc = tl.where(q < eps, eps, q)
    return pc, qc, tl.log(pc) - tl.log(qc), q


@triton.jit
def _ggam_kernel(p_ptr, beta_ptr, g_ptr, out_ptr, dp_ptr, dbeta_ptr, K, eps,
                 GRAD: tl.constexpr, BLOCK: tl.constexpr, ONE_TILE: tl.constexpr):
    """out[n] = L (forward), or (GRAD) dp, dbeta for upstream g[n]."""
    n = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    src = (p_ptr, beta_ptr, n, K)
    tile = map_tile(_ps, src, offs, ONE_TILE)
    sum_s = 0.0
    for start in range(0, K, BLOCK):
        sum_s += tl.sum(map_chunk(tile, _ps, src, start, offs, ONE_TILE)[1], axis=0)
    loss = 0.0
    sum_dq_q = 0.0
    for start in range(0, K, BLOCK):
        p, s, valid = map_chunk(tile, _ps, src, start, offs, ONE_TILE)
        pc, qc, dlog, q = _kl_terms(p, s, sum_s, eps)
        if GRAD:
            dq = tl.where(q >= eps, 0.5 * (1.0 - dlog - pc / qc), 0.0)
            sum_dq_q += tl.sum(tl.where(valid, dq * q, 0.0), axis=0)
        else:
            loss += tl.sum(tl.where(valid, (pc - qc) * dlog, 0.0), axis=0)
    if GRAD:
        g = tl.load(g_ptr + n)
        for start in range(0, K, BLOCK):
            p, s, valid = map_chunk(tile, _ps, src, start, offs, ONE_TILE)
            pc, qc, dlog, q = _kl_terms(p, s, sum_s, eps)
            dp = tl.where(p >= eps, 0.5 * (dlog + 1.0 - qc / pc), 0.0)
            dq = tl.where(q >= eps, 0.5 * (1.0 - dlog - pc / qc), 0.0)
            dbeta = s * (1.0 - s) * (dq - sum_dq_q) / sum_s
            tl.store(dp_ptr + n * K + start + offs, g * dp, mask=valid)
            tl.store(dbeta_ptr + n * K + start + offs, g * dbeta, mask=valid)
    else:
        tl.store(out_ptr + n, 0.5 * loss)


def _launch(channel_weights, gradcam_weights, eps, grad):
    """ggam_loss (grad None) or its two input gradients."""
    return per_sample_loss(_ggam_kernel, (channel_weights, gradcam_weights), grad,
                           channel_weights.shape[1], eps)


@register
def ggam_loss(channel_weights: Tensor, gradcam_weights: Tensor, eps: float) -> Tensor:
    """Symmetric KL between S and the channel-normalized sigmoid of beta, per sample."""
    return _launch(channel_weights, gradcam_weights, eps, None)


@register
def ggam_loss_backward(grad: Tensor, channel_weights: Tensor, gradcam_weights: Tensor,
                       eps: float) -> tuple[Tensor, Tensor]:
    """(dL/dS, dL/dbeta) for grad = dL/dL_ggam (N)."""
    return _launch(channel_weights, gradcam_weights, eps, grad)
