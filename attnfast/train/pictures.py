"""Pictures of class attention maps: test images with the maps of their top-5 classes, the true
class marked, one panel per model side by side (baseline and supervised), as in Sharpen Focus
Fig. 2 / Fig. 8.

Each map is the raw attention of one class at a layer (``class_attention_maps``), bilinearly
resized to the image and divided by its own max, drawn over the grey image. Uses matplotlib's
object API with the Agg canvas (no pyplot, no global backend change, no display needed).

:func:`attention_pictures` is the trainer's step: ``attention.png`` per run and
``comparison.png`` with all runs side by side.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as nnf

from ..capture import class_attention_maps

__all__ = ["TopMaps", "top_class_maps", "attention_figure", "attention_pictures"]


class TopMaps(NamedTuple):
    """Per image: the k highest-scoring classes (N x k), their probabilities, their maps
    (N x k x h x w)."""
    classes: torch.Tensor
    probs: torch.Tensor
    maps: torch.Tensor


def top_class_maps(model, layer, images, k=5, attention="pixel", multilabel=False) -> TopMaps:
    """Maps at ``layer`` of the k classes the model scores highest (softmax, or sigmoid when
    ``multilabel``) for each image."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(images).float()
        probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)
        p, classes = probs.topk(min(k, probs.shape[1]), dim=1)
        _, maps = class_attention_maps(model, layer, images, classes, attention)
    finally:
        model.train(was_training)
    return TopMaps(classes.cpu(), p.cpu(), maps.float().cpu())


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


def attention_pictures(cfg, data, results, dst):
    """attention.png per run and comparison.png with all runs side by side (rank 0), on images
    of the evaluation split."""
    k = cfg["pictures"]
    if not k or not dst.main:
        return []
    split = data.split(cfg["eval_split"])
    idx, seen = [], set()
    for i in range(len(split)):
        y = split[i][1]
        key = tuple(y.tolist()) if data.multilabel else int(y)
        if key not in seen:
            seen.add(key)
            idx.append(i)
        if len(idx) == k:
            break
    x = torch.stack([split[i][0] for i in idx]).to(dst.device)
    y = torch.stack([torch.as_tensor(split[i][1]) for i in idx])
    boxes = torch.stack([split[i][2] for i in idx]) if data.boxes else None
    x = data.prepare(x, train=False)
    shown = data.unnormalize(x)
    panels, written = {}, []
    for s in results:
        panels[s["method"]] = top_class_maps(s["_model"], s["_last"], x, 5, cfg["attention"],
                                             data.multilabel)
        written.append(attention_figure(Path(s["run_dir"]) / "attention.png", shown, y,
                                        data.class_names, {s["method"]: panels[s["method"]]},
                                        boxes=boxes))
    if len(panels) > 1:
        written.append(attention_figure(
            Path(cfg["out"]) / "comparison.png", shown, y, data.class_names, panels,
            title=f"top-5 class attention ({cfg['attention']}, {results[0]['_last']}); "
                  "true class in green" + ("; object box in white" if data.boxes else ""),
            boxes=boxes))
    return written
