"""pixel_attention: A[n,p] = ReLU((1/K) sum_k G[n,k,p] F[n,k,p]) -- Sharpen Focus Eq. 5.

Backward, e = grad * [A > 0] / K: dF = e G, dG = e F, in one read of F and G.
Kernels: triton_kernels/_attention_pass.py (a single MAP side).
"""
from torch import Tensor

from ._attention_pass import Side, attention_grads, attention_maps
from ._common import MAP, register


def _side(features, grads):
    return Side(grads, MAP, 1.0 / max(features.shape[1], 1))


@register
def pixel_attention(features: Tensor, grads: Tensor) -> Tensor:
    """ReLU(mean_k G F) per pixel: N x H x W, float32."""
    return attention_maps(features, [_side(features, grads)])[0]


@register
def pixel_attention_backward(grad: Tensor, features: Tensor, grads: Tensor,
                             attn: Tensor) -> tuple[Tensor, Tensor]:
    """(dL/dF, dL/dG) for grad = dL/dA; attn is the forward output."""
    dfeat, (dgrads,) = attention_grads(features, [_side(features, grads)], [grad], [attn])
    return dfeat, dgrads
