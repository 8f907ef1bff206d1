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

    python benchmarks/late_drop.py --threads 1 --out runs/late_drop
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
    args = p.parse_args(argv)
    original = loop.evaluate
    state = {}

    def evaluate(probe, eval_loader, data, ctx, dst):
        out = original(probe, eval_loader, data, ctx, dst)
        state["evals"] = state.get("evals", 0) + 1
        return {**out, **bn_numbers(probe.model, data),
                "steps": state["evals"] * state["steps_per_epoch"]}

    loop.evaluate = evaluate
    rows = []
    for name in args.configs.split(","):
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
            doc = json.loads((Path(args.out) / name / f"seed{seed}" / CONFIGS[name][1]
                              / "metrics.json").read_text())
            for r in doc["epochs"]:
                rows.append({"config": name, "seed": seed, **r})
    keys = ("epoch", "lr", "train_classification_loss", "train_attention_loss",
            "train_consistency", "test_top1", "precise_bn_top1", "batch_stats_top1",
            "bn_var_drift", "bn_steps", "steps")
    lines = ["| config | seed | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for r in rows:
        cells = [format(r[k], ".4g") if isinstance(r.get(k), float) else str(r.get(k, "-"))
                 for k in keys]
        lines.append(f"| {r['config']} | {r['seed']} | " + " | ".join(cells) + " |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "late_drop.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
