"""Evaluation metrics: top-1/top-5 (single label) or mAP and ROC AUC (multi-label), the means of
the Sharpen Focus parts that measure attention separability on every method, and the
localization of the attention maps where boxes are known (:mod:`.localize`)."""
from __future__ import annotations

import torch

from .localize import localization


def average_precision(scores, targets):
    """Per-class AP (mean precision at the rank of each positive), mean over classes with a
    positive; scores, targets: N x C."""
    aps = []
    for c in range(scores.shape[1]):
        t = targets[scores[:, c].argsort(descending=True), c]
        if t.sum() == 0:
            continue
        hits = t.cumsum(0)
        precision = hits / torch.arange(1, len(t) + 1)
        aps.append((precision * t).sum() / t.sum())
    return float(torch.stack(aps).mean()) if aps else float("nan")


def roc_auc(scores, targets):
    """Per-class ROC AUC by the rank-sum (ties share their average rank), mean over classes with
    both positives and negatives."""
    aucs = []
    for c in range(scores.shape[1]):
        s, t = scores[:, c].double(), targets[:, c] > 0.5
        npos, nneg = int(t.sum()), int((~t).sum())
        if npos == 0 or nneg == 0:
            continue
        _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
        upper = counts.cumsum(0).double()
        avg_rank = (upper - (counts.double() - 1) / 2)[inverse]
        aucs.append((avg_rank[t].sum() - npos * (npos + 1) / 2) / (npos * nneg))
    return float(torch.stack(aucs).mean()) if aucs else float("nan")


LAYERS = ("inner", "last")


def evaluate(probe, loader, data, ctx, dst):
    """Metrics of the model in eval mode over ``loader`` (one split): top-1/top-5 % (or mAP/AUC %
    for multi-label), the means of the Sharpen Focus parts measured by ``probe`` (``inner_iou``,
    ``last_iou``: masked soft-IoU target vs confuser; ``consistency``: L_ac) and, when every
    sample carries one box (``data.one_box``), the localization of :mod:`.localize` at both
    layers: ``{layer}_energy`` and ``{layer}_pointing`` of the target map,
    ``{layer}_confuser_energy`` of the confuser map.
    Every metric is NaN when an image's logits or maps hold a NaN (NaN in, NaN out)."""
    model = probe.model
    was = model.training
    model.eval()
    keys = ["n", "top1", "top5", "inner_iou", "last_iou", "consistency"]
    if data.one_box:
        keys += [f"{layer}_{k}" for layer in LAYERS
                 for k in ("energy", "pointing", "confuser_energy")]
    sums = dict.fromkeys(keys, 0.0)
    kept = []
    with torch.no_grad():
        for batch in loader:
            x, y = data.prepare(batch[0].to(dst.device), train=False), batch[1].to(dst.device)
            with ctx():
                step, maps = probe.measure(x, y)
            logits, parts = step.logits.float(), step.parts
            if data.multilabel:
                kept.append((logits.cpu(), y.cpu()))
            else:
                top = logits.topk(min(5, logits.shape[1]), dim=1).indices
                hit = (top == y[:, None]).double()
                nan = logits.isnan().any(1)  # no prediction: the image's hits are NaN
                sums["top1"] += hit[:, 0].masked_fill(nan, float("nan")).sum().item()
                sums["top5"] += hit.amax(1).masked_fill(nan, float("nan")).sum().item()
            sums["n"] += len(x)
            for k, p in zip(("inner_iou", "last_iou", "consistency"), parts[1:]):
                sums[k] += p.double().sum().item()
            if data.one_box:
                for layer in LAYERS:
                    energy, pointing = localization(maps[f"{layer}_target"], batch[2],
                                                    x.shape[-2:])
                    other, _ = localization(maps[f"{layer}_confuser"], batch[2], x.shape[-2:])
                    sums[f"{layer}_energy"] += energy.double().sum().item()
                    sums[f"{layer}_pointing"] += pointing.double().sum().item()
                    sums[f"{layer}_confuser_energy"] += other.double().sum().item()
    model.train(was)
    total = dst.sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
    sums = dict(zip(keys, total.tolist()))
    n = max(sums.pop("n"), 1)
    out = {}
    if data.multilabel:
        pairs = [p for part in dst.gather(kept) for p in part]
        scores, targets = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        out.update(mAP=100 * average_precision(scores, targets), AUC=100 * roc_auc(scores, targets))
    else:
        out.update(top1=100 * sums.pop("top1") / n, top5=100 * sums.pop("top5") / n)
    sums.pop("top1", None)
    sums.pop("top5", None)
    out.update({k: v / n for k, v in sums.items()})
    return out
