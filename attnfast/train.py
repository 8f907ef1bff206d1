"""Thin trainer for Sharpen Focus and GGAM: ``python -m attnfast.train`` / ``attnfast-train``.

The default (``--compare``, the README's main job) trains a baseline and Sharpen Focus on
scikit-learn's bundled digits with a CIFAR-style ResNet-20 and prints a comparison table: top-1,
attention separability (mean test soft-IoU between the target's and the confuser's maps, inner
and last layer, masked as in the loss; lower = better separated), the inner/last consistency term
L_ac (lower = the inner map lies more inside the last layer's mask) and training images/s.

Per run (``<out>/<method>/``): ``metrics.json`` and ``metrics.csv`` (one row per epoch),
``checkpoint.pt`` (written atomically every epoch: temp file + rename; loaded with
``weights_only=True``; ``--resume`` continues exactly: weights, optimizer, scheduler, grad scaler,
RNG states, epoch) and ``attention.png`` (top-5 class maps of test images); with several methods
``<out>/comparison.png`` puts them side by side. A non-finite loss stops training with a message
and leaves the last good checkpoint in place. Under ``torchrun`` the run is data-parallel
(DistributedSampler; gloo on CPU, nccl on GPU); ``--batch-size`` is the global batch.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from . import data as data_mod
from . import models
from .wrappers import GGAM, Baseline, SharpenFocus

METHODS = ("baseline", "sharpen-focus", "ggam")

# Paper recipes (Sharpen Focus Sec. 4; He et al. 2016 for CIFAR-10). Values a paper leaves open
# (noted "assumed") are ordinary choices for that setting.
RECIPES = {
    "digits": dict(data="digits", model="resnet20", epochs=8, batch_size=64, lr=0.05,
                   momentum=0.9, weight_decay=5e-4, schedule="cosine"),
    "cifar10-resnet20": dict(data="cifar10", model="resnet20", epochs=164, batch_size=128, lr=0.1,
                             momentum=0.9, weight_decay=1e-4, schedule="step",
                             milestones=(82, 123)),
    "cifar100-resnet110": dict(data="cifar100", model="resnet110", epochs=160, batch_size=128,
                               lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="step",
                               milestones=(81, 122)),
    "imagenet-resnet18": dict(data="imagefolder", model="resnet18", epochs=90, batch_size=256,
                              lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step",
                              milestones=(30, 60)),
    "caltech256-resnet18": dict(data="caltech256", model="resnet18", epochs=20,
                                batch_size=64,  # assumed
                                lr=0.01, momentum=0.9, weight_decay=1e-3, schedule="cosine"),
    "voc2012-resnet18": dict(data="voc2012", model="resnet18", epochs=20,
                             batch_size=64,  # assumed
                             lr=0.01, momentum=0.9, weight_decay=1e-3, schedule="cosine"),
    "cub200-resnet50": dict(data="cub200", model="resnet50", epochs=90, batch_size=10, lr=0.001,
                            momentum=0.9, weight_decay=1e-4,  # assumed
                            schedule="step", milestones=(30, 60), image_size=448),
}
DEFAULTS = dict(schedule="cosine", milestones=(), warmup_epochs=0.0, momentum=0.9,
                weight_decay=5e-4, image_size=None, attention="pixel", weight=None, head="auto",
                reduction=16, ggam_target="predicted", seed=0, workers=None, pictures=6,
                shortcut=None, per_class=30, compile_backend="inductor", device="auto")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or Inf."""


# ----------------------------------------------------------------------------- configuration

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="attnfast-train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--method", default=None, help="baseline | sharpen-focus | ggam, or a comma list")
    a("--compare", action="store_true",
      help="train the baseline too and compare (without --method: baseline and sharpen-focus, "
           "which is also the default)")
    a("--recipe", default="digits", choices=sorted(RECIPES), help="paper recipe by name")
    a("--data", choices=sorted(data_mod.SOURCES), help="data source (default: the recipe's)")
    a("--data-dir", help="local folder of the data source")
    a("--image-size", type=int)
    a("--per-class", type=int, help="caltech256: training images per class (30 or 60)")
    a("--train-size", type=int, help="use the first N training images (synthetic: generate N)")
    a("--test-size", type=int, help="use the first N test images (synthetic: generate N)")
    a("--model", help=f"{models.available()} or a torchvision model name")
    a("--shortcut", choices=("A", "B"), help="ResNet shortcut option (CIFAR default A, else B)")
    a("--epochs", type=int)
    a("--batch-size", type=int, help="global batch; differing from the recipe's scales the LR "
                                     "linearly and warms up 5 epochs (Goyal et al.)")
    a("--lr", type=float)
    a("--momentum", type=float)
    a("--weight-decay", type=float)
    a("--schedule", choices=("step", "cosine", "constant"))
    a("--milestones", type=lambda s: tuple(int(v) for v in s.split(",") if v),
      help="epochs where a step schedule divides the LR by 10, e.g. 81,122")
    a("--warmup-epochs", type=float)
    a("--attention", choices=("pixel", "channel", "gradcam"))
    a("--first-order", action="store_true", help="treat attention gradients as constants")
    a("--weight", type=float, help="weight of the attention loss (default: 1 for sharpen-focus "
                                    "as in Eq. 9; 0.1 for ggam, whose symmetric KL starts near "
                                    "C/2 log(C/2) and otherwise swamps the classification)")
    a("--inner-layer")
    a("--last-layer")
    a("--head", help="'auto', 'none' or the name of the nn.Linear fed by GAP of the last layer")
    a("--ggam-layer", help="layer after which GGAM's module sits (default: the last stage)")
    a("--reduction", type=int, help="GGAM SE reduction")
    a("--ggam-target", choices=("predicted", "label"))
    a("--amp", choices=("bf16", "fp16"), help="autocast dtype (fp16 adds a grad scaler)")
    a("--channels-last", action="store_true")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--compile-backend", help="torch.compile backend")
    a("--device", help="auto | cpu | cuda")
    a("--workers", type=int, help="DataLoader worker processes (default: 0 for in-memory "
                                  "sources, else up to 8)")
    a("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    a("--seed", type=int)
    a("--out", help="output folder (default runs/<data>)")
    a("--resume", action="store_true", help="continue from <out>/<method>/checkpoint.pt")
    a("--stop-after", type=int, help="stop after this many epochs in this invocation "
                                     "(a planned interruption; resume later with --resume)")
    a("--pictures", type=int, help="test images in the attention pictures (0: none)")
    a("--progress", action=argparse.BooleanOptionalAction, default=None,
      help="progress bar (default: when stderr is a terminal)")
    return p.parse_args(argv)


def configure(args) -> dict:
    """Recipe values, overridden by explicit options, then DEFAULTS; linear LR scaling when the
    batch differs from the recipe's and no --lr is given."""
    recipe = RECIPES[args.recipe]
    given = {k: v for k, v in vars(args).items() if v is not None}
    cfg = {**DEFAULTS, **recipe, **given}
    cfg["base_lr"] = recipe["lr"]
    if "batch_size" in given and "lr" not in given and given["batch_size"] != recipe["batch_size"]:
        cfg["lr"] = recipe["lr"] * given["batch_size"] / recipe["batch_size"]
        if "warmup_epochs" not in given and given["batch_size"] > recipe["batch_size"]:
            cfg["warmup_epochs"] = 5.0
    methods = [m.strip() for m in (cfg.get("method") or "baseline,sharpen-focus").split(",")]
    if cfg.get("compare"):
        methods = list(dict.fromkeys(["baseline", *methods]))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {METHODS}")
    cfg["methods"] = methods
    cfg["out"] = cfg.get("out") or f"runs/{cfg['data']}"
    cfg["milestones"] = tuple(cfg["milestones"])
    return cfg


def lr_factor(cfg, steps_per_epoch):
    """LR multiplier after ``it`` optimizer steps: linear warm-up times step (/10 at each
    milestone epoch), cosine (to 0 at the last step) or constant decay."""
    total, warm = cfg["epochs"] * steps_per_epoch, cfg["warmup_epochs"] * steps_per_epoch

    def factor(it):
        if cfg["schedule"] == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * min(it / max(total, 1), 1.0)))
        elif cfg["schedule"] == "step":
            decay = 0.1 ** sum(it // steps_per_epoch >= m for m in cfg["milestones"])
        else:
            decay = 1.0
        return decay * (min(1.0, (it + 1) / warm) if warm > 0 else 1.0)
    return factor


# ----------------------------------------------------------------------------- distributed

class Dist:
    """Rank/world from torchrun's environment; process group gloo (CPU) or nccl (GPU)."""

    def __init__(self, device_arg):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
        self.device = torch.device(f"cuda:{local}" if want_cuda else "cpu")
        if want_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo")

    @property
    def main(self):
        return self.rank == 0

    def sum(self, t):
        if self.world > 1:
            t = t.to(self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t)
        return t.cpu()

    def gather(self, obj):
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.world > 1:
            dist.barrier()


# ----------------------------------------------------------------------------- files

def atomic_write(path, write):
    """Call ``write(file_object)`` on a temp file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_metrics(run_dir, history, summary):
    text = json.dumps({"epochs": history, "summary": summary}, indent=2).encode()
    atomic_write(run_dir / "metrics.json", lambda f: f.write(text))
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for row in history for k in row))
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write(run_dir / "metrics.csv", lambda f: f.write(buf.getvalue().encode()))


def rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- metrics

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


# ----------------------------------------------------------------------------- one run

def build(cfg, method, data, dst):
    """(model, net, probe): net is the method's wrapper; probe measures attention on the model."""
    kw = {"shortcut": cfg["shortcut"]} if cfg["shortcut"] and cfg["model"] in models.available() \
        else {}
    model = models.create(cfg["model"], data.num_classes, data.in_channels, **kw)
    inner, last = getattr(model, "attention_layers", ("layer3", "layer4"))
    inner, last = cfg.get("inner_layer") or inner, cfg.get("last_layer") or last
    head = None if cfg["head"] == "none" else cfg["head"]
    if dst.world > 1 and dst.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(dst.device)
    if cfg.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        if method == "sharpen-focus" and not cfg.get("first_order"):
            raise SystemExit("--compile needs --first-order with sharpen-focus: second-order "
                             "Sharpen Focus differentiates through the model's backward, which "
                             "torch.compile does not support (double backward)")
        model.compile(backend=cfg["compile_backend"])
    sf_kw = dict(head=head, attention=cfg["attention"], multilabel=data.multilabel)
    if method == "sharpen-focus":
        net = SharpenFocus(model, inner, last, second_order=not cfg.get("first_order"),
                           weight=1.0 if cfg["weight"] is None else cfg["weight"], **sf_kw)
    elif method == "ggam":
        layer = cfg.get("ggam_layer") or last
        channels = getattr(model, "stage_channels", {}).get(layer)
        if channels is None:
            raise SystemExit(f"GGAM needs the channel count of {layer!r}; use a model from "
                             f"attnfast.models ({models.available()})")
        net = GGAM(model, layer, channels=channels, reduction=cfg["reduction"],
                   weight=0.1 if cfg["weight"] is None else cfg["weight"],
                   target=cfg["ggam_target"], multilabel=data.multilabel)
        net.to(dst.device)
    else:
        net = Baseline(model, multilabel=data.multilabel)
    # the probe measures separability on every method; made after GGAM, its hooks see the
    # rescaled features that feed the rest of the network
    probe = net if method == "sharpen-focus" else \
        SharpenFocus(model, inner, last, second_order=False, **sf_kw)
    return model, net, probe, last


def autocast_ctx(cfg, device):
    if not cfg.get("amp"):
        return contextlib.nullcontext
    dtype = torch.bfloat16 if cfg["amp"] == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _progress(loader, show, desc):
    if show:
        try:
            from tqdm import tqdm
            return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
        except ImportError:
            pass
    return loader


def train_epoch(net, loader, data, opt, sched, scaler, ctx, dst, show, desc, cfg):
    """One epoch; returns mean losses, images/s, seconds. Raises NonFiniteLoss."""
    net.train()
    totals, images, t0 = torch.zeros(3, dtype=torch.float64), 0, time.perf_counter()
    bar = _progress(loader, show, desc)
    for it, (x, y) in enumerate(bar):
        x, y = data.prepare(x.to(dst.device, non_blocking=True), train=True), y.to(dst.device)
        if cfg.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx():
            step = net(x, y)
        vals = dst.sum(torch.stack([step.loss.detach(), step.classification_loss.detach(),
                                    step.attention_loss.detach()]).double().cpu()) / dst.world
        if not torch.isfinite(vals[0]):
            raise NonFiniteLoss(f"{desc}: the loss became {vals[0].item()} at step {it + 1} "
                                f"(classification {vals[1].item():.4g}, attention "
                                f"{vals[2].item():.4g})")
        opt.zero_grad(set_to_none=True)
        scaler.scale(step.loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        totals += vals
        images += len(x) * dst.world
        if bar is not loader:
            bar.set_postfix(loss=f"{vals[0].item():.3f}",
                            img_s=f"{images / (time.perf_counter() - t0):.0f}")
    seconds = time.perf_counter() - t0
    steps = max(it + 1, 1) if images else 1
    return {"train_loss": totals[0].item() / steps,
            "train_classification_loss": totals[1].item() / steps,
            "train_attention_loss": totals[2].item() / steps,
            "train_images_per_s": images / max(seconds, 1e-9), "train_time_s": seconds,
            "train_images": images}


def loaders(cfg, data, dst):
    """(sampler, train loader, test loader): a DistributedSampler (shuffled by seed + epoch, so a
    resumed run draws the same order) over the global batch split across processes; the test set
    in shards without padding. Workers: 0 for in-memory sources unless --workers says."""
    if cfg["batch_size"] % dst.world:
        raise SystemExit(f"--batch-size {cfg['batch_size']} must be divisible by the "
                         f"{dst.world} processes")
    per_rank = cfg["batch_size"] // dst.world
    workers = cfg["workers"]
    if workers is None:
        base = data.train.dataset if isinstance(data.train, Subset) else data.train
        workers = 0 if isinstance(base, TensorDataset) else min(8, os.cpu_count() or 1)
    sampler = DistributedSampler(data.train, num_replicas=dst.world, rank=dst.rank, shuffle=True,
                                 seed=cfg["seed"])
    drop = len(data.train) // dst.world >= per_rank
    loader = DataLoader(data.train, batch_size=per_rank, sampler=sampler, drop_last=drop,
                        num_workers=workers, pin_memory=dst.device.type == "cuda",
                        persistent_workers=workers > 0)
    test_loader = DataLoader(data_mod.shard(data.test, dst.rank, dst.world), batch_size=per_rank,
                             num_workers=workers)
    return sampler, loader, test_loader


def run(cfg, method, data, dst, log):
    """Train one method; returns its summary dict (and keeps model/probe for pictures)."""
    run_dir = Path(cfg["out"]) / method
    ckpt_path = run_dir / "checkpoint.pt"
    torch.manual_seed(cfg["seed"])
    random.seed(cfg["seed"])
    model, net, probe, last = build(cfg, method, data, dst)
    raw = net
    if dst.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[dst.device.index] if dst.device.type == "cuda" else None)
    sampler, loader, test_loader = loaders(cfg, data, dst)
    opt = torch.optim.SGD(raw.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, len(loader)))
    scaler = torch.amp.GradScaler(dst.device.type, enabled=cfg.get("amp") == "fp16")
    ctx = autocast_ctx(cfg, dst.device)
    history, start = [], 0
    if cfg.get("resume") and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=dst.device, weights_only=True)
        if state["method"] != method or state["model_name"] != cfg["model"]:
            raise SystemExit(f"{ckpt_path} holds a {state['method']} {state['model_name']} run, "
                             f"not {method} {cfg['model']}")
        raw.load_state_dict(state["net"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][min(dst.rank, len(state["rng"]) - 1)])
        history, start = state["history"], state["epoch"]
        log(f"[{method}] resumed from {ckpt_path} at epoch {start}")
    elif cfg.get("resume"):
        log(f"[{method}] --resume: no checkpoint at {ckpt_path}, starting fresh")
    show = dst.main and (cfg["progress"] if cfg.get("progress") is not None
                         else sys.stderr.isatty())
    stop = cfg["epochs"] if not cfg.get("stop_after") else min(cfg["epochs"],
                                                                start + cfg["stop_after"])
    for epoch in range(start, stop):
        sampler.set_epoch(epoch)
        desc = f"{method} epoch {epoch + 1}/{cfg['epochs']}"
        lr = opt.param_groups[0]["lr"]
        try:
            row = train_epoch(net, loader, data, opt, sched, scaler, ctx, dst, show, desc, cfg)
        except NonFiniteLoss as e:
            good = (f"the last good checkpoint {ckpt_path} (epoch {epoch}) is kept"
                    if ckpt_path.is_file() and epoch else "no checkpoint had been written yet")
            raise NonFiniteLoss(f"{e}; training stopped, {good}") from None
        row = {"epoch": epoch + 1, "lr": lr, **row,
               **{f"test_{k}": v for k, v in evaluate(probe, test_loader, data, ctx, dst).items()}}
        history.append(row)
        rngs = dst.gather(rng_state())
        if dst.main:
            state = {"format": 1, "method": method, "model_name": cfg["model"],
                     "epoch": epoch + 1, "net": raw.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                     "rng": rngs, "history": history,
                     "config": {k: v for k, v in cfg.items()
                                if isinstance(v, (int, float, str, bool, tuple, list))}}
            atomic_write(ckpt_path, lambda f: torch.save(state, f))
            write_metrics(run_dir, history, summarize(method, history, run_dir, data))
        dst.barrier()
        log(_epoch_line(desc, row, data.multilabel))
    summary = summarize(method, history, run_dir, data)
    summary.update(_model=model, _last=last)
    return summary


def summarize(method, history, run_dir, data):
    last = history[-1] if history else {}
    n = sum(r["train_images"] for r in history)
    secs = sum(r["train_time_s"] for r in history)
    acc = ("test_mAP", "test_AUC") if data.multilabel else ("test_top1", "test_top5")
    return {"method": method, "epochs": len(history), "run_dir": str(run_dir),
            **{k[5:]: last.get(k) for k in (*acc, "test_inner_iou", "test_last_iou",
                                             "test_consistency")},
            "images_per_s": n / secs if secs else None, "train_time_s": secs}


def _epoch_line(desc, row, multilabel):
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


def pictures(cfg, data, results, dst):
    """attention.png per run and comparison.png with all runs side by side (rank 0)."""
    from .visualize import attention_figure, top_class_maps
    k = cfg["pictures"]
    if not k or not dst.main:
        return []
    idx, seen = [], set()
    for i in range(len(data.test)):
        y = data.test[i][1]
        key = tuple(y.tolist()) if data.multilabel else int(y)
        if key not in seen:
            seen.add(key)
            idx.append(i)
        if len(idx) == k:
            break
    x = torch.stack([data.test[i][0] for i in idx]).to(dst.device)
    y = torch.stack([torch.as_tensor(data.test[i][1]) for i in idx])
    x = data.prepare(x, train=False)
    shown = data.unnormalize(x)
    panels, written = {}, []
    for s in results:
        panels[s["method"]] = top_class_maps(s["_model"], s["_last"], x, 5, cfg["attention"],
                                             data.multilabel)
        written.append(attention_figure(Path(s["run_dir"]) / "attention.png", shown, y,
                                        data.class_names, {s["method"]: panels[s["method"]]}))
    if len(panels) > 1:
        written.append(attention_figure(
            Path(cfg["out"]) / "comparison.png", shown, y, data.class_names, panels,
            title=f"top-5 class attention ({cfg['attention']}, {results[0]['_last']}); "
                  "true class in green"))
    return written


def main(argv=None):
    cfg = configure(parse_args(argv))
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    dst = Dist(cfg["device"])
    log = print if dst.main else (lambda *a, **k: None)
    t0 = time.perf_counter()
    data = data_mod.load(cfg["data"], cfg.get("data_dir"), image_size=cfg["image_size"],
                         seed=cfg["seed"], train_size=cfg.get("train_size"),
                         test_size=cfg.get("test_size"),
                         per_class=cfg["per_class"] if cfg["data"] == "caltech256" else None)
    data.train = data_mod.first(data.train, cfg.get("train_size"))
    data.test = data_mod.first(data.test, cfg.get("test_size"))
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
    written = pictures(cfg, data, results, dst)
    if dst.main:
        out = Path(cfg["out"])
        clean = [{k: v for k, v in s.items() if not k.startswith("_")} for s in results]
        atomic_write(out / "summary.json", lambda f: f.write(json.dumps(clean, indent=2).encode()))
        print("\n" + table(clean, data.multilabel))
        print("IoU = mean test soft-IoU between target and confuser maps (masked as in the loss; "
              "lower = better separated); consistency = L_ac (lower = inner map inside the mask)")
        for p in written:
            print(f"picture: {p}")
        print(f"metrics: {out}/<method>/metrics.json, .csv; checkpoints: "
              f"{out}/<method>/checkpoint.pt")
        print(f"total time: {time.perf_counter() - t0:.1f} s")
    if dst.world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
