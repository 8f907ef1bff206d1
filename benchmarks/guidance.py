"""Speed of guidance from boxes (issue #18): the fused ``guidance_loss`` (forward + backward) vs
the eager reference (vectorized, ``attnfast.reference`` with autograd) and vs a per-row,
per-box Python loop as the public code computes it (each row's Grad-CAM map upsampled to the
image, a box mask painted box by box, 1 - energy), at ResNet-50 PASCAL VOC shapes; and the guided
training step (first and second order) vs the baseline step. Contenders take turns call by call
(attnfast.bench.timing.time_interleaved), ratios come from one run.

    python benchmarks/guidance.py [--device cpu] [--threads 1] [--repeats 10] [--quick]

Writes benchmarks/results/guidance-<device>-<date>.{json,md}.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as nnf

import attnfast
from attnfast.bench.cases import make_config
from attnfast.bench.report import environment, loadavg, write_json
from attnfast.bench.timing import Timed, time_interleaved
from attnfast.train import models


def voc_rows(n, rows_per_image=1.5, boxes_per_image=2.5, image=224, seed=0):
    """(rows R, boxes R x B x 4): ~1.5 positive classes and ~2.5 boxes per image, as VOC."""
    gen = torch.Generator().manual_seed(seed)
    r = round(n * rows_per_image)
    rows = torch.sort(torch.randint(0, n, (r,), generator=gen)).values
    rows[:n] = torch.arange(n)  # every image at least one row
    rows = torch.sort(rows).values
    b = max(1, round(boxes_per_image / rows_per_image + 0.5))
    corner = torch.rand(r, b, 2, generator=gen) * image * 0.6
    size = torch.rand(r, b, 2, generator=gen) * image * 0.4 + 16
    boxes = torch.cat([corner, corner + size], -1)[..., [0, 1, 2, 3]].clamp(0, image)
    return rows, boxes


def loop_energy(features, grads, rows, boxes, image):
    """The public code's way: per row, the Grad-CAM map upsampled to the image (bilinear), a box
    mask painted box by box, 1 - sum(A+ mask) / sum(A+); mean over rows."""
    losses = []
    for r in range(rows.numel()):
        f, g = features[rows[r]], grads[r]
        w = g if g.dim() == 1 else g.mean(dim=(1, 2))
        a = torch.relu((w[:, None, None] * f).sum(0))
        up = nnf.interpolate(a[None, None], size=(image, image), mode="bilinear",
                             align_corners=False)[0, 0].clamp_min(0)
        mask = torch.zeros_like(up)
        for y0, x0, y1, x1 in boxes[r].long().tolist():
            mask[y0:y1, x0:x1] = 1
        den = up.sum()
        losses.append(1 - (up * mask).sum() / den if den >= 1e-7 else 1 - (up * mask).sum())
    return torch.stack(losses).mean()


def op_cases(quick):
    n = 16 if quick else 64
    return [("last layer 2048x7x7, G per channel (GAP head)", (n, 2048, 7, 7), True),
            ("mid layer 1024x14x14, G 4-D", (n, 1024, 14, 14), False)]


def time_op(label, shape, flat, cfg, image=224):
    n, k, h, w = shape
    rows, boxes = voc_rows(n)
    f0 = torch.randn(shape)
    g0 = torch.randn(rows.numel(), k) / (h * w) if flat else torch.randn(rows.numel(), k, h, w)

    def prepare(_):
        return f0.detach().requires_grad_(), g0.detach().requires_grad_()

    def fused_with(backend):
        def run(state):
            f, g = state
            with attnfast.use_backend(backend):
                attnfast.guidance_loss(f, g, boxes, rows, image_size=(image, image)).backward()
        return run

    def loop(state):
        f, g = state
        loop_energy(f, g, rows, boxes, image).backward()

    entries = [Timed("attnfast cpu", prepare, fused_with("cpu")),
               Timed("eager (vectorized)", prepare, fused_with("torch")),
               Timed("per-row loop (public code)", prepare, loop)]
    time_interleaved(entries, 1, cfg.warmup, cfg.repeats, "cpu")
    med = {e.name: statistics.median(e.samples) for e in entries if not e.error}
    out = {"case": label, "shape": list(shape), "rows": rows.numel(), "boxes": list(boxes.shape),
           "median_ms": {k: v * 1e3 for k, v in med.items()},
           "errors": {e.name: e.error for e in entries if e.error}}
    fused = med.get("attnfast cpu")
    out["x_faster"] = {k: v / fused for k, v in med.items() if fused and k != "attnfast cpu"}
    return out


def time_steps(cfg, quick):
    """One SGD step of a ResNet-18 (10 classes, 32 images of 64 x 64): baseline vs guidance
    (energy, Grad-CAM, every image boxed) of layer4 (the last: its class-score gradient passes
    through GAP + fc only) and of layer3 + layer4 (the gradient and, second order, the double
    backward pass through layer4), first and second order."""
    torch.manual_seed(0)
    n, size = (8, 32) if quick else (32, 64)
    model = models.create("resnet18", 10, 3)
    x, y = torch.randn(n, 3, size, size), torch.randint(0, 10, (n,))
    boxes = torch.tensor([[4, 4, size // 2 + 8, size // 2 + 4]] * n).float()
    variants = {"layer4, first order": ("layer4", False), "layer4, second order": ("layer4", True),
                "layer3+4, first order": (["layer3", "layer4"], False),
                "layer3+4, second order": (["layer3", "layer4"], True)}
    wrappers = {name: attnfast.Guidance(model, layers, second_order=second)
                for name, (layers, second) in variants.items()}

    def baseline(_):
        nnf.cross_entropy(model(x), y).backward()

    def guided(name):
        def run(_):
            wrappers[name](x, y, boxes).loss.backward()
        return run

    prep = lambda i: model.zero_grad(set_to_none=True)  # noqa: E731
    entries = [Timed("baseline", prep, baseline),
               *(Timed(f"guidance {name}", prep, guided(name)) for name in variants)]
    time_interleaved(entries, 1, cfg.train_warmup, cfg.train_repeats, "cpu")
    for w in wrappers.values():
        w.remove()
    med = {e.name: statistics.median(e.samples) for e in entries if not e.error}
    return {"model": "resnet18 (attnfast.train.models), 10 classes", "images": [n, 3, size, size],
            "median_ms": {k: v * 1e3 for k, v in med.items()},
            "x_baseline": {k: v / med["baseline"] for k, v in med.items() if k != "baseline"},
            "errors": {e.name: e.error for e in entries if e.error}}


def main(argv=None):
    p = argparse.ArgumentParser(description="guidance_loss and guided-step speed (CPU)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    cfg = make_config("cpu", quick=a.quick, repeats=a.repeats, warmup=2, threads=a.threads)
    cfg.train_repeats, cfg.train_warmup = max(3, a.repeats // 2), 1
    result = {"meta": environment(cfg), "ops": [], "steps": None}
    for label, shape, flat in op_cases(a.quick):
        result["ops"].append(time_op(label, shape, flat, cfg))
        print(result["ops"][-1], flush=True)
    result["steps"] = time_steps(cfg, a.quick)
    print(result["steps"], flush=True)
    result["meta"]["loadavg_end"] = loadavg()
    stem = write_json(result, a.out, "guidance-cpu")
    lines = [f"# guidance_loss on {result['meta']['device']}", "",
             f"{result['meta']['date']}, torch {result['meta']['torch']}, commit "
             f"{result['meta']['commit']}, {cfg.repeats} interleaved repeats, "
             f"{result['meta']['cpu_threads']} thread(s), load average {result['meta']['loadavg']}"
             f" -> {result['meta']['loadavg_end']}", "",
             "| case (forward + backward, float32) | attnfast cpu ms | x eager | x per-row loop |",
             "|---|---|---|---|"]
    for o in result["ops"]:
        lines.append(f"| {o['case']}, N {o['shape'][0]}, R {o['rows']} | "
                     f"{o['median_ms'].get('attnfast cpu', float('nan')):.1f} | "
                     f"{o['x_faster'].get('eager (vectorized)', float('nan')):.2f} | "
                     f"{o['x_faster'].get('per-row loop (public code)', float('nan')):.1f} |")
    s = result["steps"]
    lines += ["", "| training step | ms | x baseline |", "|---|---|---|"]
    for k, v in s["median_ms"].items():
        lines.append(f"| {k} | {v:.0f} | {s['x_baseline'].get(k, 1.0):.2f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {stem}.json, .md", file=sys.stderr)


if __name__ == "__main__":
    main()
