"""The trainer's behaviour a user relies on without seeing it: a new sample order every epoch,
metrics within their ranges, NaN in gives NaN out (loss and metrics, never a made-up number),
and a clear message for --device cuda without CUDA."""
import contextlib
import json
import math

import pytest
import torch
from torch.utils.data import DataLoader, Subset

import attnfast
from attnfast import train
from attnfast.train import data as data_mod
from attnfast.train import loop, methods, recipes
from attnfast.train.distributed import Dist
from attnfast.train.localize import energy_in_box, pointing_in_box
from attnfast.train.metrics import evaluate

from helpers import LOCATED_DATA, TRAIN_TINY

# the trainer tests' tiny run (later options win): batch 8, one method
TINY = [*TRAIN_TINY, "--batch-size", "8", "--method", "baseline"]
LOCATED = [*TRAIN_TINY, *LOCATED_DATA]


pytestmark = pytest.mark.usefixtures("torch_backend")  # conftest


def test_every_epoch_draws_a_new_order_and_a_resumed_run_the_same(tmp_path, monkeypatch):
    """3 epochs of 32 images: the order each epoch trains on (the loader's sampler, read as the
    epoch starts) is a permutation of the 32, differs from epoch to epoch, and is the one of
    seed + epoch, so that a resumed run draws the same order as an uninterrupted one."""
    seen, real = [], loop.train_epoch

    def spy(net, loader, *a, **k):
        seen.append(list(loader.sampler))
        return real(net, loader, *a, **k)

    monkeypatch.setattr(loop, "train_epoch", spy)
    assert train.main([*TINY, "--epochs", "3", "--seed", "7", "--out", str(tmp_path)]) == 0
    assert len(seen) == 3
    assert all(sorted(order) == list(range(32)) for order in seen)
    assert seen[0] != seen[1] and seen[1] != seen[2] and seen[0] != seen[2]
    for epoch, order in enumerate(seen):
        g = torch.Generator().manual_seed(7 + epoch)  # DistributedSampler's rule
        assert order == torch.randperm(32, generator=g).tolist()


def _in(lo, hi, v):
    return lo <= v <= hi


def test_metrics_lie_within_their_ranges(tmp_path):
    """One epoch of Sharpen Focus (first order) on the located digits: every reported number in its range."""
    assert train.main([*LOCATED, "--method", "sharpen-focus", "--first-order",
                       "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "sharpen-focus" / "metrics.json").read_text())["epochs"][0]
    for k in ("test_top1", "test_top5"):
        assert _in(0, 100, row[k]), (k, row[k])
    assert row["test_top5"] >= row["test_top1"]
    for layer in ("inner", "last"):
        for k in ("energy", "pointing", "confuser_energy"):
            assert _in(0, 1, row[f"test_{layer}_{k}"]), (layer, k)
        assert _in(0, 1, row[f"test_{layer}_iou"])
        assert _in(0, 1, row[f"train_{layer}_iou"])
    assert math.isfinite(row["test_consistency"]) and row["test_consistency"] >= 0
    assert math.isfinite(row["train_consistency"]) and row["train_consistency"] >= 0
    for k in ("train_loss", "train_classification_loss", "train_attention_loss"):
        assert math.isfinite(row[k]) and row[k] >= 0, k
    assert row["train_images_per_s"] > 0 and row["train_images"] == 48 and row["lr"] > 0


def test_localization_scores_lie_in_0_1_and_nan_stays_nan():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(6, 8, 8, generator=g)
    maps[1] = 0  # all zero: chance level, the box's share
    maps[2] = -1  # all negative: no positive mass, chance level too
    maps[3, 2, 5] = float("nan")
    inside = torch.zeros(6, 8, 8, dtype=torch.bool)
    inside[:, 2:6, 1:5] = True
    e, p = energy_in_box(maps, inside), pointing_in_box(maps, inside)
    ok = torch.tensor([True, True, True, False, True, True])
    assert ((e[ok] >= 0) & (e[ok] <= 1)).all() and ((p[ok] >= 0) & (p[ok] <= 1)).all()
    assert e[1].item() == pytest.approx(16 / 64) and e[2].item() == pytest.approx(16 / 64)
    assert p[1].item() == pytest.approx(16 / 64)
    assert math.isnan(e[3].item()) and math.isnan(p[3].item())


def test_nan_input_gives_nan_metrics():
    """evaluate() over located digits, one image all NaN: every metric is NaN (the image has no
    prediction and no map); the same images without it give finite numbers."""
    cfg = recipes.configure(recipes.parse_args(LOCATED))
    d = data_mod.load("located-digits")
    torch.manual_seed(0)
    _, _, probe, _ = methods.build(cfg, "baseline", d, Dist("cpu"))
    part = Subset(d.test, range(8))
    images = torch.stack([part[i][0] for i in range(8)]).float()
    rest = [torch.stack([part[i][j] for i in range(8)]) for j in (1, 2)]

    def metrics(x):
        loader = DataLoader(list(zip(x, *rest)), batch_size=4)
        return evaluate(probe, loader, d, contextlib.nullcontext, Dist("cpu"))

    clean = metrics(images)
    assert all(math.isfinite(v) for v in clean.values()), clean
    bad = images.clone()
    bad[5] = float("nan")
    got = metrics(bad)
    assert set(got) == set(clean)
    assert all(math.isnan(v) for v in got.values()), got


def test_nan_input_stops_training_with_a_nan_loss(tmp_path, monkeypatch, capsys):
    real = data_mod.Data.prepare

    def with_nan(self, images, train):
        x = real(self, images, train)
        if train:
            x[0, 0, 0, 0] = float("nan")
        return x

    monkeypatch.setattr(data_mod.Data, "prepare", with_nan)
    assert train.main([*TINY, "--epochs", "1", "--out", str(tmp_path)]) == 1
    assert "the loss became nan at step 1" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a usable CUDA")
def test_device_cuda_without_cuda_says_so(tmp_path):
    with pytest.raises(SystemExit, match="--device cuda: (this PyTorch .* is built without CUDA"
                                         "|no CUDA device is visible); use --device cpu"):
        train.main([*TINY, "--device", "cuda", "--out", str(tmp_path)])
    assert not (tmp_path / "baseline").exists()  # refused before any output


def test_unknown_device_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        recipes.parse_args(["--device", "gpu"])
    assert "invalid choice: 'gpu'" in capsys.readouterr().err
