"""Triton backend of attnfast: every op of attnfast/_schema.py SCHEMAS as a
``torch.library.triton_op`` in namespace ``attnfast_triton`` (importing this package registers
them, one module per op name; the four small map ops have one module each as well). Kernels and
launchers only: attnfast.ops validates arguments and registers autograd.
"""
from . import (attention_consistency, channel_spatial_attention, channel_weights, ggam_loss,
               guidance_loss, normalize_attention, pixel_attention, sharpen_focus_loss,
               soft_iou, soft_mask, weighted_attention)

__all__ = ["attention_consistency", "channel_spatial_attention", "channel_weights", "ggam_loss",
           "guidance_loss", "normalize_attention", "pixel_attention", "sharpen_focus_loss",
           "soft_iou", "soft_mask", "weighted_attention"]
