"""channel_weights: w[n,k] = mean_p ReLU(G[n,k,p]) (positive) or mean_p G[n,k,p] (Grad-CAM).

Backward: dG[n,k,p] = grad[n,k] / HW * ([G > 0] if positive else 1) -- ReLU'(0) = 0; the
Grad-CAM backward never reads G. Kernels: triton_kernels/_weights_pass.py.
"""
from torch import Tensor

from ._common import register
from ._weights_pass import channel_means, spread_weights


@register
def channel_weights(grads: Tensor, positive: bool) -> Tensor:
    """N x K channel means of ReLU(G) (positive) or G."""
    return channel_means(grads, positive)


@register
def channel_weights_backward(grad: Tensor, grads: Tensor, positive: bool) -> Tensor:
    """dL/dG for grad = dL/dw (N x K): G's dtype and memory layout."""
    n, k, h, w = grads.shape
    return spread_weights(grad, grads, positive, 1.0 / max(h * w, 1))
