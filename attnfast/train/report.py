"""What a run reports: the metrics files of each method (``metrics.json``, ``metrics.csv``),
its summary, the per-epoch log line, and the comparison table with ``summary.json``."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .checkpoints import atomic_write


def write_metrics(run_dir, history, summary):
    """``metrics.json`` (every epoch's row and the summary) and ``metrics.csv`` (one row per
    epoch) in ``run_dir``, each written atomically."""
    text = json.dumps({"epochs": history, "summary": summary}, indent=2).encode()
    atomic_write(run_dir / "metrics.json", lambda f: f.write(text))
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for row in history for k in row))
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write(run_dir / "metrics.csv", lambda f: f.write(buf.getvalue().encode()))


def summarize(method, history, run_dir, data):
    """The last epoch's test metrics and the training throughput over all epochs."""
    last = history[-1] if history else {}
    n = sum(r["train_images"] for r in history)
    secs = sum(r["train_time_s"] for r in history)
    acc = ("test_mAP", "test_AUC") if data.multilabel else ("test_top1", "test_top5")
    return {"method": method, "epochs": len(history), "run_dir": str(run_dir),
            **{k[5:]: last.get(k) for k in (*acc, "test_inner_iou", "test_last_iou",
                                             "test_consistency")},
            "images_per_s": n / secs if secs else None, "train_time_s": secs}


def epoch_line(desc, row, multilabel):
    """One log line per epoch: training losses and speed, test metrics."""
    acc = (f"mAP {row['test_mAP']:.2f} AUC {row['test_AUC']:.2f}" if multilabel
           else f"top1 {row['test_top1']:.2f} top5 {row['test_top5']:.2f}")
    return (f"{desc}: loss {row['train_loss']:.4f} (cls {row['train_classification_loss']:.4f}, "
            f"attn {row['train_attention_loss']:.4f}) {row['train_images_per_s']:.0f} img/s | "
            f"test {acc} IoU inner/last {row['test_inner_iou']:.3f}/{row['test_last_iou']:.3f} "
            f"consistency {row['test_consistency']:.3f}")


# ----------------------------------------------------------------------------- report

def table(summaries, multilabel):
    """Plain-text comparison table of the runs."""
    acc = ("mAP", "AUC") if multilabel else ("top1", "top5")
    head = ("method", *(f"{a} %" for a in acc), "IoU inner", "IoU last", "consistency", "img/s",
            "train s")
    rows = [head]
    for s in summaries:
        def f(v, fmt):
            return "-" if v is None else format(v, fmt)
        rows.append((s["method"], f(s[acc[0]], ".2f"), f(s[acc[1]], ".2f"),
                     f(s["inner_iou"], ".4f"), f(s["last_iou"], ".4f"),
                     f(s["consistency"], ".4f"), f(s["images_per_s"], ".0f"),
                     f(s["train_time_s"], ".1f")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def final_report(out, results, multilabel, pictures):
    """``<out>/summary.json`` and the comparison table with its legend on stdout."""
    out = Path(out)
    clean = [{k: v for k, v in s.items() if not k.startswith("_")} for s in results]
    atomic_write(out / "summary.json", lambda f: f.write(json.dumps(clean, indent=2).encode()))
    print("\n" + table(clean, multilabel))
    print("IoU = mean test soft-IoU between target and confuser maps (masked as in the loss; "
          "lower = better separated); consistency = L_ac (lower = inner map inside the mask)")
    for p in pictures:
        print(f"picture: {p}")
    print(f"metrics: {out}/<method>/metrics.json, .csv; checkpoints: "
          f"{out}/<method>/checkpoint.pt")
