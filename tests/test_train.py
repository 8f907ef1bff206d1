"""The trainer (in process, tiny models and data), data sources, metrics and models."""
import csv
import json
import pickle

import pytest
import torch

import attnfast
from attnfast import train
from attnfast.baseline import Baseline
from attnfast.train import data as data_mod
from attnfast.train import models, recipes, report
from attnfast.train.metrics import average_precision, roc_auc
from helpers import LOCATED_DATA, TRAIN_TINY

TINY = TRAIN_TINY


pytestmark = pytest.mark.usefixtures("torch_backend")  # conftest


def run(tmp_path, *extra, name="run"):
    out = tmp_path / name
    rc = train.main([*TINY, "--out", str(out), *extra])
    return rc, out


def load_ckpt(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("extra", [
    ["--method", "baseline"],
    ["--method", "sharpen-focus"],
    ["--method", "sharpen-focus", "--attention", "channel", "--first-order"],
    ["--method", "sharpen-focus", "--attention", "gradcam", "--head", "none"],
    ["--method", "ggam", "--reduction", "4"],
], ids=["baseline", "sf-pixel", "sf-channel-first-order", "sf-gradcam-autograd", "ggam"])
def test_short_run_of_every_method(tmp_path, extra, capsys):
    rc, out = run(tmp_path, *extra)
    assert rc == 0
    method = extra[1]
    m = json.loads((out / method / "metrics.json").read_text())
    row = m["epochs"][0]
    for key in ("train_loss", "train_images_per_s", "test_top1", "test_top5", "test_inner_iou",
                "test_last_iou", "test_consistency", "lr"):
        assert key in row and row[key] == row[key], key
    assert (row["train_attention_loss"] > 0) == (method != "baseline")
    assert ("train_consistency" in row) == (method == "sharpen-focus")
    rows = list(csv.DictReader((out / method / "metrics.csv").open()))
    assert len(rows) == 1 and float(rows[0]["epoch"]) == 1
    ck = load_ckpt(out / method / "checkpoint.pt")
    assert ck["epoch"] == 1 and ck["method"] == method
    assert method in capsys.readouterr().out


def test_compare_table_and_pictures(tmp_path, capsys):
    rc, out = run(tmp_path, "--compare", "--pictures", "2")
    assert rc == 0
    text = capsys.readouterr().out
    assert "sIoU inner" in text and "img/s" in text and "| baseline |" in text
    assert "| sharpen-focus |" in text and "total time:" in text
    assert "EPG" not in text  # synthetic data has no boxes: no localization columns
    for p in (out / "comparison.png", out / "baseline" / "attention.png",
              out / "sharpen-focus" / "attention.png"):
        assert p.is_file() and p.read_bytes()[:4] == b"\x89PNG" and f"picture: {p}" in text
    summary = json.loads((out / "summary.json").read_text())
    assert [s["method"] for s in summary["aggregate"]] == ["baseline", "sharpen-focus"]
    assert summary["seeds"] == [0] and summary["aggregate"][0]["top1"]["sd"] is None
    assert (out / "summary.md").read_text().count("| sharpen-focus |") == 1


@pytest.mark.parametrize("method", ["sharpen-focus", "ggam"])
def test_resume_after_interruption_equals_uninterrupted(tmp_path, method):
    """digits (random pad-crop augmentation: the RNG state must be restored too), 2 epochs with
    a cosine schedule, straight vs. stopped after 1 and resumed."""
    args = ["--data", "digits", "--train-size", "48", "--test-size", "16", "--image-size", "16",
            "--method", method, "--epochs", "2", "--reduction", "4"]
    assert run(tmp_path, *args, name="straight")[0] == 0
    assert run(tmp_path, *args, "--stop-after", "1", name="cut")[0] == 0
    cut = tmp_path / "cut" / method / "checkpoint.pt"
    assert load_ckpt(cut)["epoch"] == 1
    assert run(tmp_path, *args, "--resume", name="cut")[0] == 0
    a, b = load_ckpt(tmp_path / "straight" / method / "checkpoint.pt"), load_ckpt(cut)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["net"].items():
        assert torch.equal(v, b["net"][k]), f"{k} differs after resume"
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(s["momentum_buffer"], t["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    for key in ("train_loss", "test_top1", "test_last_iou"):
        assert [r[key] for r in a["history"]] == [r[key] for r in b["history"]]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    args = ["--method", "baseline", "--epochs", "3"]
    assert run(tmp_path, *args, "--stop-after", "1")[0] == 0
    ckpt = tmp_path / "run" / "baseline" / "checkpoint.pt"
    before = load_ckpt(ckpt)
    real = Baseline.forward

    def nan_forward(self, images, targets=None):
        step = real(self, images, targets)
        return step._replace(loss=step.loss * float("nan")) if targets is not None else step

    monkeypatch.setattr(Baseline, "forward", nan_forward)
    rc, _ = run(tmp_path, *args, "--resume")
    assert rc == 1
    err = capsys.readouterr().err
    assert "the loss became nan" in err and f"last good checkpoint {ckpt} (epoch 1) is kept" in err
    after = load_ckpt(ckpt)
    assert after["epoch"] == 1
    assert all(torch.equal(v, after["net"][k]) for k, v in before["net"].items())


def test_multilabel_run_reports_map_and_auc(tmp_path):
    rc, out = run(tmp_path, "--method", "sharpen-focus", "--data", "synthetic-multilabel")
    assert rc == 0
    row = json.loads((out / "sharpen-focus" / "metrics.json").read_text())["epochs"][0]
    assert 0 <= row["test_mAP"] <= 100 and 0 <= row["test_AUC"] <= 100
    assert "test_top1" not in row


def test_amp_channels_last_and_compile(tmp_path):
    assert run(tmp_path, "--method", "sharpen-focus", "--amp", "bf16", "--channels-last",
               name="amp")[0] == 0
    torch._dynamo.reset()
    assert run(tmp_path, "--method", "sharpen-focus", "--first-order", "--compile",
               "--compile-backend", "aot_eager", name="compiled")[0] == 0
    with pytest.raises(SystemExit, match="--compile needs --first-order"):
        run(tmp_path, "--method", "sharpen-focus", "--compile", name="bad")


def test_recipes_and_large_batch_scaling():
    cfg = recipes.configure(recipes.parse_args(["--recipe", "cifar100-resnet110"]))
    assert (cfg["data"], cfg["model"], cfg["lr"], cfg["weight_decay"], cfg["batch_size"],
            cfg["milestones"], cfg["epochs"]) == ("cifar100", "resnet110", 0.1, 5e-4, 128,
                                                  (81, 122), 160)
    big = recipes.configure(recipes.parse_args(["--recipe", "imagenet-resnet18",
                                                "--batch-size", "1024"]))
    assert big["lr"] == pytest.approx(0.4) and big["warmup_epochs"] == 5.0
    f = recipes.lr_factor(big, 10)
    assert f(0) == pytest.approx(0.02) and f(49) == pytest.approx(1.0)
    assert f(300) == pytest.approx(0.1) and f(600) == pytest.approx(0.01)
    cub = recipes.configure(recipes.parse_args(["--recipe", "cub200-resnet50", "--lr", "0.01"]))
    assert cub["image_size"] == 448 and cub["lr"] == 0.01 and cub["batch_size"] == 10
    cos = recipes.lr_factor(recipes.configure(recipes.parse_args(["--epochs", "4"])), 5)
    assert cos(0) == 1.0 and cos(10) == pytest.approx(0.5) and cos(20) == pytest.approx(0.0)
    with pytest.raises(SystemExit, match="unknown method"):
        recipes.configure(recipes.parse_args(["--method", "gcam"]))


# ----------------------------------------------------------------------------- seeds, splits

LOCATED = LOCATED_DATA


def test_seeds_aggregate_by_hand():
    def s(method, top1, epg):
        return {"method": method, "top1": top1, "last_energy": epg, "images_per_s": 10.0}
    runs = [[s("baseline", 80.0, 0.5), s("sharpen-focus", 82.0, 0.6)],
            [s("baseline", 84.0, 0.4), s("sharpen-focus", 83.0, 0.7)],
            [s("baseline", 86.0, 0.6), s("sharpen-focus", 87.0, 0.8)]]
    rows, diffs = report.aggregate(runs)
    base, sf = rows
    assert base["seeds"] == 3 and base["top1"]["mean"] == pytest.approx(250 / 3)
    # sample sd of 80, 84, 86: deviations -3.33, 0.67, 2.67 -> sqrt(18.67 / 2)
    assert base["top1"]["sd"] == pytest.approx((56 / 6) ** 0.5)
    assert sf["last_energy"]["mean"] == pytest.approx(0.7)
    assert sf["last_energy"]["sd"] == pytest.approx(0.1)
    assert base["images_per_s"]["sd"] == 0.0
    d, = diffs
    assert d["method"] == "Δ sharpen-focus − baseline"
    assert d["top1"]["values"] == pytest.approx([2.0, -1.0, 1.0])
    assert d["top1"]["mean"] == pytest.approx(2 / 3) and d["top1"]["sd"] == pytest.approx(
        (((2 - 2 / 3) ** 2 + (-1 - 2 / 3) ** 2 + (1 - 2 / 3) ** 2) / 2) ** 0.5)
    table = report.markdown_table(rows + diffs)
    assert "| baseline | 3 | 83.33 ± 3.06 | 0.500 ± 0.100 | 10 ± 0 |" in table
    assert "inner" not in table.split("\n")[0]  # only the columns the runs have


def test_seeds_run_every_seed_and_the_table_is_their_mean(tmp_path, capsys):
    rc, out = run(tmp_path, *LOCATED, "--compare", "--seeds", "2", "--seed", "5")
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [5, 6] and summary["split"] == "test"
    for method in ("baseline", "sharpen-focus"):
        rows = [json.loads((out / f"seed{s}" / method / "metrics.json").read_text())["summary"]
                for s in (5, 6)]
        agg = next(r for r in summary["aggregate"] if r["method"] == method)
        for key in ("top1", "inner_energy", "last_pointing", "last_confuser_energy", "last_iou",
                    "consistency", "images_per_s"):
            assert agg[key]["values"] == [r[key] for r in rows], key
            assert agg[key]["mean"] == pytest.approx((rows[0][key] + rows[1][key]) / 2)
        for key in ("inner_energy", "inner_pointing", "last_energy", "last_pointing"):
            assert all(0 <= r[key] <= 1 for r in rows)
    # two seeds train differently
    b = [json.loads((out / f"seed{s}" / "baseline" / "metrics.json").read_text())
         for s in (5, 6)]
    assert b[0]["epochs"][0]["train_loss"] != b[1]["epochs"][0]["train_loss"]
    text = capsys.readouterr().out
    assert "seeds 5, 6" in text and "EPG last" in text and "Δ sharpen-focus − baseline" in text


def test_eval_split_val_is_measured_and_disjoint_from_test(tmp_path):
    rc, out = run(tmp_path, *LOCATED, "--method", "baseline", "--eval-split", "val")
    assert rc == 0
    row = json.loads((out / "baseline" / "metrics.json").read_text())["epochs"][-1]
    assert "val_top1" in row and "val_last_energy" in row
    assert not any(k.startswith("test_") for k in row)
    d = data_mod.load("located-digits")
    assert not set(d.sources["val"].tolist()) & set(d.sources["test"].tolist())
    with pytest.raises(SystemExit, match="no 'val' split"):
        run(tmp_path, "--data", "digits", "--method", "baseline", "--eval-split", "val",
            name="digits")


def test_boxes_travel_with_their_images_through_torchrun_shards(tmp_path):
    """2 processes under torchrun each evaluate a shard (every 2nd image of the 25, no padding)
    of the located digits; the reported localization equals that of one process evaluating the
    same checkpoint on the same shards and combining them by hand (counts, not means)."""
    import contextlib
    import os
    import subprocess
    import sys

    from torch.utils.data import DataLoader

    from attnfast.train import checkpoints, cli, methods
    from attnfast.train.distributed import Dist
    from attnfast.train.metrics import evaluate

    out = tmp_path / "ddp"
    args = ["--method", "baseline", *LOCATED[:-1], "25", "--model", "resnet8", "--epochs", "1",
            "--batch-size", "16", "--pictures", "0", "--no-progress", "--seeds", "1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "attnfast.train", *args, "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    reported = json.loads((out / "baseline" / "metrics.json").read_text())["epochs"][-1]
    cfg = recipes.configure(recipes.parse_args(args))
    data = cli.load_data(cfg)
    assert len(data.test) == 25
    model, net, probe, _ = methods.build(cfg, "baseline", data, Dist("cpu"))
    net.load_state_dict(checkpoints.load(out / "baseline" / "checkpoint.pt")["net"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with attnfast.use_backend("auto"):
            shards = [(len(part), evaluate(probe, DataLoader(part, batch_size=8), data,
                                           contextlib.nullcontext, Dist("cpu")))
                      for part in (data_mod.shard(data.test, r, 2) for r in range(2))]
    finally:
        torch.set_num_threads(threads)
    assert [n for n, _ in shards] == [13, 12]
    for key in ("top1", "inner_energy", "last_energy", "inner_pointing", "last_pointing",
                "inner_confuser_energy", "last_confuser_energy", "last_iou"):
        combined = sum(n * m[key] for n, m in shards) / 25
        assert reported[f"test_{key}"] == pytest.approx(combined, abs=1e-5), key


def test_evaluate_localization_equals_a_computation_written_out():
    """evaluate()'s localization of a (random) model on 40 located digits against the maps of
    capture.class_attention_maps (its own hooks) for the label and the confuser, upsampled and
    summed over the boxes here."""
    import contextlib

    from torch.utils.data import DataLoader, Subset

    from attnfast.capture import class_attention_maps
    from attnfast.train.distributed import Dist
    from attnfast.train.metrics import evaluate

    cfg = recipes.configure(recipes.parse_args(["--seeds", "1"]))
    d = data_mod.load("located-digits")
    part = Subset(d.test, range(40))
    torch.manual_seed(0)
    from attnfast.train import methods
    model, _, probe, _ = methods.build(cfg, "baseline", d, Dist("cpu"))
    got = evaluate(probe, DataLoader(part, batch_size=16), d, contextlib.nullcontext, Dist("cpu"))
    x = d.prepare(torch.stack([part[i][0] for i in range(40)]), train=False)
    y = torch.stack([part[i][1] for i in range(40)])
    boxes = torch.stack([part[i][2] for i in range(40)])
    model.eval()
    with torch.no_grad():
        logits = model(x)
    confuser = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
    inside = torch.zeros(40, 32, 32, dtype=torch.bool)
    for n, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        inside[n, y0:y1, x0:x1] = True
    for layer, name in (("layer2", "inner"), ("layer3", "last")):
        _, maps = class_attention_maps(model, layer, x, torch.stack([y, confuser], 1))
        up = torch.nn.functional.interpolate(maps, size=(32, 32), mode="bilinear",
                                             align_corners=False).clamp_min(0)
        share = [(up[:, j] * inside).sum((1, 2)) / up[:, j].sum((1, 2)) for j in (0, 1)]
        peak = up[:, 0].flatten(1).argmax(1)
        hits = inside.flatten(1)[torch.arange(40), peak].float()
        assert got[f"{name}_energy"] == pytest.approx(share[0].mean().item(), abs=1e-5)
        assert got[f"{name}_confuser_energy"] == pytest.approx(share[1].mean().item(), abs=1e-5)
        assert got[f"{name}_pointing"] == pytest.approx(hits.mean().item(), abs=1e-6)
    assert got["top1"] == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item())


def test_ramp_raises_the_attention_weight_from_zero(tmp_path, monkeypatch):
    from attnfast.sharpen_focus import SharpenFocus
    seen = []
    real = SharpenFocus._loss

    def spy(self, g):
        if self.second_order:  # the trained wrapper (the probe is first order)
            seen.append(self.weight)
        return real(self, g)

    monkeypatch.setattr(SharpenFocus, "_loss", spy)
    rc, _ = run(tmp_path, "--method", "sharpen-focus", "--weight", "0.5", "--ramp-epochs", "2",
                "--epochs", "2", "--train-size", "64")
    assert rc == 0
    # 64 images / batch 16 = 4 steps per epoch: factor it / 8 for steps 0..7
    assert seen == pytest.approx([0.5 * it / 8 for it in range(8)])
    f = recipes.ramp_factor({"ramp_epochs": 0.0}, 10)
    assert f(0) == 1.0


def test_sharpen_focus_defaults_come_from_the_recipe_and_the_command_line():
    cfg = recipes.configure(recipes.parse_args([]))
    assert cfg["recipe"] == "located-digits" and cfg["data"] == "located-digits"
    assert cfg["seeds"] >= 3
    sf = recipes.RECIPES["located-digits"]["sf"]
    for key in ("weight", "order", "inner_weight", "last_weight", "consistency_weight", "mask"):
        assert cfg["sf_weight" if key == "weight" else key] == {**recipes.SF_PAPER, **sf}[key]
    # the validation sweep's choice (docs/METHOD.md), the paper's Eq. 9 otherwise
    assert recipes.method_weight(cfg, "sharpen-focus") == 0.1 and cfg["order"] == "second"
    assert (cfg["inner_weight"], cfg["last_weight"], cfg["consistency_weight"]) == (1, 1, 1)
    assert cfg["attention"] == "pixel" and cfg["ramp_epochs"] == 0 and cfg["mask"] == "normalized"
    paper = recipes.configure(recipes.parse_args(["--recipe", "digits"]))
    assert recipes.method_weight(paper, "sharpen-focus") == 1.0
    assert paper["order"] == "second" and paper["consistency_weight"] == 1.0
    assert recipes.method_weight(paper, "ggam") == 0.1
    given = recipes.configure(recipes.parse_args(["--first-order", "--weight", "0.3",
                                                  "--consistency-weight", "0"]))
    assert given["order"] == "first" and given["consistency_weight"] == 0.0
    assert recipes.method_weight(given, "sharpen-focus") == 0.3
    with pytest.raises(SystemExit, match="--seeds must be at least 1"):
        recipes.configure(recipes.parse_args(["--seeds", "0"]))


def test_average_precision_and_auc_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(40, 4, generator=g).round(decimals=1)  # with ties
    targets = (torch.rand(40, 4, generator=g) < 0.4).float()
    ap = metrics.average_precision_score(targets.numpy(), scores.numpy(), average="macro")
    auc = metrics.roc_auc_score(targets.numpy(), scores.numpy(), average="macro")
    assert roc_auc(scores, targets) == pytest.approx(auc, abs=1e-9)
    untied = torch.randn(40, 4, generator=g)
    ap = metrics.average_precision_score(targets.numpy(), untied.numpy(), average="macro")
    assert average_precision(untied, targets) == pytest.approx(ap, abs=1e-6)


# ----------------------------------------------------------------------------- data

def test_digits_source():
    d = data_mod.load("digits", image_size=32)
    assert (len(d.train), len(d.test), d.num_classes, d.in_channels) == (1438, 359, 10, 1)
    x, y = d.train[0]
    assert x.shape == (1, 32, 32) and 0 <= int(y) < 10
    batch = torch.stack([d.train[i][0] for i in range(8)])
    z = d.prepare(batch, train=False)
    assert torch.allclose(d.unnormalize(z), batch, atol=1e-5)
    assert d.prepare(batch, train=True).shape == batch.shape


def test_missing_paths_and_libraries_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="cifar10 needs --data-dir"):
        data_mod.load("cifar10")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        data_mod.load("voc2012", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="lacks"):
        data_mod.load("cifar100", tmp_path)
    with pytest.raises(ValueError, match="unknown data source 'mnist'"):
        data_mod.load("mnist")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        for name in ("imagefolder", "caltech256", "cub200"):
            with pytest.raises(ImportError, match="pip install torchvision"):
                data_mod.load(name, tmp_path)


def test_cifar_pickles(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    g = torch.Generator().manual_seed(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": torch.randint(0, 256, (4, 3072), generator=g, dtype=torch.uint8).numpy(),
             b"labels": [0, 1, 2, 9]}
        (base / name).write_bytes(pickle.dumps(d))
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [
        f"c{i}".encode() for i in range(10)]}))
    d = data_mod.load("cifar10", tmp_path)
    assert len(d.train) == 20 and len(d.test) == 4 and d.class_names[9] == "c9"
    x, y = d.train[3]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and int(y) == 9
    assert d.prepare(torch.stack([x, x]), train=True).shape == (2, 3, 32, 32)


# ----------------------------------------------------------------------------- models

@pytest.mark.parametrize("name,shortcut,params", [
    ("resnet20", "A", 0.27e6), ("resnet56", "A", 0.85e6), ("resnet110", "A", 1.7e6),
    ("resnet18", "B", 11.69e6), ("resnet50", "B", 25.56e6)])
def test_model_sizes_and_names(name, shortcut, params):
    classes = 1000 if name in ("resnet18", "resnet50") else 10
    m = models.create(name, classes, shortcut=shortcut)
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - params) / params < 0.02, n
    stages = 4 if classes == 1000 else 3
    names = dict(m.named_children())
    assert all(f"layer{i}" in names for i in range(1, stages + 1)) and "fc" in names
    assert m.attention_layers == (f"layer{stages - 1}", f"layer{stages}")


def test_model_forward_and_unknown_name():
    x = torch.randn(2, 3, 32, 32)
    assert models.create("resnet20", 7, shortcut="B")(x).shape == (2, 7)
    assert models.create("resnet18", 7)(x).shape == (2, 7)
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        models.create("resnet19", 10)
