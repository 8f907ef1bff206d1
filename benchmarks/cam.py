"""Class activation maps for a batch: attnfast.cam against Captum and per-image loops (issue #14).

    python benchmarks/cam.py                       # CPU: 32 ResNet-50 images at 224, top-5, layer4
    python benchmarks/cam.py --size 112 --repeats 1   # what a loaded 2-core machine allowed
    python benchmarks/cam.py --layer layer3 --batch 8 --repeats 2

The model is ``attnfast.train.models.resnet50`` with RANDOM weights (1000 classes, eval mode,
float32): map speed does not depend on training, and torchvision (pytorch-grad-cam's
dependency) does not load with the CPU torch here. Every contender computes, from the images
alone, the Grad-CAM maps of each image's top-5 predicted classes at ``--layer``, resized
bilinearly to the input and divided by their maximum (+ 1e-6):

* ``attnfast``: ``CAM(model, layer, "gradcam")(images, topk=5)`` -- one forward; at layer4 (GAP +
  fc head) no backward, at an inner layer one batched backward (vmap over the 5 classes);
* ``captum``: a no-grad forward for the top-5, then ``LayerGradCam.attribute`` once per class
  rank (each a forward and a backward of the batch), ``LayerAttribution.interpolate``;
* ``loop``: per image, one forward and 5 backward passes (``torch.autograd.grad``), Grad-CAM in
  plain torch -- the careful hand-written loop;
* ``loop_per_call``: per image and class a forward and a backward, as calling a CAM tool once
  per image and target does (top-5 from a batched no-grad forward first);
* ``forward``: a plain no-grad forward of the batch, for scale (not a contender).

Timing: every contender is called once on 2 images (warm-up: first-call costs, attnfast's head
check), then ``attnfast.bench.timing.time_interleaved`` (the contenders take turns call by call, so
load changes hit them alike); images/s and ratios to attnfast come from this one run. The maps of
every contender's last timed call are checked against attnfast's (max abs difference, reported). Results:
``benchmarks/results/cam-<device>-<layer>-<date>.{json,md}``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as nnf

from attnfast.bench import config
from attnfast.bench.report import environment, format_table, write_json
from attnfast.bench.timing import Timed, summarize, time_interleaved
from attnfast.cam import CAM
from attnfast.train import models

EPS = 1e-6


def finish(maps, size):
    """N x T x h x w raw maps -> bilinear to ``size``, divided by max + eps (plain torch)."""
    up = nnf.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return up / (up.amax((2, 3), keepdim=True) + EPS)


def gradcam(f, g):
    return torch.relu((g.mean((2, 3), keepdim=True) * f).sum(1))


class Hooked:
    """Keeps the latest output of ``layer``."""

    def __init__(self, model, layer):
        self.out = None
        dict(model.named_modules())[layer].register_forward_hook(
            lambda m, a, o: setattr(self, "out", o))


def contenders(model, layer, k, captum_ok):
    size_of = (lambda x: tuple(x.shape[-2:]))
    cam = CAM(model, layer, "gradcam")
    hooked = Hooked(model, layer)

    def run_attnfast(x):
        return cam(x, topk=k).maps

    def top(x):
        with torch.no_grad():
            return model(x).topk(k, 1).indices

    def run_loop(x):
        out = []
        for i in range(x.shape[0]):
            y = model(x[i:i + 1])
            f = hooked.out
            classes = y.detach().topk(k, 1).indices[0]
            maps = [gradcam(f, torch.autograd.grad(y[0, c], f, retain_graph=True)[0])
                    for c in classes.tolist()]
            out.append(finish(torch.stack(maps, 1).detach(), size_of(x)))
        return torch.cat(out)

    def run_loop_per_call(x):
        classes, out = top(x), []
        for i in range(x.shape[0]):
            maps = []
            for c in classes[i].tolist():
                y = model(x[i:i + 1])
                f = hooked.out
                maps.append(gradcam(f, torch.autograd.grad(y[0, c], f)[0]).detach())
            out.append(finish(torch.stack(maps, 1), size_of(x)))
        return torch.cat(out)

    def run_forward(x):
        with torch.no_grad():
            return model(x)

    runs = {"attnfast": run_attnfast}
    if captum_ok:
        from captum.attr import LayerAttribution, LayerGradCam
        lgc = LayerGradCam(model, dict(model.named_modules())[layer])

        def run_captum(x):
            classes, maps = top(x), []
            for t in range(k):
                a = lgc.attribute(x, target=classes[:, t], relu_attributions=True)
                a = LayerAttribution.interpolate(a, size_of(x), "bilinear")[:, 0]
                maps.append(a / (a.amax((1, 2), keepdim=True) + EPS))
            return torch.stack(maps, 1).detach()
        runs["captum"] = run_captum
    runs.update(loop=run_loop, loop_per_call=run_loop_per_call, forward=run_forward)
    return runs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--layer", default="layer4")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed rounds on the full batch (after a warm-up call on 2 images)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = p.parse_args(argv)
    cfg = config("cpu", threads=a.threads, repeats=a.repeats, warmup=a.warmup)
    try:
        import captum  # noqa: F401
        captum_ok, captum_note = True, None
    except ImportError:
        captum_ok, captum_note = False, "captum not installed: pip install captum"
    torch.manual_seed(0)
    model = models.resnet50(num_classes=1000).eval()
    x = torch.rand(a.batch, 3, a.size, a.size, generator=torch.Generator().manual_seed(1))
    runs = contenders(model, a.layer, a.topk, captum_ok)

    for fn in runs.values():          # warm-up on 2 images (first-call costs, head check)
        fn(x[:2])
    maps = {}

    def keep(name, fn):
        return lambda state: maps.__setitem__(name, fn(state))
    entries = [Timed(n, lambda i: x, keep(n, fn)) for n, fn in runs.items()]
    time_interleaved(entries, 1, cfg.warmup, cfg.repeats, "cpu")
    agree = {n: float((m - maps["attnfast"]).abs().max()) for n, m in maps.items()
             if n not in ("attnfast", "forward")}
    print("max |maps - attnfast maps|:", agree, flush=True)
    rows = []
    for e in entries:
        row = {"contender": e.name, **summarize(e.samples)} if not e.error else {
            "contender": e.name, "error": e.error}
        if "median_ms" in row:
            row["images_per_s"] = a.batch / (row["median_ms"] / 1e3)
        rows.append(row)
    ips = {r["contender"]: r.get("images_per_s") for r in rows}
    for r in rows:
        if r.get("images_per_s") and ips.get("attnfast"):
            r["attnfast_x"] = ips["attnfast"] / r["images_per_s"]
    peers = [r for r in rows if r["contender"] not in ("attnfast", "forward")
             and r.get("images_per_s")]
    fastest = max(peers, key=lambda r: r["images_per_s"]) if peers else None
    target = None
    if fastest and ips.get("attnfast"):
        v = ips["attnfast"] / fastest["images_per_s"]
        target = (f"{'PASS' if v >= 3 else 'MISS'}  attnfast x fastest peer "
                  f"({fastest['contender']}) on CPU (target >= 3): {v:.2f}")
    meta = environment(cfg)
    result = {"meta": meta, "settings": vars(a), "model": "attnfast.train.models.resnet50, "
              "random weights, eval, float32", "captum": captum_note, "rows": rows,
              "max_abs_diff_vs_attnfast": agree, "target": target}
    cols = (("contender", "contender", "{}"), ("median ms", "median_ms", "{:.0f}"),
            ("IQR ms", "iqr_ms", "{:.0f}"), ("images/s", "images_per_s", "{:.2f}"),
            ("attnfast x", "attnfast_x", "{:.2f}"))
    print(format_table(rows, cols, 1))
    print(target)
    stem = write_json(result, a.out, f"cam-cpu-{a.layer}")
    md = [f"# Class activation maps: {meta['device']}", "",
          f"{meta['date']}, torch {meta['torch']}, commit {meta['commit']}"
          f"{' (dirty)' if meta['dirty'] else ''}, {meta['cpu_threads']} CPU threads, load "
          f"{meta['loadavg']}. {result['model']}; batch {a.batch} x 3 x {a.size} x {a.size}, "
          f"Grad-CAM at {a.layer} of the top-{a.topk} classes, resized and max-normalized; "
          f"median of {a.repeats} interleaved calls after {a.warmup} warm-up. "
          f"Contenders: benchmarks/cam.py docstring." + (f" {captum_note}." if captum_note else ""),
          "", format_table(rows, cols, 1, True), "",
          f"Maps agree with attnfast's: max abs difference {agree}.", "", f"- {target}", ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    print(f"wrote {stem}.json / .md")


if __name__ == "__main__":
    main()
