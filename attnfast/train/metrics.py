"""Test metrics: top-1/top-5 (single label) or mAP and ROC AUC (multi-label), and the means of
the Sharpen Focus parts that measure attention separability on every method."""
from __future__ import annotations

import torch


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


def evaluate(probe, loader, data, ctx, dst):
    """Test metrics: top-1/top-5 % (or mAP/AUC % for multi-label) and the means of the
    Sharpen Focus parts (inner/last masked soft-IoU target vs confuser, consistency)."""
    model = probe.model
    was = model.training
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64)
    kept = []
    with torch.no_grad():
        for x, y in loader:
            x, y = data.prepare(x.to(dst.device), train=False), y.to(dst.device)
            with ctx():
                step = probe(x, y)
            logits, parts = step.logits.float(), step.parts
            if data.multilabel:
                kept.append((logits.cpu(), y.cpu()))
            else:
                top = logits.topk(min(5, logits.shape[1]), dim=1).indices
                hit = top == y[:, None]
                sums[1] += hit[:, 0].sum().item()
                sums[2] += hit.any(1).sum().item()
            sums[0] += len(x)
            sums[3:] += torch.stack([p.double().sum() for p in parts[1:]]).cpu()
    model.train(was)
    sums = dst.sum(sums)
    n = max(sums[0].item(), 1)
    out = {}
    if data.multilabel:
        pairs = [p for part in dst.gather(kept) for p in part]
        scores, targets = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        out.update(mAP=100 * average_precision(scores, targets), AUC=100 * roc_auc(scores, targets))
    else:
        out.update(top1=100 * sums[1].item() / n, top5=100 * sums[2].item() / n)
    out.update(inner_iou=sums[3].item() / n, last_iou=sums[4].item() / n,
               consistency=sums[5].item() / n)
    return out

