"""``attnfast-train`` / ``python -m attnfast.train``: for each seed every method of the config in
turn, the pictures of the first seed, then the comparison table over the seeds (see
:mod:`attnfast.train`).

With ``--seeds N`` (N > 1) seed s runs in ``<out>/seed<s>/<method>/``; with one seed in
``<out>/<method>/``. The data set is built once (``--data-seed``) and shared by every seed."""
from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from .. import models, pretrained
from . import checkpoints
from . import data as data_mod
from .distributed import Dist
from .loop import NonFiniteLoss, run
from .pictures import attention_pictures
from .recipes import configure, method_weight, parse_args
from .report import final_report


def load_data(cfg):
    """The config's data source, cut to --train-size / --test-size."""
    data = data_mod.load(cfg["data"], cfg.get("data_dir"), image_size=cfg["image_size"],
                         seed=cfg["data_seed"], train_size=cfg.get("train_size"),
                         test_size=cfg.get("test_size"),
                         per_class=cfg["per_class"] if cfg["data"] == "caltech256" else None)
    data.train = data_mod.first(data.train, cfg.get("train_size"))
    data.test = data_mod.first(data.test, cfg.get("test_size"))
    return data


def seed_out(cfg, seed):
    """The output folder of ``seed``: ``<out>`` with one seed, ``<out>/seed<s>`` with several."""
    return Path(cfg["out"]) / f"seed{seed}" if cfg["seeds"] > 1 else Path(cfg["out"])


def run_dirs(cfg):
    """[(seed, folder, method)]: the folder of every method's run for every seed."""
    return [(s, seed_out(cfg, s) / m, m) for s in range(cfg["seed"], cfg["seed"] + cfg["seeds"])
            for m in cfg["methods"]]


def preflight(cfg):
    """Before any training: no output folder holds a run already (unless --resume continues it
    or --overwrite replaces it), every output folder can be created and written (a file is
    written and removed in each), and with --resume every checkpoint there is sound and of
    the same settings (:func:`checkpoints.check`). Raises SystemExit naming the path."""
    if not cfg.get("resume") and not cfg.get("overwrite"):
        held = [folder / name for _, folder, _ in run_dirs(cfg)
                for name in ("checkpoint.pt", "metrics.json") if (folder / name).is_file()]
        if held:
            raise SystemExit(f"--out {cfg['out']} already holds a run ({held[0]}); add --resume "
                             "to continue it, --overwrite to replace it, or choose another --out")
    for seed, folder, method in run_dirs(cfg):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise SystemExit(f"--out {cfg['out']}: cannot write into {folder} "
                             f"({type(e).__name__}: {e.strerror or e})") from None
        ckpt = folder / "checkpoint.pt"
        if cfg.get("resume") and ckpt.is_file():
            checkpoints.check(ckpt, method, dict(cfg, seed=seed), "cpu")


def write_configs(cfg):
    """``config.json`` in every run folder: the run's resolved settings (recipe, defaults and
    command line merged; that folder's seed)."""
    for seed, folder, method in run_dirs(cfg):
        doc = dict(checkpoints.plain_config(dict(cfg, seed=seed)), method=method)
        text = json.dumps(doc, indent=2, sort_keys=True).encode()
        checkpoints.atomic_write(folder / "config.json", lambda f: f.write(text))


def resume_command(argv):
    """The command line that continues this run: ``argv`` with --resume (and no --overwrite)."""
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--overwrite"]
    return " ".join(["python -m attnfast.train", *map(shlex.quote, args),
                     *([] if "--resume" in args else ["--resume"])])


def interrupted(folder, argv):
    """The one line printed on Ctrl-C: where the last checkpoint is and how to resume."""
    ckpt = folder / "checkpoint.pt"
    where = (f"the last checkpoint is {ckpt} (written at the end of the last finished epoch)"
             if ckpt.is_file() else f"no checkpoint was written yet in {folder}")
    return f"interrupted: {where}; continue with: {resume_command(argv)}"


def resolved(cfg):
    """What ``--dry-run`` prints: the configuration's plain values, the methods' attention
    weights, the supervised layers of the model (inner, last, GGAM's), and the file a
    --pretrained source resolves to (and whether it is there)."""
    out = checkpoints.plain_config(cfg)
    out["method_weights"] = {m: method_weight(cfg, m) for m in cfg["methods"] if m != "baseline"}
    if cfg["model"] in models.available():   # built on the meta device: no memory, no time
        with torch.device("meta"):
            model = models.create(cfg["model"], 10)
        inner, last = model.attention_layers
        out["layers"] = {"inner": cfg.get("inner_layer") or inner,
                         "last": cfg.get("last_layer") or last,
                         "ggam": cfg.get("ggam_layer") or cfg.get("last_layer") or last}
    if cfg.get("pretrained") is not None:
        path = pretrained.resolve(cfg["pretrained"])
        out["pretrained_file"] = {"path": str(path), "present": path.is_file()}
    return out


def main(argv=None):
    """Train and compare the methods of the command line ``argv``; returns the exit status
    (1 when a loss became non-finite, 2 when the data source cannot be read, 130 on Ctrl-C)."""
    cfg = configure(parse_args(argv))
    if cfg.get("dry_run"):
        print(json.dumps(resolved(cfg), indent=2, sort_keys=True))
        return 0
    if cfg.get("pretrained") is not None:
        try:
            pretrained.require(cfg["pretrained"])
        except FileNotFoundError as e:
            raise SystemExit(str(e)) from None
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    dst = Dist(cfg["device"])
    preflight(cfg)
    log = print if dst.main else (lambda *a, **k: None)
    t0 = time.perf_counter()
    try:
        data = load_data(cfg)
    except (ValueError, OSError, ImportError) as e:  # a missing folder, file or package
        print(f"error: data source {cfg['data']}: {e}", file=sys.stderr)
        return 2
    if dst.main:
        write_configs(cfg)
    val = f" / {len(data.val)} val" if data.val is not None else ""
    seeds = list(range(cfg["seed"], cfg["seed"] + cfg["seeds"]))
    methods = cfg["methods"]
    log(f"training {len(seeds) * len(methods)} model(s): {len(seeds)} seed(s) x "
        f"{len(methods)} method(s) ({', '.join(methods)}), {cfg['epochs']} epoch(s) each "
        "(--seeds, --method)")
    log(f"data {data.name}: {len(data.train)} train{val} / {len(data.test)} test images, "
        f"{data.num_classes} classes, {data.image_size}x{data.image_size}; model {cfg['model']}; "
        f"{dst.world} process(es) on {dst.device}, {torch.get_num_threads()} threads; "
        f"lr {cfg['lr']:g}, batch {cfg['batch_size']}, {cfg['epochs']} epochs; seeds "
        f"{', '.join(map(str, seeds))}; metrics on the {cfg['eval_split']} split; "
        f"settings in <run>/config.json")
    runs, written = [], []
    for seed in seeds:
        scfg = dict(cfg, seed=seed, out=str(seed_out(cfg, seed)))
        results = []
        folder = seed_out(cfg, seed)
        try:
            for method in methods:
                folder = seed_out(cfg, seed) / method
                results.append(run(scfg, method, data, dst, log))
        except NonFiniteLoss as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(interrupted(folder, argv), file=sys.stderr)
            return 130
        if seed == seeds[0]:
            written = attention_pictures(scfg, data, results, dst)
        runs.append([{k: v for k, v in r.items() if not k.startswith("_")} for r in results])
    if dst.main:
        final_report(cfg["out"], runs, seeds, cfg["eval_split"], written,
                     config={k: v for k, v in cfg.items()
                             if isinstance(v, (int, float, str, bool, tuple, list))})
        print(f"total time: {time.perf_counter() - t0:.1f} s")
    dst.close()
    return 0
