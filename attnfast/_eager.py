"""The ``torch`` backend: the eager reference (``attnfast.reference``) behind the kernel interface.

Every op of ``attnfast._schema`` under its own name, with the kernel's arguments in the kernel's
order and conventions (small tensors contiguous in the accumulation dtype, ``soft_mask``'s
``out_h, out_w``, ``sharpen_focus_loss``'s integer ``kind``), so that ``attnfast.ops`` calls
``ns.<op>(...)`` the same way for every backend. The forwards are plain differentiable PyTorch:
autograd of them *is* the reference backward, and the ``torch`` backend uses nothing else.

The ``<op>_backward`` entries follow the backward contract of the compiled kernels (arguments
``(*grads of the visible outputs, *tensor inputs, *saved outputs, *non-tensor inputs)``, one
gradient per tensor input, in the input's dtype and memory layout) and compute it with
``torch.autograd.grad`` of the forward (the saved outputs are not needed there); tests use them to
check every backend's backward the same way. Hidden outputs (``_schema.Op.hidden``) are
computed without a graph.
"""
from __future__ import annotations

import torch

from . import reference
from ._schema import KIND_NAMES, LOSS_CODES, OPS, map_form, positive_weights

_LOSS_NAMES = {code: name for name, code in LOSS_CODES.items()}


def _backward(name: str):
    """``<name>_backward`` of the kernel interface, by autograd of the forward ``<name>``."""
    op = OPS[name]
    n_grad, n_in, n_saved = len(op.grad_names), len(op.tensor_inputs), len(op.saved)
    diff = [n in op.differentiable for n in op.tensor_inputs]

    def backward(*args):
        grads, ins = args[:n_grad], args[n_grad:n_grad + n_in]
        options = args[n_grad + n_in + n_saved:]
        with torch.enable_grad():
            xs = [t.detach().requires_grad_() if d else t for t, d in zip(ins, diff)]
            wrt = [x for x, d in zip(xs, diff) if d]
            outs = globals()[name](*xs, *options)
            outs = outs if isinstance(outs, tuple) else (outs,)
            used = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
            got = torch.autograd.grad([o for o, _ in used], wrt, [g for _, g in used],
                                      allow_unused=True) if used else [None] * len(wrt)
        result = tuple(_like(g, x) for g, x in zip(got, wrt))
        return result if len(result) > 1 else result[0]

    backward.__name__ = backward.__qualname__ = f"{name}_backward"
    return backward


def _like(g, x):
    """Gradient ``g`` of input ``x`` in ``x``'s dtype and memory layout (zeros when unused)."""
    if g is None:
        return torch.zeros_like(x)
    if g.dtype != x.dtype or g.stride() != x.stride():
        return torch.empty_like(x).copy_(g)
    return g


# --------------------------------------------------------------------------------- the ops
channel_weights = reference.channel_weights
channel_weights_backward = _backward("channel_weights")

weighted_attention = reference.weighted_attention
weighted_attention_backward = _backward("weighted_attention")

pixel_attention = reference.pixel_attention
pixel_attention_backward = _backward("pixel_attention")

normalize_attention = reference.normalize_attention
normalize_attention_backward = _backward("normalize_attention")


def soft_mask(attn, sigma, omega, out_h, out_w, eps):
    return reference.soft_mask(attn, sigma, omega, (out_h, out_w), eps)


soft_mask_backward = _backward("soft_mask")

soft_iou = reference.soft_iou
soft_iou_backward = _backward("soft_iou")


def attention_consistency(attn, mask, alpha, eps):
    return reference.attention_consistency(attn, mask, alpha, eps)


attention_consistency_backward = _backward("attention_consistency")


def sharpen_focus_loss(inner_features, inner_grads_target, inner_grads_confuser,
                       last_features, last_grads_target, last_grads_confuser,
                       kind, sigma, omega, alpha, normalize, mask_grad, eps):
    """The three parts, then the hidden maps and weights of each layer (``_schema``)."""
    attention = KIND_NAMES[kind]
    layers = [[reference.layer_attention(f, g, attention, weights=True) for g in gs]
              for f, gs in ((inner_features, (inner_grads_target, inner_grads_confuser)),
                            (last_features, (last_grads_target, last_grads_confuser)))]
    parts = reference.sharpen_focus_from_maps(
        *(a for layer in layers for a, _ in layer), sigma=sigma, omega=omega, alpha=alpha,
        normalize=normalize, mask_grad=mask_grad, eps=eps)
    maps = [torch.stack([a.detach() for a, _ in layer]) for layer in layers]
    weights = [torch.stack([w.detach() for _, w in layer])
               if positive_weights(attention) is not None else
               layer[0][0].new_empty((2, layer[0][0].shape[0], 0)) for layer in layers]
    return (*parts, *maps, *weights)


sharpen_focus_loss_backward = _backward("sharpen_focus_loss")

channel_spatial_attention = reference.channel_spatial_attention
channel_spatial_attention_backward = _backward("channel_spatial_attention")

ggam_loss = reference.ggam_loss
ggam_loss_backward = _backward("ggam_loss")


def guidance_loss(features, grads, boxes, rows, coverage, cell_weights, kind, loss, image_h,
                  image_w, eps):
    """Per-row losses, then the hidden maps and the channel kinds' weights (``_schema``)."""
    attention = KIND_NAMES[kind]
    if coverage.numel() == 0:
        coverage = reference.box_coverage(boxes, (image_h, image_w), features.shape[-2:])
    a, w = reference.guidance_map(features, grads, rows, attention, weights=True)
    out = reference.guidance_from_maps(a, coverage, _LOSS_NAMES[loss], eps,
                                       cell_weights if cell_weights.numel() else None)
    channel = map_form(attention) in ("positive", "signed")  # the kernels keep these weights
    w = w.detach() if channel else a.new_empty((a.shape[0], 0))
    return out, a.detach(), w


guidance_loss_backward = _backward("guidance_loss")
