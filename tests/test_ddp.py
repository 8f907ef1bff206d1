"""Data-parallel training: 2 processes (gloo, CPU) on a split batch make the same parameter update
as 1 process on the whole batch, for every method; and the trainer runs under torchrun.

The model is in eval mode (BatchNorm on running statistics) so that samples are independent;
the losses are batch means, and DDP averages the two halves' gradients, which is the whole
batch's gradient.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import attnfast
from attnfast import GGAM, SharpenFocus
from attnfast.baseline import Baseline
from attnfast.train import models

N, C, WORLD = 8, 5, 2
METHODS = ("baseline", "sharpen-focus", "ggam")


def _setup(method):
    torch.manual_seed(0)
    model = models.create("resnet8", C, in_channels=3).double().eval()
    if method == "ggam":
        net = GGAM(model, "layer3", channels=64, reduction=4, target="label").double()
    elif method == "sharpen-focus":
        net = SharpenFocus(model, "layer2", "layer3")
    else:
        net = Baseline(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 3, 12, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    return net, x, y


def _update(net, x, y, wrap=lambda n: n):
    """One SGD step; returns the new parameters."""
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    wrapped = wrap(net)  # kept alive through backward: DDP's reducer averages the gradients
    wrapped(x, y).loss.backward()
    opt.step()
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _worker(rank, init_file, out):
    torch.set_num_threads(1)
    attnfast.set_backend("torch")  # the wrappers and DDP are under test here, not the kernels
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    results = {}
    for method in METHODS:
        net, x, y = _setup(method)
        half = N // WORLD
        sl = slice(rank * half, (rank + 1) * half)
        results[method] = _update(net, x[sl], y[sl],
                                  lambda n: torch.nn.parallel.DistributedDataParallel(n))
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def test_two_processes_split_batch_equal_one_process_whole_batch(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=WORLD, join=True)
    got = torch.load(out, weights_only=True)
    with attnfast.use_backend("torch"):
        for method in METHODS:
            net, x, y = _setup(method)
            before = {k: v.detach().clone() for k, v in net.named_parameters()}
            want = _update(net, x, y)
            moved = max((want[k] - before[k]).abs().max().item() for k in want)
            assert moved > 1e-4, f"{method}: the step did not move the parameters"
            for k in want:
                err = (got[method][k] - want[k]).abs().max().item()
                assert err < 1e-10, f"{method} {k}: 2-process update differs by {err:.3e}"


@pytest.mark.parametrize("method", ["sharpen-focus"])
def test_trainer_under_torchrun(tmp_path, method):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "attnfast.train", "--method", method, "--data", "synthetic",
           "--train-size", "64", "--test-size", "32", "--model", "resnet8", "--image-size", "16",
           "--epochs", "1", "--batch-size", "16", "--pictures", "0", "--out", str(out),
           "--no-progress", "--seeds", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 process(es)" in r.stdout
    metrics = json.loads((out / method / "metrics.json").read_text())
    assert metrics["epochs"][0]["train_images"] == 64
    assert (out / method / "checkpoint.pt").is_file()


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_nodes_train_and_evaluate_as_one(tmp_path):
    """``torchrun --nnodes 2`` (two node ranks on this machine, c10d rendezvous on localhost,
    gloo, one process each) gives the same weights and metrics as one node with two processes
    and the same global batch (issue 19, item 9)."""
    args = ["-m", "attnfast.train", "--method", "sharpen-focus", "--data", "synthetic",
            "--train-size", "32", "--test-size", "16", "--model", "resnet8", "--image-size",
            "16", "--epochs", "1", "--batch-size", "16", "--pictures", "0", "--no-progress",
            "--seeds", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run"]
    one = subprocess.run([*run, "--standalone", "--nproc_per_node", "2", *args, "--out",
                          str(tmp_path / "one")], capture_output=True, text=True, timeout=300,
                         env=env)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    rdzv = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"localhost:{_free_port()}", "--rdzv_id", "attnfast-two-nodes"]
    nodes = [subprocess.Popen([*run, *rdzv, "--node_rank", str(i), *args, "--out",
                               str(tmp_path / "two")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in (0, 1)]
    outs = [p.communicate(timeout=300) for p in nodes]
    for p, (o, e) in zip(nodes, outs):
        assert p.returncode == 0, o[-3000:] + e[-3000:]
    assert "2 process(es)" in "".join(o for o, _ in outs)
    got = [torch.load(tmp_path / run_dir / "sharpen-focus" / "checkpoint.pt",
                      weights_only=True) for run_dir in ("one", "two")]
    assert got[0]["net"].keys() == got[1]["net"].keys()
    for k, v in got[0]["net"].items():
        assert torch.equal(v, got[1]["net"][k]), k
    rows = [json.loads((tmp_path / d / "sharpen-focus" / "metrics.json").read_text())["epochs"]
            for d in ("one", "two")]
    assert rows[0][0]["train_images"] == rows[1][0]["train_images"] == 32
    keep = lambda r: {k: v for k, v in r.items() if "time" not in k and "per_s" not in k}  # noqa
    assert keep(rows[0][0]) == keep(rows[1][0])
