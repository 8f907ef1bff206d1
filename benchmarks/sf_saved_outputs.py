"""Forward + backward of the fused sharpen_focus_loss: this tree against another (e.g. main), side
by side in one run.

Two versions of attnfast register the same torch.library namespace, so they cannot share one
process: each round runs one worker process per tree (alternating, so both see the same load on
a shared machine), each worker times every case and prints JSON; the report is the median over
rounds of each worker's median, and the ratio old / new (> 1: the new tree is faster).

    python benchmarks/sf_saved_outputs.py --old /tmp/sf_old [--rounds 5] [--reps 10] [--threads 1]

``--old`` is a tree with the other version (sources and its built ``attnfast/_C*.so``), e.g.
``git archive main | tar -x -C /tmp/sf_old`` plus the .so of a main checkout.
The default cases: N = 64, K = 64 at both layers, inner 16 x 16, last 8 x 8, float32, the pixel
and channel kinds, with 4-D last-layer gradients and with N x K ones ("head"), on the "cpu" and
"torch" backends, forward + backward and the backward alone, on ``--threads`` CPU threads
(default 1: a per-core figure that a loaded shared machine disturbs least). Speed is a ratio
from one run, never an absolute figure (docs/SPEC.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def _cases(n=64, k=64, inner=(16, 16), last=(8, 8)):
    return [dict(backend=b, kind=kind, head=head, n=n, k=k, inner=inner, last=last)
            for b in ("cpu", "torch") for kind in ("pixel", "channel") for head in (False, True)]


def _name(c):
    return f"{c['backend']:5s} {c['kind']:7s} {'head' if c['head'] else '4-D '} " \
           f"N={c['n']} K={c['k']} {c['inner'][0]}x{c['inner'][1]}/{c['last'][0]}x{c['last'][1]}"


def worker(reps: int, warmup: int, threads: int) -> None:
    """Time every case with the attnfast importable here; JSON {name: median s}."""
    import torch

    import attnfast
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out = {}
    for c in _cases():
        n, k = c["n"], c["k"]
        fi, fl = torch.randn(n, k, *c["inner"]), torch.randn(n, k, *c["last"])
        gi = [torch.randn(n, k, *c["inner"]) for _ in range(2)]
        gl = [torch.randn(n, k) / 10 if c["head"] else torch.randn(n, k, *c["last"])
              for _ in range(2)]
        xs = [x.requires_grad_() for x in (fi, *gi, fl, *gl)]
        times, back = [], []
        with attnfast.use_backend(c["backend"]):
            for i in range(warmup + reps):
                t0 = time.perf_counter()
                loss = attnfast.sharpen_focus_loss(*xs, attention=c["kind"]).loss
                t1 = time.perf_counter()
                torch.autograd.grad(loss, xs)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
                    back.append(time.perf_counter() - t1)
        out[_name(c) + " fwd+bwd"] = statistics.median(times)
        out[_name(c) + " bwd"] = statistics.median(back)
    print(json.dumps(out))


def _run(tree: Path, reps: int, warmup: int, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, __file__, "--worker", "--reps", str(reps), "--warmup", str(warmup),
           "--threads", str(threads)]
    res = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", type=Path, help="tree of the version to compare against")
    p.add_argument("--new", type=Path, default=HERE, help="this tree (default)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a.reps, a.warmup, a.threads)
    if a.old is None:
        p.error("--old is required")
    runs = {"old": [], "new": []}
    for _ in range(a.rounds):
        for which in ("old", "new"):
            runs[which].append(_run(getattr(a, which), a.reps, a.warmup, a.threads))
    print(f"fused sharpen_focus_loss, median of {a.rounds} rounds x {a.reps} reps, "
          f"{a.threads} thread(s); old = {a.old}, new = {a.new}")
    print(f"{'case':56s} {'old ms':>8s} {'new ms':>8s} {'old/new':>8s}")
    for name in runs["old"][0]:
        old = statistics.median(r[name] for r in runs["old"])
        new = statistics.median(r[name] for r in runs["new"])
        print(f"{name:56s} {old * 1e3:8.2f} {new * 1e3:8.2f} {old / new:8.2f}")


if __name__ == "__main__":
    main()
