"""attnfast: fused kernels for gradient-based attention supervision (Sharpen Focus, GGAM).

Every op has an eager reference (``attnfast.reference``), C++ CPU, CUDA C++ and Triton kernels
with hand-written backward, registered as torch custom ops; ``set_backend`` / ``use_backend``
choose among them (``"auto"`` by default).
"""
from .backend import available_backends, get_backend, set_backend, use_backend
from .ops import (SharpenFocusOutput, attention_consistency, channel_attention,
                  channel_spatial_attention, channel_weights, ggam_loss, normalize_attention,
                  pixel_attention, sharpen_focus_loss, soft_iou, soft_mask, weighted_attention)
from .ggam import GGAM
from .sharpen_focus import SharpenFocus

__version__ = "0.1.0"

__all__ = [
    "available_backends", "get_backend", "set_backend", "use_backend",
    "SharpenFocusOutput", "attention_consistency", "channel_attention",
    "channel_spatial_attention", "channel_weights", "ggam_loss", "normalize_attention",
    "pixel_attention", "sharpen_focus_loss", "soft_iou", "soft_mask", "weighted_attention",
    "SharpenFocus", "GGAM",
]
