"""Arguments for every op of the kernel interface (attnfast._schema) and for its backward, in a
given dtype and memory layout: for checks that look at what a kernel is handed or returns (fake
kernels, Triton ahead-of-time compiles), not at values.

Big N x K x H x W tensors take the dtype and layout asked for; everything small (maps, weights,
2-D grads, per-sample values) is contiguous float32, as the interface says. ``cases`` also walks
the options that pick different kernel variants: ``positive``, the three ``kind`` codes,
``normalize`` and ``mask_grad``, resized and same-size masks, soft-IoU with and without a mask,
guidance_loss's kinds x losses with boxes or a coverage tensor.
"""
from __future__ import annotations

import torch

from attnfast._schema import OPS

EPS = 1e-6


def cases(dtype=torch.float32, layout="nchw", n=2, k=3, hw=(4, 5), last=(2, 3), device="cpu"):
    """(op name, forward arguments) pairs covering every op and its kernel-selecting options."""
    gen = torch.Generator().manual_seed(0)

    def big(k_, h, w, positive=False):
        t = torch.randn(n, k_, h, w, generator=gen)
        t = (t.abs() if positive else t).to(device=device, dtype=dtype)
        return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t

    def small(*shape, positive=False):
        t = torch.rand(*shape, generator=gen) if positive else torch.randn(*shape, generator=gen)
        return t.to(device)

    (h, w), (hl, wl) = hw, last
    f, g, g2 = big(k, h, w), big(k, h, w), big(k, h, w)
    fl, gl, gl2 = big(k + 1, hl, wl), big(k + 1, hl, wl), big(k + 1, hl, wl)
    a, b, m = (small(n, h, w, positive=True) for _ in range(3))
    wts, s = small(n, k), small(n, k, positive=True)
    out = [("channel_weights", (g, True)), ("channel_weights", (g, False)),
           ("weighted_attention", (f, wts)), ("pixel_attention", (f, g)),
           ("normalize_attention", (a, EPS)),
           ("soft_mask", (a, 0.55, 100.0, h, w, EPS)),
           ("soft_mask", (a, 0.55, 100.0, 2 * h + 1, w + 2, EPS)),
           ("soft_iou", (a, b, m, EPS)), ("soft_iou", (a, b, small(0), EPS)),
           ("attention_consistency", (a, m, 1.0, EPS)),
           ("channel_spatial_attention", (big(k, h, w, positive=True), s, EPS)),
           ("ggam_loss", (s, wts, EPS))]
    for kind in (0, 1, 2):
        for normalize, mask_grad in ((True, True), (False, False)):
            out.append(("sharpen_focus_loss", (f, g, g2, fl, gl, gl2, kind, 0.55, 100.0, 1.0,
                                               normalize, mask_grad, EPS)))
    out.append(("sharpen_focus_loss", (f, g, g2, fl, gl, small(n, k + 1), 1, 0.55, 100.0, 1.0,
                                       True, False, EPS)))  # a 2-D (per-channel) last gradient
    return out + _guidance_cases(f, g, small, n, k, h, w, device)


def _guidance_cases(f, g, small, n, k, h, w, device):
    """guidance_loss: every kind x loss, coverage from boxes or given, 4-D and R x K grads."""
    rows = torch.arange(n - 1, -1, -1, device=device)            # rows in reverse image order
    boxes = torch.tensor([[[0.5, 1.0, 2.5 * h, 3.0 * w], [h, 0.0, 4.0 * h, w]]] * n,
                         device=device)
    cov, empty = small(n, h, w, positive=True), small(0)
    image = (4.0 * h, 4.0 * w)
    out = [("guidance_loss", (f, g, boxes, rows, empty if (kind + loss) % 2 else cov, kind, loss,
                              *image, EPS)) for kind in range(4) for loss in range(4)]
    for kind in (0, 1):  # R x K grads: pixel (plain weights), channel (gated by ReLU'(g))
        out.append(("guidance_loss", (f, small(n, k), boxes, rows, empty, kind, 1, *image, EPS)))
    return out


def backward_args(name, args, outputs):
    """Arguments of ``<name>_backward`` after ``outputs = <name>(*args)``: a random gradient like
    each visible output, the tensor inputs, the saved outputs, the non-tensor inputs."""
    op = OPS[name]
    outs = outputs if isinstance(outputs, tuple) else (outputs,)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=gen).to(o).contiguous(memory_format=_format(o))
             for o in outs[:len(op.visible)]]
    tensors = [x for x in args if isinstance(x, torch.Tensor)]
    options = [x for x in args if not isinstance(x, torch.Tensor)]
    return (*grads, *tensors, *(outs[i] for i in op.saved_index), *options)


def _format(t):
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and \
            not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
