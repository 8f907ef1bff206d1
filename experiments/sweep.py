"""Choose the trainer's Sharpen Focus settings on the VALIDATION split of located-digits.

Each configuration is a list of trainer options on top of the located-digits recipe; the script
trains it with ``--method sharpen-focus --eval-split val --seeds N`` (the baseline once, the
same way), one trainer process per configuration, and writes the table of all finished
configurations (mean ± sd over the seeds) to ``<out>/sweep.md`` and ``<out>/sweep.json`` after
each one. A configuration whose ``summary.json`` exists is not run again, so an interrupted sweep
resumes, and a partial table is always on disk. The test split is never read.

The rule that picks the settings, fixed before the sweep ran (docs/METHOD.md): among the
configurations whose mean validation top-1 is at least the baseline's mean minus one sd, the one
with the highest mean energy pointing game (mean of the inner and last layers) above the
baseline's measured with the same kind of map (``--stage reeval`` measures the baseline's
checkpoints with channel and Grad-CAM maps); a difference under 0.005 is a tie, broken by the
higher top-1. If no configuration keeps that top-1, the one with the highest mean top-1 (the
least harm).

    python experiments/sweep.py --stage grid --jobs 2 --threads 1
    python experiments/sweep.py --stage around --base "--weight 0.3"
    python experiments/sweep.py --stage reeval
    python experiments/sweep.py --stage ggam --out runs/sweep_ggam
    python experiments/sweep.py --stage capture --base "--weight 0.1" \
        --out runs/sweep_capture

(The ggam and capture stages go to their own folders, with the grid's ``baseline`` (and for
capture its ``w0.1``) linked in, so that each table's rule compares like with like.)
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

COLUMNS = (("top1", ".2f"), ("inner_energy", ".3f"), ("last_energy", ".3f"),
           ("inner_pointing", ".3f"), ("last_pointing", ".3f"), ("inner_confuser_energy", ".3f"),
           ("last_confuser_energy", ".3f"), ("inner_iou", ".3f"), ("last_iou", ".3f"),
           ("consistency", ".3f"))


# Every configuration starts from the paper's Eq. 9 written out, so that the sweep does not depend
# on the recipe's defaults (which it is there to choose).
PAPER = ["--weight", "1", "--inner-weight", "1", "--last-weight", "1", "--consistency-weight",
         "1", "--order", "second", "--mask", "normalized", "--ramp-epochs", "0", "--attention",
         "pixel"]


def stages(base):
    """name -> trainer options (with ``--method``), per stage; ``base``: the options of the grid's
    best point. The Sharpen Focus stages start from ``PAPER``; ``ggam``: GGAM's loss weight (the
    paper uses 1 to 9) x its guide; ``capture``: the chosen Sharpen Focus settings with exact
    per-sample gradients (compare with that configuration's row of the grid)."""
    sf = ["--method", "sharpen-focus", *PAPER]
    grid = {f"w{w}{'' if c else '-noLac'}": ["--weight", w, "--consistency-weight", "1" if c
                                              else "0"]
            for w in ("1", "0.3", "0.1") for c in (True, False)}
    around = {"ramp4": ["--ramp-epochs", "4"],
              "first-order": ["--order", "first"],
              "channel": ["--attention", "channel"],
              "gradcam": ["--attention", "gradcam"],
              "last-only": ["--inner-weight", "0", "--consistency-weight", "0"],
              "inner-layer1": ["--inner-layer", "layer1"]}
    ablation = {"raw-mask": ["--mask", "raw"]}
    ggam = {f"w{w}-{g}": ["--method", "ggam", "--weight", w, "--ggam-guide", g]
            for w in ("0.1", "1", "3") for g in ("paper", "standardized")}
    ggam["w0"] = ["--method", "ggam", "--weight", "0"]  # the module alone, no attention loss
    return {"grid": {k: sf + v for k, v in grid.items()},
            "around": {k: sf + base + v for k, v in around.items()},
            "ablation": {k: sf + v for k, v in ablation.items()},
            "ggam": ggam,
            "capture": {"per-sample": sf + base + ["--per-sample-grads"]}}


def run_one(name, opts, args):
    out = Path(args.out) / name
    if (out / "summary.json").is_file():
        return name, "cached"
    cmd = [sys.executable, "-m", "attnfast.train", "--eval-split", "val", "--seeds",
           str(args.seeds), "--pictures", "0", "--no-progress", "--out", str(out), *opts]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(out / "log.txt", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    (out / "command.txt").write_text(shlex.join(cmd) + "\n")
    (out / "options.txt").write_text(shlex.join(opts) + "\n")
    return name, f"rc {rc} in {time.time() - t0:.0f} s"


def cell(stat, fmt):
    return f"{format(stat['mean'], fmt)} ± {format(stat['sd'] or 0, fmt)}"


def collect(out):
    """{name: (options, the method's aggregate row)} of every finished configuration."""
    rows = {}
    for summary in sorted(Path(out).glob("*/summary.json")):
        doc = json.loads(summary.read_text())
        opts = (summary.parent / "options.txt").read_text().strip()
        shown = opts.replace(shlex.join(PAPER), "").replace("--method sharpen-focus", "")
        rows[summary.parent.name] = (" ".join(shown.split()), doc["aggregate"][-1],
                                     doc["seeds"])
    return rows


def choose(rows):
    """The rule of the module docstring; returns the chosen name or None."""
    if "baseline" not in rows:
        return None
    base = rows["baseline"][1]["top1"]
    floor = base["mean"] - (base["sd"] or 0)

    def epg(r):
        return (r["inner_energy"]["mean"] + r["last_energy"]["mean"]) / 2

    def loc_of(name):
        kind = next((k for k in ("channel", "gradcam") if f"--attention {k}" in rows[name][0]),
                    None)
        ref = rows.get(f"baseline-{kind}" if kind else "baseline", rows["baseline"])[1]
        return epg(rows[name][1]) - epg(ref)
    runs = [(n, r) for n, (_, r, _) in rows.items() if not n.startswith("baseline")]
    ok = [(n, r) for n, r in runs if r["top1"]["mean"] >= floor]
    if not ok:
        return max(runs, key=lambda nr: nr[1]["top1"]["mean"])[0] if runs else None
    best = max(loc_of(n) for n, _ in ok)
    tied = [(n, r) for n, r in ok if best - loc_of(n) < 0.005]
    return max(tied, key=lambda nr: nr[1]["top1"]["mean"])[0]


def write_table(out):
    rows = collect(out)
    chosen = choose(rows)
    head = ["config", "options", "seeds", "top-1 %", "EPG inner", "EPG last", "PG inner",
            "PG last", "conf. EPG inner", "conf. EPG last", "sIoU inner", "sIoU last", "L_ac"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, (opts, r, seeds) in rows.items():
        mark = " (chosen)" if name == chosen else ""
        lines.append(f"| {name}{mark} | `{opts}` | {len(seeds)} | "
                     + " | ".join(cell(r[k], f) for k, f in COLUMNS) + " |")
    text = "\n".join(lines) + "\n"
    (Path(out) / "sweep.md").write_text(text)
    (Path(out) / "sweep.json").write_text(json.dumps(
        {n: {"options": o, "seeds": s, "row": r} for n, (o, r, s) in rows.items()}, indent=2))
    return text, chosen


def reeval(out, kinds=("channel", "gradcam")):
    """The baseline's checkpoints (``<out>/baseline/seed*/``) measured on validation with other
    kinds of map, as ``<out>/baseline-<kind>/summary.json``: the reference for SF runs trained
    with that kind (the baseline's training does not depend on the kind; only the probe does)."""
    import contextlib

    from torch.utils.data import DataLoader

    from attnfast.train import checkpoints, cli, methods, recipes, report
    from attnfast.train.distributed import Dist
    from attnfast.train.metrics import evaluate

    base = Path(out) / "baseline"
    seeds = sorted(int(p.name[4:]) for p in base.glob("seed*"))
    for kind in kinds:
        target = Path(out) / f"baseline-{kind}"
        if (target / "summary.json").is_file():
            continue
        cfg = recipes.configure(recipes.parse_args(["--eval-split", "val", "--attention", kind]))
        data = cli.load_data(cfg)
        runs = []
        for seed in seeds:
            model, net, probe, _ = methods.build(cfg, "baseline", data, Dist("cpu"))
            net.load_state_dict(checkpoints.load(base / f"seed{seed}" / "baseline"
                                                 / "checkpoint.pt")["net"])
            old = json.loads((base / f"seed{seed}" / "baseline" / "metrics.json").read_text())
            m = evaluate(probe, DataLoader(data.val, batch_size=64), data,
                         contextlib.nullcontext, Dist("cpu"))
            runs.append([{**old["summary"], **m, "method": "baseline"}])
        rows, _ = report.aggregate(runs)
        target.mkdir(parents=True, exist_ok=True)
        (target / "summary.json").write_text(json.dumps({"seeds": seeds, "aggregate": rows},
                                                        indent=2))
        (target / "options.txt").write_text(f"--method baseline (re-measured: --attention "
                                            f"{kind})\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=("grid", "around", "ablation", "ggam", "capture", "reeval",
                                       "table"),
                   default="grid")
    p.add_argument("--base", default="", help="options of the grid's best point (stage around)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1, help="trainer processes at a time")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: auto)")
    p.add_argument("--out", default="runs/sweep")
    args = p.parse_args(argv)
    todo = {}
    if args.stage == "reeval":
        reeval(args.out)
    elif args.stage != "table":
        todo = {("" if args.stage == "grid" else f"{args.stage}-") + k: v
                for k, v in stages(shlex.split(args.base))[args.stage].items()}
        todo = {"baseline": ["--method", "baseline"], **todo}
    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        for done in as_completed([pool.submit(run_one, k, v, args) for k, v in todo.items()]):
            name, status = done.result()
            print(f"{name}: {status}", flush=True)
            write_table(args.out)
    text, chosen = write_table(args.out)
    print(text + f"chosen: {chosen}")


if __name__ == "__main__":
    main()
