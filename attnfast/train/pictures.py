"""Pictures of class attention maps: test images with the maps of their top-5 classes, the true
class marked, one panel per model side by side (baseline and supervised), as in Sharpen Focus
Fig. 2 / Fig. 8.

Each map is the raw attention of one class at a layer (``class_attention_maps``), bilinearly
resized to the image and divided by its own max, drawn over the grey image. Uses matplotlib's
object API with the Agg canvas (no pyplot, no global backend change, no display needed): the
figure itself is :func:`attnfast.viz.attention_figure`.

:func:`attention_pictures` is the trainer's step: ``attention.png`` per run and
``comparison.png`` with all runs side by side.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..capture import class_attention_maps
from ..viz import TopMaps, attention_figure

__all__ = ["TopMaps", "top_class_maps", "attention_figure", "attention_pictures"]


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
    boxes = torch.stack([split[i][2] for i in idx]) if data.one_box else None
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
                  "true class in green" + ("; object box in white" if data.one_box else ""),
            boxes=boxes))
    return written
