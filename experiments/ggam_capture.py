"""GGAM's KL and guide at initialization, and how far the train-mode captured gradient is from the
per-sample one: the measurements behind the tables of docs/GGAM_AND_CAPTURE.md sections 1-3 that
are not a training sweep (those come from ``experiments/sweep.py``, i.e. the trainer itself).

Everything is built by the trainer (``attnfast.train``): its recipe and options, its data (the
first 64 training images, prepared without augmentation), its model and method wrappers
(``attnfast.train.methods.build``); with ``--train`` the models are trained by the trainer too
(``python -m attnfast.train --eval-split val``, its checkpoint then loaded). Per seed:

* ``kl_*``: GGAM's mean symmetric KL on that batch in train mode with the module's softmax S
  (now), the SE sigmoid S of before (the same weights), that sigmoid S divided by its sum, and
  the softmax S against the standardized guide; ``beta_abs_*`` and ``q_max_dev`` =
  max_k |C q_k - 1|: the scale of the Grad-CAM channel weights beta and how uniform the paper's
  guide q = sigmoid(beta) / sum sigmoid(beta) is;
* ``coupled_vs_fixed``, ``diagonal_vs_fixed``, ``map_coupled_vs_fixed``: relative L2 distances at
  the inner layer (target class) between the captured train-mode gradient (coupled), the diagonal
  block dY[n]/dF[n] of the batch Jacobian and the gradient at fixed batch statistics
  (``LayerTap(per_sample=True)``), and between the max-normalized pixel maps; ``init_`` at
  initialization, ``trained_`` after training (``--train``; the baseline's model, and GGAM's beta
  after training GGAM).

    python experiments/ggam_capture.py --seeds 2 --threads 1                  # initialization
    python experiments/ggam_capture.py --seeds 2 --threads 1 --train          # and trained
    python experiments/ggam_capture.py --trainer "--recipe digits --model resnet20"

Writes ``<out>/ggam_capture.json`` and prints one Markdown table (mean ± sd over the seeds and
every seed's value).
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
from pathlib import Path

import torch

import attnfast
from attnfast.capture import LayerTap, score_grads
from attnfast.ggam import ChannelSpatialAttention, guide_logits
from attnfast.train import checkpoints, cli, methods, recipes
from attnfast.train.distributed import Dist


class SigmoidChannelAttention(ChannelSpatialAttention):
    """The module before issue #9: S = sigmoid(...) (SE), for the 'before' measurement."""

    def forward(self, a):
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(a.mean(dim=(2, 3))))).float())
        d, t = attnfast.channel_spatial_attention(a, s)
        return d * (a.shape[2] * a.shape[3]), s, t


def first_batch(data, n=64):
    """(images prepared without augmentation, labels) of the first ``n`` training images."""
    items = [data.train[i] for i in range(min(n, len(data.train)))]
    x = torch.stack([it[0] for it in items])
    y = torch.stack([torch.as_tensor(it[1]) for it in items])
    return data.prepare(x, train=False), y


def guide_numbers(step):
    """The scale of beta and the deviation of the paper's guide from uniform, of a GGAM step."""
    beta = step.gradcam_weights
    q = torch.sigmoid(beta) / torch.sigmoid(beta).sum(1, keepdim=True)
    return {"beta_abs_mean": beta.abs().mean().item(), "beta_abs_max": beta.abs().max().item(),
            "q_max_dev": (q * q.shape[1] - 1).abs().amax().item()}


def kl_numbers(gg, x, y):
    """GGAM's mean symmetric KL on (x, y) in train mode, each against the guide it names (paper:
    the raw beta; standardized), with the softmax S and with the SE sigmoid S."""
    gg.train()
    with torch.no_grad():
        soft = gg(x, y)
        module = gg.attention
        se = SigmoidChannelAttention(module.fc2.out_features, module.fc2.out_features
                                     // module.fc1.out_features)
        se.load_state_dict(module.state_dict())
        gg.attention = se
        sig = gg(x, y)
        gg.attention = module

    def kl(s, beta, guide="paper"):
        return attnfast.ggam_loss(s, guide_logits(beta, guide)).mean().item()
    s, beta = sig.channel_weights, sig.gradcam_weights
    return {"kl_sigmoid_S": kl(s, beta),
            "kl_sigmoid_S_normalized": kl(s / s.sum(1, keepdim=True), beta),
            "kl_softmax_S": kl(soft.channel_weights, soft.gradcam_weights),
            "kl_softmax_S_standardized_guide": kl(soft.channel_weights, soft.gradcam_weights,
                                                  "standardized"),
            **guide_numbers(soft)}


def coupling(model, inner, x, y):
    """The distances of the module docstring at layer ``inner`` (model in train mode)."""
    model.train()
    grads = {}
    for per_sample in (False, True):
        tap = LayerTap(model, (inner,), per_sample=per_sample)
        with torch.enable_grad(), tap.capture() as store:
            logits = model(x)
            feats = store[inner]
            grads[per_sample], = score_grads(logits, y, (feats,), False)
            if not per_sample:
                scores = logits.gather(1, y[:, None])[:, 0]
                jac, = torch.autograd.grad(scores, feats, torch.eye(len(y)),
                                           is_grads_batched=True)
                coupled_feats = feats.detach()
        tap.remove()
    diag = jac[torch.arange(len(y)), torch.arange(len(y))]
    coupled, fixed = grads[False], grads[True]

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    def nmap(g):
        return attnfast.normalize_attention(attnfast.pixel_attention(coupled_feats, g))
    return {"coupled_vs_fixed": rel(coupled, fixed), "diagonal_vs_fixed": rel(diag, fixed),
            "map_coupled_vs_fixed": rel(nmap(coupled), nmap(fixed))}


def trained(cfg, method, data, seed, out, options):
    """(model, net) of ``method`` trained by the trainer at ``seed`` (a finished run under
    ``out`` is reused), loaded from its checkpoint."""
    run = Path(out) / method / f"seed{seed}"
    if not (run / method / "checkpoint.pt").is_file():
        argv = [*options, "--method", method, "--seed", str(seed), "--seeds", "1",
                "--eval-split", "val", "--pictures", "0", "--no-progress", "--out", str(run)]
        if cli.main(argv):
            raise SystemExit(f"the trainer failed: {shlex.join(argv)}")
    torch.manual_seed(seed)
    model, net, _, _ = methods.build(cfg, method, data, Dist("cpu"))
    net.load_state_dict(checkpoints.load(run / method / "checkpoint.pt")["net"])
    return model, net


def measure(args):
    """One row per seed (the module docstring's numbers)."""
    options = shlex.split(args.trainer)
    cfg = recipes.configure(recipes.parse_args([*options, "--eval-split", "val"]))
    data = cli.load_data(cfg)
    x, y = first_batch(data)
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        torch.manual_seed(seed)
        _, gg, _, _ = methods.build(cfg, "ggam", data, Dist("cpu"))
        row = {"seed": seed, **kl_numbers(gg, x, y)}
        torch.manual_seed(seed)
        model, _, probe, _ = methods.build(cfg, "baseline", data, Dist("cpu"))
        row.update({f"init_{k}": v for k, v in coupling(model, probe.inner_layer, x, y).items()})
        if args.train:
            model, _ = trained(cfg, "baseline", data, seed, args.out, options)
            row.update({f"trained_{k}": v
                        for k, v in coupling(model, probe.inner_layer, x, y).items()})
            _, gg = trained(cfg, "ggam", data, seed, args.out, options)
            gg.train()
            with torch.no_grad():
                row.update({f"trained_ggam_{k}": v for k, v in guide_numbers(gg(x, y)).items()})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"trainer_options": options, "model": cfg["model"], "data": cfg["data"],
            "rows": rows}


def table(rows):
    """Markdown: one line per number, mean ± sd over the seeds and each seed's value."""
    lines = ["| number | mean ± sd | by seed |", "|---|---|---|"]
    for key in (k for k in rows[0] if k != "seed"):
        vals = [r[key] for r in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        lines.append(f"| {key} | {statistics.mean(vals):.4g} ± {sd:.2g} | "
                     + ", ".join(f"{v:.4g}" for v in vals) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--train", action="store_true",
                   help="also train the baseline and GGAM with the trainer and measure them")
    p.add_argument("--trainer", default="", help="trainer options (default: its recipe)")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default="runs/ggam_capture")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ggam_capture.json").write_text(json.dumps(result, indent=1))
    print(table(result["rows"]))


if __name__ == "__main__":
    main()
