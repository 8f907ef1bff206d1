"""``attnfast-train`` / ``python -m attnfast.train``: every method of the config in turn, then
the pictures and the comparison table (see :mod:`attnfast.train`)."""
from __future__ import annotations

import sys
import time

import torch

from . import data as data_mod
from .distributed import Dist
from .loop import NonFiniteLoss, run
from .pictures import attention_pictures
from .recipes import configure, parse_args
from .report import final_report


def load_data(cfg):
    """The config's data source, cut to --train-size / --test-size."""
    data = data_mod.load(cfg["data"], cfg.get("data_dir"), image_size=cfg["image_size"],
                         seed=cfg["seed"], train_size=cfg.get("train_size"),
                         test_size=cfg.get("test_size"),
                         per_class=cfg["per_class"] if cfg["data"] == "caltech256" else None)
    data.train = data_mod.first(data.train, cfg.get("train_size"))
    data.test = data_mod.first(data.test, cfg.get("test_size"))
    return data


def main(argv=None):
    """Train and compare the methods of the command line ``argv``; returns the exit status
    (1 when a loss became non-finite)."""
    cfg = configure(parse_args(argv))
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    dst = Dist(cfg["device"])
    log = print if dst.main else (lambda *a, **k: None)
    t0 = time.perf_counter()
    data = load_data(cfg)
    log(f"data {data.name}: {len(data.train)} train / {len(data.test)} test images, "
        f"{data.num_classes} classes, {data.image_size}x{data.image_size}; model {cfg['model']}; "
        f"{dst.world} process(es) on {dst.device}, {torch.get_num_threads()} threads; "
        f"lr {cfg['lr']:g}, batch {cfg['batch_size']}, {cfg['epochs']} epochs")
    results = []
    try:
        for method in cfg["methods"]:
            results.append(run(cfg, method, data, dst, log))
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    written = attention_pictures(cfg, data, results, dst)
    if dst.main:
        final_report(cfg["out"], results, data.multilabel, written)
        print(f"total time: {time.perf_counter() - t0:.1f} s")
    dst.close()
    return 0
