"""weighted_attention: A[n,p] = ReLU(sum_k w[n,k] F[n,k,p]) (CAM form).

Backward, e = grad * [A > 0]: dF[n,k,p] = e[n,p] w[n,k], dw[n,k] = sum_p e[n,p] F[n,k,p], in one
read of F. Kernels: triton_kernels/_attention_pass.py (a single VEC side).
"""
from torch import Tensor

from ._attention_pass import Side, attention_grads, attention_maps
from ._common import VEC, register


@register
def weighted_attention(features: Tensor, weights: Tensor) -> Tensor:
    """ReLU(sum_k w[n,k] F[n,k]) per pixel: N x H x W, float32."""
    return attention_maps(features, [Side(weights, VEC)])[0]


@register
def weighted_attention_backward(grad: Tensor, features: Tensor, weights: Tensor,
                                attn: Tensor) -> tuple[Tensor, Tensor]:
    """(dL/dF, dL/dw) for grad = dL/dA; attn is the forward output."""
    dfeat, (dweights,) = attention_grads(features, [Side(weights, VEC)], [grad], [attn])
    return dfeat, dweights
