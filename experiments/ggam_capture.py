"""Measurements behind docs/GGAM_AND_CAPTURE.md (issue #9), all on a VALIDATION split (the
training images of the source, split 80/20 per class with a fixed generator; the source's test
split is never loaded into a run):

    python benchmarks/ggam_capture.py init        # GGAM's KL at initialization (SE sigmoid S vs
                                                  # softmax S), the Grad-CAM weights' scale, and
                                                  # how far the train-mode captured gradient is
                                                  # from the per-sample one
    python benchmarks/ggam_capture.py ggam --weights 0.1,1,3,9 --guides paper,standardized --seeds 2
    python benchmarks/ggam_capture.py capture --seeds 2   # Sharpen Focus: coupled vs per-sample
                                                          # gradients, accuracy, localization,
                                                          # step-time ratio side by side

``--data``: ``digits`` (no boxes: accuracy only), ``canvas`` (a stand-in with boxes, built here
from the digits training images: each digit, 12-16 px, on a 32 x 32 canvas among two fragments
of other digits), or any trainer source whose Data carries a ``val`` split and yields
(image, label, box) (the located-digits set of issue #9, once merged). Training follows the
trainer's digits recipe (ResNet-20, SGD 0.05, momentum 0.9, wd 5e-4, cosine, batch 64, pad-crop
augmentation). Results go to stdout and ``--out`` (json).
"""
from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as nnf
from torch.utils.data import DataLoader, TensorDataset

import attnfast
from attnfast import GGAM, SharpenFocus
from attnfast.baseline import Baseline
from attnfast.train import data as data_mod
from attnfast.train import models
from attnfast.train.recipes import RECIPES

RECIPE = RECIPES["digits"]
LOCALIZATION = ("inner_target_energy", "inner_target_pointing", "last_target_energy",
                "last_target_pointing")


# ----------------------------------------------------------------------------- data

def split_per_class(y, frac, seed=0):
    """(train, val) index tensors: per class, a random ``frac`` for validation."""
    g = torch.Generator().manual_seed(seed)
    tr, va = [], []
    for c in y.unique().tolist():
        idx = (y == c).nonzero()[:, 0]
        idx = idx[torch.randperm(len(idx), generator=g)]
        cut = round(frac * len(idx))
        va.append(idx[:cut])
        tr.append(idx[cut:])
    return torch.cat(tr).sort().values, torch.cat(va).sort().values


def canvases(x, y, size=32, seed=0):
    """Each image (1 x 8 x 8 source resized to 12-16 px) at a random place on a size x size
    canvas with two fragments (a 40-70 % crop) of other-class images outside its box; returns
    (images, labels, boxes (y0, x0, y1, x1) half-open of the digit's non-zero pixels)."""
    rng = random.Random(seed)
    src = x[:, 0]
    out, boxes = torch.zeros(len(x), 1, size, size), torch.zeros(len(x), 4, dtype=torch.long)
    for i in range(len(x)):
        s = rng.randint(12, 16)
        digit = nnf.interpolate(src[i][None, None], size=(s, s), mode="bilinear",
                                align_corners=False)[0, 0].clamp(0, 1)
        r, c = rng.randint(0, size - s), rng.randint(0, size - s)
        out[i, 0, r:r + s, c:c + s] = digit
        rows, cols = digit.gt(0).any(1).nonzero()[:, 0], digit.gt(0).any(0).nonzero()[:, 0]
        boxes[i] = torch.tensor([r + rows[0], c + cols[0], r + rows[-1] + 1, c + cols[-1] + 1])
        for _ in range(2):
            j = rng.randrange(len(x))
            while y[j] == y[i]:
                j = rng.randrange(len(x))
            f = max(2, round(s * rng.uniform(0.4, 0.7)))
            other = nnf.interpolate(src[j][None, None], size=(s, s), mode="bilinear",
                                    align_corners=False)[0, 0].clamp(0, 1)
            a, b = rng.randint(0, s - f), rng.randint(0, s - f)
            for _try in range(50):
                pr, pc = rng.randint(0, size - f), rng.randint(0, size - f)
                if pr >= boxes[i, 2] or pr + f <= boxes[i, 0] or pc >= boxes[i, 3] \
                        or pc + f <= boxes[i, 1]:
                    patch = out[i, 0, pr:pr + f, pc:pc + f]
                    patch.copy_(torch.maximum(patch, other[a:a + f, b:b + f]))
                    break
    return out, y, boxes


def validation_data(name):
    """(Data whose ``test`` is the validation split, validation boxes or None)."""
    if name in ("digits", "canvas"):
        data = data_mod.load("digits", image_size=8 if name == "canvas" else 32, seed=0)
        x, y = data.train.tensors
        tr, va = split_per_class(y, 0.2)
        if name == "canvas":
            (xt, yt, _), (xv, yv, bv) = canvases(x[tr], y[tr], seed=1), canvases(x[va], y[va],
                                                                              seed=2)
            m, s = xt.mean().item(), xt.std().item()
            data.mean, data.std, data.image_size, data.pad = (m,), (s,), 32, 2
            data.train, data.test = TensorDataset(xt, yt), TensorDataset(xv, yv)
            return data, bv
        data.train, data.test = TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va])
        return data, None
    data = data_mod.load(name, seed=0)
    if getattr(data, "val", None) is None:
        raise SystemExit(f"{name}: no validation split (Data.val) to measure on")
    data.test = data.val
    items = [data.val[i] for i in range(len(data.val))]
    boxes = torch.stack([torch.as_tensor(it[2]) for it in items]) if len(items[0]) > 2 else None
    return data, boxes


# ----------------------------------------------------------------------------- training

def make(method, data, seed, **kw):
    """ResNet-20 and its wrapper; kw go to the wrapper (GGAM: at the last stage)."""
    torch.manual_seed(seed)
    model = models.create("resnet20", data.num_classes, data.in_channels)
    inner, last = model.attention_layers
    if method == "ggam":
        return model, GGAM(model, last, channels=model.stage_channels[last], **kw)
    if method == "sharpen-focus":
        return model, SharpenFocus(model, inner, last, **kw)
    return model, Baseline(model)


def train(net, data, seed, epochs):
    """The digits recipe's SGD loop; returns seconds spent."""
    torch.manual_seed(seed)
    loader = DataLoader(data.train, batch_size=RECIPE["batch_size"], shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(net.parameters(), lr=RECIPE["lr"], momentum=RECIPE["momentum"],
                          weight_decay=RECIPE["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    net.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            step = net(data.prepare(batch[0], train=True), batch[1])
            if not torch.isfinite(step.loss):
                raise FloatingPointError("non-finite loss")
            opt.zero_grad(set_to_none=True)
            step.loss.backward()
            opt.step()
            sched.step()
    return time.perf_counter() - t0


def localization(maps, boxes, size):
    """(energy share of the positive map inside the box, argmax inside the box) per image."""
    up = nnf.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0].clamp_min(0).flatten(1)
    r = torch.arange(size)
    rows, cols = r[None, :, None], r[None, None, :]
    inside = ((rows >= boxes[:, 0, None, None]) & (rows < boxes[:, 2, None, None])
              & (cols >= boxes[:, 1, None, None]) & (cols < boxes[:, 3, None, None])).flatten(1)
    total = up.sum(1)
    energy = torch.where(total > 0, (up * inside).sum(1) / total.clamp_min(1e-30),
                         inside.float().mean(1))
    top = up == up.amax(1, keepdim=True)
    return energy, (top & inside).sum(1) / top.sum(1)


def evaluate(model, data, boxes):
    """Validation top-1 (%), and with boxes the localization of the target maps (pixel
    attention, eval mode) at both supervised layers."""
    model.eval()
    inner, last = model.attention_layers
    probe = SharpenFocus(model, inner, last, second_order=False)
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    y = torch.stack([torch.as_tensor(data.test[i][1]) for i in range(len(data.test))])
    out, maps = {"top1": 0.0}, {"inner_target": [], "last_target": []}
    for i in range(0, len(x), 128):
        xb = data.prepare(x[i:i + 128], train=False)
        with torch.no_grad():
            out["top1"] += (model(xb).argmax(1) == y[i:i + 128]).sum().item()
        if boxes is not None:
            m = probe.attention_maps(xb, y[i:i + 128])
            for k in maps:
                maps[k].append(m[k])
    probe._tap.remove()
    out["top1"] *= 100 / len(x)
    for k, v in maps.items():
        if v:
            e, p = localization(torch.cat(v), boxes, data.image_size)
            out[f"{k}_energy"], out[f"{k}_pointing"] = e.mean().item(), p.mean().item()
    return out


def guide_scale(net, data):
    """Mean |beta| and max_k |C q_k - 1| (q the paper's guide) on the first validation batch."""
    x = torch.stack([data.test[i][0] for i in range(64)])
    y = torch.stack([torch.as_tensor(data.test[i][1]) for i in range(64)])
    net.eval()
    with torch.no_grad():
        beta = net(data.prepare(x, train=False), y).gradcam_weights
    sig = torch.sigmoid(beta)
    q = sig / sig.sum(1, keepdim=True)
    return {"beta_abs_mean": beta.abs().mean().item(),
            "q_max_dev": (q * q.shape[1] - 1).abs().amax().item()}


def mean_sd(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.4g} ± {sd:.2g}"


# ----------------------------------------------------------------------------- subcommands

class SigmoidChannelAttention(attnfast.ggam.ChannelSpatialAttention):
    """The module before issue #9: S = sigmoid(...) (SE), for the 'before' measurement."""

    def forward(self, a):
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(a.mean(dim=(2, 3))))).float())
        d, t = attnfast.channel_spatial_attention(a, s)
        return d * (a.shape[2] * a.shape[3]), s, t


def first_batch(data, n=64, split="train"):
    ds = data.train if split == "train" else data.test
    x = torch.stack([ds[i][0] for i in range(n)])
    y = torch.stack([torch.as_tensor(ds[i][1]) for i in range(n)])
    return data.prepare(x, train=False), y


def coupling(model, x, y):
    """Relative L2 distance at the inner layer (target class) between the captured train-mode
    gradient (coupled), the diagonal block dY[n]/dF[n] of the batch Jacobian (statistics not
    fixed: n's own share counted) and the fixed-statistics per-sample gradient; and between
    the max-normalized pixel maps."""
    inner, last = model.attention_layers
    model.train()
    g = {}
    for flag in (False, True):
        sf = SharpenFocus(model, inner, last, per_sample_grads=flag)
        with torch.enable_grad():
            r = sf._gradients(x, y, False)
        g[flag] = (r.inner, r.inner_target)
        sf._tap.remove()
    f = g[False][0]
    sf = SharpenFocus(model, inner, last)
    with torch.enable_grad():
        r = sf._gradients(x, y, False)
        scores = r.logits.gather(1, y[:, None])[:, 0]
        jac, = torch.autograd.grad(scores, r.inner, torch.eye(len(y)), is_grads_batched=True,
                                   retain_graph=True)
    sf._tap.remove()
    diag = jac[torch.arange(len(y)), torch.arange(len(y))]
    fixed, coupled = g[True][1], g[False][1]

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    def nmap(grad):
        return attnfast.normalize_attention(attnfast.pixel_attention(f, grad))
    return {"coupled_vs_fixed": rel(coupled, fixed), "diagonal_vs_fixed": rel(diag, fixed),
            "coupled_vs_diagonal": rel(coupled, diag),
            "map_coupled_vs_fixed": rel(nmap(coupled), nmap(fixed))}


def seeds(args):
    return range(args.first_seed, args.first_seed + args.seeds)


def cmd_init(args):
    data, _ = validation_data(args.data)
    x, y = first_batch(data)
    rows = []
    for seed in seeds(args):
        model, gg = make("ggam", data, seed)
        gg.train()
        with torch.no_grad():
            soft = gg(x, y)
            se = SigmoidChannelAttention(gg.attention.fc2.out_features, 16)
            se.load_state_dict(gg.attention.state_dict())
            gg.attention = se
            sig = gg(x, y)
        s = sig.channel_weights
        beta = sig.gradcam_weights
        q = torch.sigmoid(beta) / torch.sigmoid(beta).sum(1, keepdim=True)
        row = {"seed": seed, "kl_sigmoid_S": sig.attention_loss.item(),
               "kl_sigmoid_S_normalized": attnfast.ggam_loss(s / s.sum(1, keepdim=True),
                                                             beta).mean().item(),
               "kl_softmax_S": soft.attention_loss.item(),
               "kl_softmax_S_standardized_guide": attnfast.ggam_loss(
                   soft.channel_weights,
                   attnfast.ggam.guide_logits(soft.gradcam_weights, "standardized")).mean().item(),
               "beta_abs_mean": beta.abs().mean().item(), "beta_abs_max": beta.abs().max().item(),
               "q_max_dev": (q * q.shape[1] - 1).abs().amax().item()}
        gg._handle.remove()
        model, _ = make("baseline", data, seed)
        row.update({f"init_{k}": v for k, v in coupling(model, x, y).items()})
        train(Baseline(model), data, seed, args.epochs)
        row.update({f"trained_{k}": v for k, v in coupling(model, x, y).items()})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"init": rows}


def cmd_ggam(args):
    data, boxes = validation_data(args.data)
    rows = []
    for seed in seeds(args) if args.baseline else ():
        model, net = make("baseline", data, seed)
        secs = train(net, data, seed, args.epochs)
        rows.append({"method": "baseline", "seed": seed, "seconds": secs,
                     **evaluate(model, data, boxes)})
        print(json.dumps(rows[-1]), flush=True)
    for guide in args.guides.split(","):
        for weight in (float(w) for w in args.weights.split(",")):
            if weight == 0 and guide != args.guides.split(",")[0]:
                continue  # the module without its loss: once, the guide plays no part
            for seed in seeds(args):
                model, gg = make("ggam", data, seed, weight=weight, guide=guide)
                try:
                    secs = train(gg, data, seed, args.epochs)
                except FloatingPointError:
                    rows.append({"method": "ggam", "guide": guide, "weight": weight,
                                 "seed": seed, "top1": None, "diverged": True})
                    continue
                rows.append({"method": "ggam", "guide": guide, "weight": weight, "seed": seed,
                             "seconds": secs, **evaluate(model, data, boxes),
                             **guide_scale(gg, data)})
                print(json.dumps(rows[-1]), flush=True)
    return {"ggam": rows}


def step_time_ratio(data, seed=0, steps=12):
    """Median step time (forward, attention, backward, SGD) of per-sample over coupled Sharpen
    Focus, the two stepped alternately on the same batches."""
    nets = [make("sharpen-focus", data, seed, per_sample_grads=f)[1] for f in (False, True)]
    base = make("baseline", data, seed)[1]
    opts = [torch.optim.SGD(n.parameters(), lr=0.01) for n in (*nets, base)]
    x, y = first_batch(data)
    times = [[], [], []]
    for it in range(steps + 3):
        for k, (net, opt) in enumerate(zip((*nets, base), opts)):
            net.train()
            t0 = time.perf_counter()
            step = net(x, y)
            opt.zero_grad()
            step.loss.backward()
            opt.step()
            if it >= 3:
                times[k].append(time.perf_counter() - t0)
    med = [statistics.median(t) for t in times]
    return {"per_sample_over_coupled": med[1] / med[0], "coupled_over_baseline": med[0] / med[2]}


def cmd_capture(args):
    data, boxes = validation_data(args.data)
    rows = []
    for seed in seeds(args):
        for label, method, kw in (("baseline", "baseline", {}),
                                  ("sf-coupled", "sharpen-focus", {}),
                                  ("sf-per-sample", "sharpen-focus", {"per_sample_grads": True})):
            model, net = make(method, data, seed, **kw)
            secs = train(net, data, seed, args.epochs)
            rows.append({"method": label, "seed": seed, "seconds": secs,
                         **evaluate(model, data, boxes)})
            print(json.dumps(rows[-1]), flush=True)
    ratio = step_time_ratio(data)
    print(json.dumps(ratio))
    return {"capture": rows, "step_time": ratio}


def table(rows, keys, group):
    """Markdown: one row per group, mean ± sd of each key, and the first key seed by seed."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r.get(g) for g in group), []).append(r)
    keys = [k for k in keys if any(r.get(k) is not None for r in rows)]
    lines = ["| " + " | ".join([*group, *keys, f"{keys[0]} by seed"]) + " |",
             "|" + "---|" * (len(group) + len(keys) + 1)]
    for g, rs in groups.items():
        rs = sorted(rs, key=lambda r: r.get("seed", 0))
        each = ", ".join(f"{r['seed']}: {r[keys[0]]:.4g}" if r.get(keys[0]) is not None
                         else f"{r['seed']}: diverged" for r in rs)
        lines.append("| " + " | ".join([*(str(v) for v in g), *(mean_sd(rs, k) for k in keys),
                                        each]) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("init", "ggam", "capture", "report"))
    p.add_argument("files", nargs="*", help="report: the json files of earlier runs")
    p.add_argument("--data", default=None, help="digits (ggam, init), canvas (capture), or a "
                                                "trainer source with a validation split")
    p.add_argument("--seeds", type=int, default=2, help="how many seeds")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--weights", default="0,0.1,1,3,9")
    p.add_argument("--guides", default="paper,standardized")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="ggam: also train the baseline")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default="runs/ggam_capture")
    args = p.parse_args(argv)
    args.data = args.data or ("canvas" if args.what == "capture" else "digits")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "report":
        results = [json.loads(Path(f).read_text()) for f in args.files]
    else:
        result = {"init": cmd_init, "ggam": cmd_ggam, "capture": cmd_capture}[args.what](args)
        result["args"] = vars(args)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.what}-{args.data}.json").write_text(json.dumps(result, indent=1))
        results = [result]
    for what, keys, group in (
            ("ggam", ["top1", *LOCALIZATION, "beta_abs_mean", "q_max_dev"],
             ["method", "guide", "weight"]),
            ("capture", ["top1", *LOCALIZATION], ["method"]),
            ("init", [k for k in (results[0].get("init") or [{}])[0] if k != "seed"], [])):
        rows = [r for res in results for r in res.get(what, [])]
        if rows:
            print(table(rows, keys, group))


if __name__ == "__main__":
    main()
