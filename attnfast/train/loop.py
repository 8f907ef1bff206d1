"""One method's run: data loaders, the epoch loop, evaluation, a checkpoint and the metrics
files after every epoch, resume."""
from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from ..guidance import Guidance
from . import checkpoints, report
from . import data as data_mod
from .methods import build
from .metrics import evaluate
from .optim import optimizer
from .recipes import ramp_factor


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or Inf."""


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


def train_epoch(net, loader, data, opt, sched, scaler, ctx, dst, show, desc, cfg, ramp=None):
    """One epoch; returns mean losses (for Sharpen Focus also the means of its three parts,
    unweighted), images/s, seconds. Raises NonFiniteLoss.
    ``ramp``: None, or (wrapper, full weight, factor of the optimizer step) for the ramp-up of
    the attention weight."""
    net.train()
    totals, images, t0 = torch.zeros(6, dtype=torch.float64), 0, time.perf_counter()
    bar = _progress(loader, show, desc)
    guided = isinstance(getattr(net, "module", net), Guidance)
    for it, batch in enumerate(bar):
        y = batch[1].to(dst.device)
        if guided:  # (image, target, boxes[, classes], annotated): boxes move with the images
            x, boxes = data.prepare(batch[0].to(dst.device, non_blocking=True), train=True,
                                    boxes=batch[2].to(dst.device))
            extra = (boxes, batch[-1].to(dst.device),
                     batch[3].to(dst.device) if data.box_classes else None)
        else:
            x, extra = data.prepare(batch[0].to(dst.device, non_blocking=True), train=True), ()
        if ramp is not None:
            wrapper, weight, factor = ramp
            wrapper.weight = weight * factor(sched.last_epoch)
        if cfg.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx():
            step = net(x, y, *extra)
        has_parts = isinstance(getattr(step, "parts", None), tuple)
        parts = [p.detach().float().mean() for p in step.parts[1:]] if has_parts \
            else [step.loss.detach().new_zeros(())] * 3
        vals = dst.sum(torch.stack([step.loss.detach(), step.classification_loss.detach(),
                                    step.attention_loss.detach(), *parts]).double().cpu()) \
            / dst.world
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
    parts = {f"train_{k}": totals[3 + i].item() / steps
             for i, k in enumerate(("inner_iou", "last_iou", "consistency"))}
    return {"train_loss": totals[0].item() / steps,
            "train_classification_loss": totals[1].item() / steps,
            "train_attention_loss": totals[2].item() / steps,
            **(parts if images and has_parts else {}),
            "train_images_per_s": images / max(seconds, 1e-9), "train_time_s": seconds,
            "train_images": images}


class Annotated(Dataset):
    """A sample of a dataset with boxes, then ``annotated[i]``: whether sample i's boxes are used
    (guidance with --box-fraction)."""

    def __init__(self, base, annotated):
        self.base, self.annotated = base, annotated

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return (*self.base[i], self.annotated[i])


def box_subset(cfg, data, run_dir):
    """The training images whose boxes guidance uses: round(--box-fraction x N) of them (at least
    one for a fraction > 0), drawn once per seed; listed in ``run_dir/boxes_used.json``."""
    # (a source without boxes is refused before any training: recipes.config, data.WITH_BOXES)
    n = len(data.train)
    k = min(n, max(1 if cfg["box_fraction"] > 0 else 0, round(cfg["box_fraction"] * n)))
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(cfg["seed"] + 7919))[:k]
    annotated = torch.zeros(n, dtype=torch.bool)
    annotated[chosen] = True
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "boxes_used.json").write_text(json.dumps(
        {"box_fraction": cfg["box_fraction"], "images": k, "of": n,
         "indices": sorted(chosen.tolist())}))
    return Annotated(data.train, annotated)


def loaders(cfg, data, dst, train=None):
    """(sampler, train loader, eval loader): a DistributedSampler (shuffled by seed + epoch, so a
    resumed run draws the same order) over the global batch split across processes; the
    evaluation split (--eval-split) in shards without padding, each sample with its box when the
    data has boxes. Workers: 0 for in-memory sources unless --workers says."""
    if cfg["batch_size"] % dst.world:
        raise SystemExit(f"--batch-size {cfg['batch_size']} must be divisible by the "
                         f"{dst.world} processes")
    per_rank = cfg["batch_size"] // dst.world
    workers = cfg["workers"]
    if workers is None:
        base = data.train.dataset if isinstance(data.train, Subset) else data.train
        workers = 0 if isinstance(base, TensorDataset) else min(8, os.cpu_count() or 1)
    train = data.train if train is None else train
    sampler = DistributedSampler(train, num_replicas=dst.world, rank=dst.rank, shuffle=True,
                                 seed=cfg["seed"])
    drop = len(train) // dst.world >= per_rank
    loader = DataLoader(train, batch_size=per_rank, sampler=sampler, drop_last=drop,
                        num_workers=workers, pin_memory=dst.device.type == "cuda",
                        persistent_workers=workers > 0)
    eval_loader = DataLoader(data_mod.shard(data.split(cfg["eval_split"]), dst.rank, dst.world),
                             batch_size=per_rank, num_workers=workers)
    return sampler, loader, eval_loader


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
    train = box_subset(cfg, data, run_dir) if method == "guidance" else None
    sampler, loader, eval_loader = loaders(cfg, data, dst, train)
    opt, sched = optimizer(raw, model, cfg, len(loader))
    if getattr(model, "pretrained_report", None) is not None:
        log(f"[{method}] {model.pretrained_report.describe()}")
    ramp = (raw, raw.weight, ramp_factor(cfg, len(loader))) \
        if cfg["ramp_epochs"] > 0 and hasattr(raw, "weight") else None
    scaler = torch.amp.GradScaler(dst.device.type, enabled=cfg.get("amp") == "fp16")
    states = {"net": raw, "optimizer": opt, "scheduler": sched, "scaler": scaler}
    ctx = autocast_ctx(cfg, dst.device)
    history, start = [], 0
    if dst.main:
        for p in checkpoints.remove_stale_temps(run_dir):
            log(f"[{method}] removed {p}, left by an interrupted write")
    if cfg.get("resume") and ckpt_path.is_file():
        history, start, diff = checkpoints.resume(ckpt_path, method, cfg, states, dst.rank,
                                                  dst.device)
        if diff:
            checkpoints.apply_settings(cfg, opt, sched, start, len(loader))
            log(f"[{method}] --resume-override: " + ", ".join(
                f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()))
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
        lrs = {g.get("name"): g["lr"] for g in opt.param_groups}   # optim.GROUPS
        lr = {"lr": lrs.get("new", lrs.get("backbone"))}
        if cfg.get("backbone_lr_scale", 1.0) != 1 and "backbone" in lrs:
            lr["backbone_lr"] = lrs["backbone"]
        try:
            row = train_epoch(net, loader, data, opt, sched, scaler, ctx, dst, show, desc, cfg,
                              ramp)
        except NonFiniteLoss as e:
            good = (f"the last good checkpoint {ckpt_path} (epoch {epoch}) is kept"
                    if ckpt_path.is_file() and epoch else "no checkpoint had been written yet")
            raise NonFiniteLoss(f"{e}; training stopped, {good}") from None
        dst.broadcast_buffers(raw)
        row = {"epoch": epoch + 1, **lr, **row}
        if epoch + 1 == cfg["epochs"] or (cfg["eval_every"] and
                                          (epoch + 1) % cfg["eval_every"] == 0):
            split = cfg["eval_split"]
            row.update({f"{split}_{k}": v
                        for k, v in evaluate(probe, eval_loader, data, ctx, dst).items()})
        history.append(row)
        rngs = dst.gather(checkpoints.rng_state())
        if dst.main:
            checkpoints.save(ckpt_path, method, cfg, epoch + 1, states, rngs, history)
            report.write_metrics(run_dir, history,
                                 report.summarize(method, history, run_dir, cfg["eval_split"]))
        dst.barrier()
        log(report.epoch_line(desc, row, cfg["eval_split"]))
    summary = report.summarize(method, history, run_dir, cfg["eval_split"])
    summary.update(_model=model, _last=last)
    return summary
