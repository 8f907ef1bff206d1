"""Figures of class attention maps over images (matplotlib, object API with the Agg canvas: no
pyplot, no global backend change, no display needed): :func:`attention_figure`, the trainer's
and CAM's picture, and :func:`save_overlay`, CAM's entry point, which first brings normalized
images back to [0, 1]."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as nnf

__all__ = ["TopMaps", "attention_figure", "displayable", "save_overlay"]


class TopMaps(NamedTuple):
    """Per image: the k highest-scoring classes (N x k), their probabilities, their maps
    (N x k x h x w)."""
    classes: torch.Tensor
    probs: torch.Tensor
    maps: torch.Tensor


def displayable(images, mean=None, std=None, denormalize=None):
    """``images`` (N x C x H x W) as float32 in [0, 1] for drawing: ``denormalize(images)``, or
    ``images * std + mean`` per channel, or as they are; values outside [0, 1] are clipped with
    a warning that says by how much (an image normalized for the model and not brought back
    would otherwise be drawn wrong without a word)."""
    x = images.detach().float().cpu()
    if denormalize is not None and (mean is not None or std is not None):
        raise ValueError("give mean/std or denormalize, not both")
    if denormalize is not None:
        x = denormalize(x).float()
    elif mean is not None or std is not None:
        shape = (1, -1, 1, 1)
        m = torch.as_tensor(0.0 if mean is None else mean, dtype=torch.float32).reshape(shape)
        s = torch.as_tensor(1.0 if std is None else std, dtype=torch.float32).reshape(shape)
        x = x * s + m
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            warnings.warn(f"image values span [{lo:.3g}, {hi:.3g}], outside [0, 1]; they are "
                          "clipped. Pass mean= and std= (or denormalize=) of the images' "
                          "normalization", stacklevel=3)
    return x.clamp(0, 1)


def save_overlay(path, images, classes, probs, maps, *, class_names=None, targets=None,
                 title=None, mean=None, std=None, denormalize=None):
    """A PNG at ``path`` of the N x T ``maps`` of ``classes`` (with probabilities ``probs``)
    over ``images`` made :func:`displayable` (``mean`` / ``std`` or ``denormalize``): one row
    per image, the image then its T maps; ``targets`` frames the true class. Returns the path."""
    shown = displayable(images, mean, std, denormalize)
    top = TopMaps(classes.cpu(), probs.detach().float().cpu(), maps.detach().float().cpu())
    if class_names is None:
        class_names = [str(c) for c in range(int(classes.max()) + 1 if classes.numel() else 0)]
    return attention_figure(path, shown, targets, class_names, {"": top}, title=title)


def _is_true(target, c):
    return bool(target[c] > 0.5) if target.dim() == 1 else int(target) == c


def _true_names(target, class_names):
    if target.dim() == 1:
        return ", ".join(class_names[i] for i in (target > 0.5).nonzero()[:, 0].tolist())
    return class_names[int(target)]


def attention_figure(path, images, targets, class_names, panels, title=None, boxes=None):
    """Write a PNG: one row per image; the image, then for each panel (name -> TopMaps) its k maps.

    ``images``: N x C x H x W in [0, 1]; ``targets``: N indices or N x C multi-hot (or None). True
    classes get a green frame and title. ``boxes``: N x 4 object boxes (y0, x0, y1, x1), half-open,
    outlined in white on the image and on every map. Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    def outline(ax, r):
        if boxes is not None:
            y0, x0, y1, x1 = (int(v) for v in boxes[r])
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor="white", linewidth=1))

    images = images.detach().float().cpu()
    targets = None if targets is None else targets.detach().cpu()
    n, _, h, w = images.shape
    grey = images.mean(1)
    ks = [tm.classes.shape[1] for tm in panels.values()]
    cols = 1 + sum(ks)
    fig = Figure(figsize=(1.25 * cols, 1.45 * n + (0.5 if title else 0.2)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, cols, squeeze=False)
    for r in range(n):
        ax = axes[r][0]
        ax.imshow(images[r].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        if targets is not None:
            ax.set_title(f"true: {_true_names(targets[r], class_names)}", fontsize=7)
        outline(ax, r)
        col = 1
        for name, tm in panels.items():
            up = nnf.interpolate(tm.maps[r][:, None], size=(h, w), mode="bilinear",
                                 align_corners=False)[:, 0]
            up = up / up.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
            for j in range(tm.classes.shape[1]):
                c = int(tm.classes[r, j])
                ax = axes[r][col]
                ax.imshow(grey[r].numpy(), cmap="gray", vmin=0, vmax=1)
                ax.imshow(up[j].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
                outline(ax, r)
                hit = targets is not None and _is_true(targets[r], c)
                ax.set_title(f"{class_names[c]} {float(tm.probs[r, j]):.2f}", fontsize=7,
                             color="green" if hit else "black", fontweight="bold" if hit else None)
                for spine in ax.spines.values():
                    spine.set_visible(hit)
                    spine.set_edgecolor("lime")
                    spine.set_linewidth(3)
                if r == 0 and j == 0:
                    ax.text(0, 1.35, name, transform=ax.transAxes, fontsize=9, fontweight="bold")
                col += 1
    for row in axes:
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return Path(path)
