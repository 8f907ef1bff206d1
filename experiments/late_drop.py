"""Diagnose the late-epoch drop of Sharpen Focus on ``digits`` (issue #9): the trainer's own runs
(``--recipe digits``, every epoch evaluated), with these extra numbers after every epoch:

* ``bn_steps``: BatchNorm's ``num_batches_tracked`` in the first BN layer, against the optimizer
  steps taken (``steps``): whether anything besides the training forward updates the running
  statistics;
* ``precise_bn_top1``: test top-1 after recomputing every BN layer's running statistics exactly
  (cumulative average over the training set, not augmented, train mode) on a copy of the model;
* ``batch_stats_top1``: test top-1 with BN in train mode (batch statistics, batches of 64);
* ``bn_var_drift``: mean over BN layers and channels of |running var - exact var| / exact var.

If ``precise_bn_top1`` recovers what eval-mode top-1 loses, the running statistics are to blame;
if not, the weights themselves are. Writes ``<out>/<config>/.../metrics.json`` as the trainer
does (with the extra keys) and ``<out>/late_drop.md``.

    python experiments/late_drop.py --threads 1 --out runs/late_drop
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
from pathlib import Path

import torch
import torch.nn as nn

from attnfast.train import cli, loop, recipes

CONFIGS = {
    "baseline": ["--method", "baseline"],
    "sf-paper": ["--method", "sharpen-focus", "--weight", "1", "--order", "second",
                 "--consistency-weight", "1", "--ramp-epochs", "0"],
}


def _top1(model, data, split, batch=64):
    hit = 0
    with torch.no_grad():
        for i in range(0, len(split), batch):
            xb, yb = split.tensors[0][i:i + batch], split.tensors[1][i:i + batch]
            hit += (model(data.prepare(xb, train=False)).argmax(1) == yb).sum().item()
    return 100.0 * hit / len(split)


def bn_numbers(model, data):
    """The extra numbers of the module docstring (model left unchanged)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    exact = copy.deepcopy(model)
    ebns = [m for m in exact.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in ebns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    exact.train()
    train = data.train
    with torch.no_grad():
        for i in range(0, len(train), 64):
            exact(data.prepare(train.tensors[0][i:i + 64], train=False))
    exact.eval()
    drift = torch.cat([((a.running_var - b.running_var).abs() / b.running_var.clamp_min(1e-12))
                       for a, b in zip(bns, ebns)]).mean().item()
    batch_model = copy.deepcopy(model).train()
    return {"bn_steps": int(bns[0].num_batches_tracked), "bn_var_drift": drift,
            "precise_bn_top1": _top1(exact, data, data.test),
            "batch_stats_top1": _top1(batch_model, data, data.test)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--extra", default="", help="more trainer options for every config")
    p.add_argument("--out", default="runs/late_drop")
    p.add_argument("--table", action="store_true", help="only rebuild the table of finished runs")
    args = p.parse_args(argv)
    original = loop.evaluate
    state = {}

    def evaluate(probe, eval_loader, data, ctx, dst):
        out = original(probe, eval_loader, data, ctx, dst)
        state["evals"] = state.get("evals", 0) + 1
        return {**out, **bn_numbers(probe.model, data),
                "steps": state["evals"] * state["steps_per_epoch"]}

    loop.evaluate = evaluate
    for name in args.configs.split(","):
        if args.table:
            break
        opts = ["--recipe", "digits", "--eval-every", "1", "--pictures", "0", "--no-progress",
                "--seeds", str(args.seeds), "--out", str(Path(args.out) / name),
                *CONFIGS[name], *shlex.split(args.extra)]
        if args.threads:
            opts += ["--threads", str(args.threads)]
        cfg = recipes.configure(recipes.parse_args(opts))
        state["steps_per_epoch"] = len(cli.load_data(cfg).train) // cfg["batch_size"]  # drop_last
        for seed in range(cfg["seed"], cfg["seed"] + cfg["seeds"]):
            state["evals"] = 0
            cli.main([*opts, "--seed", str(seed), "--seeds", "1",
                      "--out", str(Path(args.out) / name / f"seed{seed}")])
    print(table(args.out))


def table(out):
    """Markdown table of every run under ``out`` (also written to ``<out>/late_drop.md``)."""
    keys = ("epoch", "lr", "train_classification_loss", "train_attention_loss",
            "train_consistency", "test_top1", "test_precise_bn_top1", "test_batch_stats_top1",
            "test_bn_var_drift", "test_bn_steps", "test_steps")
    lines = ["| config | seed | " + " | ".join(k.replace("test_", "") for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for f in sorted(Path(out).glob("*/seed*/*/metrics.json")):
        for r in json.loads(f.read_text())["epochs"]:
            cells = [format(r[k], ".4g") if isinstance(r.get(k), float) else str(r.get(k, "-"))
                     for k in keys]
            lines.append(f"| {f.parts[-4]} | {f.parts[-3][4:]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "late_drop.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
