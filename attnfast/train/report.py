"""What a run reports: the metrics files of each method (``metrics.json``, ``metrics.csv``),
its summary, the per-epoch log line, and over seeds the comparison table (mean ± sd) with
``summary.json`` and ``summary.md``."""
from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from .checkpoints import atomic_write

# (key, column, format) of the comparison table, in order; a column shows only when some run
# has the metric (localization needs boxes, mAP/AUC multi-label data).
COLUMNS = (("top1", "top-1 %", ".2f"), ("mAP", "mAP %", ".2f"), ("AUC", "AUC %", ".2f"),
           ("inner_energy", "EPG inner", ".3f"), ("last_energy", "EPG last", ".3f"),
           ("inner_pointing", "PG inner", ".3f"), ("last_pointing", "PG last", ".3f"),
           ("inner_confuser_energy", "confuser EPG inner", ".3f"),
           ("last_confuser_energy", "confuser EPG last", ".3f"),
           ("inner_iou", "sIoU inner", ".3f"), ("last_iou", "sIoU last", ".3f"),
           ("consistency", "L_ac", ".3f"), ("images_per_s", "img/s", ".0f"))

LOCALIZATION_LEGEND = (
    "EPG = energy pointing game: share of the target map's positive mass inside the object's "
    "box; PG = pointing game: the target map's maximum inside the box; confuser EPG = the same "
    "share for the confuser's map (maps bilinearly upsampled to the image, align_corners=False). ")
LEGEND = ("sIoU = soft-IoU of the target and confuser maps, masked as in the loss (lower = better "
          "separated); L_ac = consistency term (lower = inner map inside the last layer's mask); "
          "img/s = training images per second. mean ± sd (sample sd) over seeds; Δ = per-seed "
          "difference to the baseline.")


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


def summarize(method, history, run_dir, split="test"):
    """The last evaluation's metrics (on ``split``) and the training throughput over all epochs."""
    done = [r for r in history if f"{split}_top1" in r or f"{split}_mAP" in r]
    last = done[-1] if done else {}
    n = sum(r["train_images"] for r in history)
    secs = sum(r["train_time_s"] for r in history)
    return {"method": method, "epochs": len(history), "run_dir": str(run_dir), "split": split,
            **{k[len(split) + 1:]: v for k, v in last.items() if k.startswith(f"{split}_")},
            "images_per_s": n / secs if secs else None, "train_time_s": secs}


def epoch_line(desc, row, split="test"):
    """One log line per epoch: training losses and speed, and the metrics when evaluated."""
    line = (f"{desc}: loss {row['train_loss']:.4f} (cls {row['train_classification_loss']:.4f}, "
            f"attn {row['train_attention_loss']:.4f}) {row['train_images_per_s']:.0f} img/s")
    m = {k[len(split) + 1:]: v for k, v in row.items() if k.startswith(f"{split}_")}
    if not m:
        return line
    acc = (f"mAP {m['mAP']:.2f} AUC {m['AUC']:.2f}" if "mAP" in m
           else f"top1 {m['top1']:.2f} top5 {m['top5']:.2f}")
    loc = (f" EPG inner/last {m['inner_energy']:.3f}/{m['last_energy']:.3f}"
           if "inner_energy" in m else "")
    return (f"{line} | {split} {acc}{loc} sIoU inner/last {m['inner_iou']:.3f}/"
            f"{m['last_iou']:.3f} L_ac {m['consistency']:.3f}")


# ----------------------------------------------------------------------------- over seeds

def mean_sd(values):
    """{"mean", "sd" (sample standard deviation; None for one value), "values"}."""
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals),
            "sd": statistics.stdev(vals) if len(vals) > 1 else None, "values": vals}


def aggregate(runs):
    """``runs``: one list of method summaries per seed (same methods in each). Returns
    (per method: mean ± sd of every table metric; per non-baseline method: mean ± sd of its
    per-seed difference to the baseline)."""
    methods = [s["method"] for s in runs[0]]
    keys = [k for k, _, _ in COLUMNS if any(s.get(k) is not None for r in runs for s in r)]
    by = {m: [next(s for s in r if s["method"] == m) for r in runs] for m in methods}
    rows = [{"method": m, "seeds": len(runs),
             **{k: mean_sd([s[k] for s in by[m]]) for k in keys}} for m in methods]
    diffs = []
    if "baseline" in by:
        for m in methods:
            if m != "baseline":
                diffs.append({"method": f"Δ {m} − baseline", "seeds": len(runs),
                              **{k: mean_sd([a[k] - b[k] for a, b in zip(by[m], by["baseline"])])
                                 for k in keys}})
    return rows, diffs


def _cell(stat, fmt):
    if stat["sd"] is None:
        return format(stat["mean"], fmt)
    return f"{format(stat['mean'], fmt)} ± {format(stat['sd'], fmt)}"


def markdown_table(rows):
    """Markdown table of :func:`aggregate` rows (mean ± sd cells)."""
    cols = [(k, name, fmt) for k, name, fmt in COLUMNS if k in rows[0]]
    lines = ["| method | seeds | " + " | ".join(name for _, name, _ in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seeds']} | "
                     + " | ".join(_cell(r[k], fmt) for k, _, fmt in cols) + " |")
    return "\n".join(lines)


def final_report(out, runs, seeds, split, pictures, config=None):
    """``<out>/summary.json`` (every seed's summaries, the aggregate and the differences) and
    ``<out>/summary.md`` (the table and its legend); the table on stdout."""
    out = Path(out)
    clean = [[{k: v for k, v in s.items() if not k.startswith("_")} for s in r] for r in runs]
    rows, diffs = aggregate(clean)
    doc = {"split": split, "seeds": list(seeds), "aggregate": rows, "differences": diffs,
           "runs": clean, "config": config or {}}
    atomic_write(out / "summary.json", lambda f: f.write(json.dumps(doc, indent=2).encode()))
    text = (f"{split} split, seeds {', '.join(map(str, seeds))}\n\n"
            f"{markdown_table(rows + diffs)}\n\n"
            f"{LOCALIZATION_LEGEND if 'last_energy' in rows[0] else ''}{LEGEND}\n")
    atomic_write(out / "summary.md", lambda f: f.write(text.encode()))
    print("\n" + text)
    for p in pictures:
        print(f"picture: {p}")
    print(f"table: {out}/summary.md, {out}/summary.json; per run: <method>/metrics.json, .csv, "
          "checkpoint.pt")
