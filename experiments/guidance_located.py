"""Guidance from boxes (Rao et al. 2023) on located-digits and located-digits-cue: the tables of
docs/METHOD.md "Guidance from boxes", by the trainer (``attnfast.train``) alone.

    python experiments/guidance_located.py sweep            # validation: choose the weight
    python experiments/guidance_located.py test --weight W  # test: 5 seeds, every arm
    python experiments/guidance_located.py table            # the README's table, from the runs

The rule, written before any run: the guidance weight is the one of {0.1, 1, 10} (energy loss,
Grad-CAM maps, last layer, boxes for every training image) with the highest mean validation
top-1 over seeds 0-1 on located-digits; every guidance arm of the test runs uses it, on both data
sets. Sharpen Focus runs with the recipe's settings (chosen on validation, docs/METHOD.md).
Each arm is one trainer invocation; the seeds are paired (seed s of every arm starts from the
same initialization and batch order), so Δ is the per-seed difference to the baseline.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from attnfast.train.cli import main as train

METRICS = (("top1", "top-1 %", 2), ("inner_energy", "EPG inner", 3), ("last_energy", "EPG last", 3),
           ("inner_pointing", "PG inner", 3), ("last_pointing", "PG last", 3))
# arm name -> trainer options (the guidance arms: which layers, share of images with boxes)
ARMS = {"baseline": ["--method", "baseline"],
        "sharpen-focus": ["--method", "sharpen-focus"]}
for layers in ("last", "inner", "both"):
    for frac in ("1.0", "0.1", "0.01"):
        ARMS[f"guidance {layers} {float(frac):.0%}"] = [
            "--method", "guidance", "--guidance-layers", layers, "--box-fraction", frac]


def run_arm(out, data, options, seeds, split, threads):
    """One trainer invocation; returns its summary.json."""
    argv = ["--data", data, "--seeds", str(seeds), "--eval-split", split, "--out", str(out),
            "--pictures", "0", "--threads", str(threads), "--no-progress",
            *options]
    if not (out / "summary.json").is_file():
        if train(argv) != 0:
            raise SystemExit(f"training failed: {' '.join(argv)}")
    return json.loads((out / "summary.json").read_text())


def per_seed(summary, method):
    (agg,) = [a for a in summary["aggregate"] if a["method"] == method]
    return {key: agg[key]["values"] for key, _, _ in METRICS}


def table(results, title):
    """Markdown: mean ± sd per arm and the paired Δ to the baseline."""
    lines = [f"### {title}", "", "| arm | " + " | ".join(h for _, h, _ in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    base = results["baseline"]
    for arm, vals in results.items():
        cells = []
        for key, _, digits in METRICS:
            v = vals[key]
            cell = f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"
            if arm != "baseline":
                d = [a - b for a, b in zip(v, base[key])]
                cell += f" (Δ {statistics.mean(d):+.{digits}f} ± {statistics.stdev(d):.{digits}f})"
            cells.append(cell)
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def readme_table(out, data):
    """The README's table (top-1, EPG last, paired Δ) of every arm whose test runs are done."""
    lines = ["| data | arm | top-1 % | Δ top-1 | EPG last | Δ EPG last | Δ EPG inner |",
             "|---|---|---|---|---|---|---|"]

    def ms(v, dg):
        return f"{statistics.mean(v):.{dg}f} ± {statistics.stdev(v):.{dg}f}"

    def delta(v, b, dg):
        d = [x - y for x, y in zip(v, b)]
        return f"{statistics.mean(d):+.{dg}f} ± {statistics.stdev(d):.{dg}f}"

    for d in data:
        base, first = None, True
        for arm, options in ARMS.items():
            f = out / "test" / d / arm.replace(" ", "_").replace("%", "pc") / "summary.json"
            if not f.is_file():
                continue
            v = per_seed(json.loads(f.read_text()), options[1])
            base = base or v
            label = "(baseline)" if arm == "baseline" else arm.removeprefix("guidance ")
            cells = [d if first else "", label, ms(v["top1"], 2)]
            first = False
            if v is base:
                cells += ["", ms(v["last_energy"], 3), "", ""]
            else:
                cells += [delta(v["top1"], base["top1"], 2), ms(v["last_energy"], 3),
                          delta(v["last_energy"], base["last_energy"], 3),
                          delta(v["inner_energy"], base["inner_energy"], 3)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("sweep", "test", "table"))
    p.add_argument("--weight", type=float, help="test: the weight the sweep chose")
    p.add_argument("--data", nargs="+", default=["located-digits", "located-digits-cue"])
    p.add_argument("--arms", nargs="+", default=list(ARMS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/guidance")
    p.add_argument("--results", default="docs/results")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.stage == "table":
        print(readme_table(out, a.data))
        return
    if a.stage == "sweep":
        results = {"baseline": per_seed(run_arm(out / "sweep" / "baseline", "located-digits",
                                                ARMS["baseline"], 2, "val", a.threads), "baseline")}
        for w in (0.1, 1.0, 10.0):
            s = run_arm(out / "sweep" / f"w{w:g}", "located-digits",
                        [*ARMS["guidance last 100%"], "--weight", str(w)], 2, "val", a.threads)
            results[f"guidance last 100% weight {w:g}"] = per_seed(s, "guidance")
        text = table(results, "Validation (located-digits, seeds 0-1): guidance weight")
        best = max((k for k in results if k != "baseline"),
                   key=lambda k: statistics.mean(results[k]["top1"]))
        text += f"\nchosen by the rule (highest mean validation top-1): **{best}**\n"
    else:
        if a.weight is None:
            raise SystemExit("test needs --weight (the sweep's choice)")
        text = ""
        for data in a.data:
            results = {}
            for arm in a.arms:
                opts = ARMS[arm] + (["--weight", str(a.weight)] if arm.startswith("guidance") else [])
                s = run_arm(out / "test" / data / arm.replace(" ", "_").replace("%", "pc"), data,
                            opts, a.seeds, "test", a.threads)
                results[arm] = per_seed(s, ARMS[arm][1])
            text += table(results, f"Test ({data}, seeds 0-{a.seeds - 1}, guidance weight "
                                   f"{a.weight:g})") + "\n"
    print(text)
    dst = Path(a.results) / (f"guidance_{a.stage}.md" if a.stage == "sweep" else
                             f"guidance_{a.stage}_{'_'.join(a.data)}.md")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(text)
    print(f"written: {dst}", file=sys.stderr)


if __name__ == "__main__":
    main()
