"""Starting from pretrained weights (``attnfast.train.pretrained``, ``models.create(...,
pretrained=...)``, ``--pretrained``): tiny state_dicts written here, in this library's layout, in
torchvision's layout (key names pinned by hand) and inside checkpoints; the hub-cache lookup of a
torchvision weights name with the cache pointed at a tmp dir. The real torchvision models and
weights table are checked in tests/test_pretrained_tv.py (torchvision lane)."""
import pytest
import torch

import attnfast
from attnfast import train
from attnfast import models, pretrained


@pytest.fixture(autouse=True)
def torch_backend():
    with attnfast.use_backend("torch"):
        yield


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The torch hub cache pointed at tmp_path/hub (so nothing real is read or written)."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def features(model, x):
    """The pooled features that feed the head (eval mode)."""
    model.eval()
    with torch.no_grad():
        y = model.stem(x)
        for i in range(1, model.num_stages + 1):
            y = getattr(model, f"layer{i}")(y)
        return torch.flatten(model.avgpool(y), 1)


def trained_like(model, seed):
    """Give every BatchNorm non-default statistics, so that loading them is visible."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.num_batches_tracked.fill_(7)
    return model


def test_state_dict_round_trip_equal_features_new_head(tmp_path):
    torch.manual_seed(0)
    src = trained_like(models.create("resnet8", 10), 1)
    path = tmp_path / "r8.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(5)
    new = models.create("resnet8", 4, pretrained=str(path))
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(features(new, x), features(src, x))
    assert new.fc.weight.shape == (4, 64) and new.fc.bias.shape == (4,)
    torch.manual_seed(5)
    fresh = models.create("resnet8", 4)
    assert torch.equal(new.fc.weight, fresh.fc.weight), "the head is the fresh initialization"
    r = new.pretrained_report
    assert r.path == str(path) and r.head == "fc"
    assert r.replaced == ["fc.weight", "fc.bias"] and not r.missing and not r.unexpected
    assert set(r.loaded) == set(src.state_dict()) - {"fc.weight", "fc.bias"}
    assert int(new.layer1[0].bn1.num_batches_tracked) == 7


def test_checkpoint_containers_and_listed_keys(tmp_path):
    """A trainer checkpoint (the wrapper's ``model.`` prefix, GGAM's module beside it), a DDP
    state_dict (``module.``) and a ``state_dict`` container; keys the model lacks are listed as
    unexpected, keys the file lacks as missing, and a warning says so."""
    torch.manual_seed(0)
    src = trained_like(models.create("resnet8", 10), 3)
    sd = src.state_dict()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    ckpt = {"net": {**{f"model.{k}": v for k, v in sd.items()},
                    "attention.fc1.weight": torch.zeros(4, 64)}, "epoch": 3}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.warns(UserWarning, match="attention.fc1.weight"):
        m = models.create("resnet8", 5, pretrained=tmp_path / "ckpt.pt")
    assert torch.equal(features(m, x), features(src, x))
    assert m.pretrained_report.unexpected == ["attention.fc1.weight"]
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()
                               if not k.startswith("layer3.0.bn2.")}}, tmp_path / "ddp.pt")
    with pytest.warns(UserWarning, match="missing"):
        m = models.create("resnet8", 5, pretrained=tmp_path / "ddp.pt")
    r = m.pretrained_report
    assert r.missing == ["layer3.0.bn2.weight", "layer3.0.bn2.bias", "layer3.0.bn2.running_mean",
                         "layer3.0.bn2.running_var"]
    assert r.counters == 1 and "layer3.0.bn2.running_var" in r.describe()


def test_shape_mismatch_and_not_a_state_dict(tmp_path):
    torch.save(models.create("resnet8", 10).state_dict(), tmp_path / "r8.pt")
    wrong = r"stem.0.weight \(16, 3, 3, 3\) \(model \(16, 1, 3, 3\)\)"
    with pytest.raises(ValueError, match=wrong):
        models.create("resnet8", 10, in_channels=1, pretrained=tmp_path / "r8.pt")
    torch.save({"epoch": 3}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a state_dict"):
        models.create("resnet8", 10, pretrained=tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a file, and not a torchvision weights name"):
        models.create("resnet8", 10, pretrained=tmp_path / "nothing.pt")


# torchvision's key names -> ours, written out by hand (torchvision's ResNet: conv1/bn1 stem,
# downsample; VGG19: features.<i> with a max-pool after each stage; VGG19-BN: conv, bn, relu)
PINNED = {
    "resnet18": {"conv1.weight": "stem.0.weight", "bn1.running_var": "stem.1.running_var",
                 "layer1.0.bn1.weight": "layer1.0.bn1.weight",
                 "layer2.0.downsample.0.weight": "layer2.0.shortcut.0.weight",
                 "layer4.0.downsample.1.bias": "layer4.0.shortcut.1.bias",
                 "fc.weight": "fc.weight"},
    "vgg19": {"features.0.weight": "layer1.0.weight", "features.2.bias": "layer1.2.bias",
              "features.5.weight": "layer2.1.weight", "features.10.weight": "layer3.1.weight",
              "features.25.weight": "layer4.7.weight", "features.28.weight": "layer5.1.weight",
              "features.34.bias": "layer5.7.bias", "classifier.0.weight": "classifier.0.weight"},
    "vgg19_bn": {"features.0.weight": "layer1.0.weight", "features.1.running_mean":
                 "layer1.1.running_mean", "features.3.weight": "layer1.3.weight",
                 "features.7.weight": "layer2.1.weight", "features.8.bias": "layer2.2.bias",
                 "features.49.weight": "layer5.10.weight",
                 "features.50.running_var": "layer5.11.running_var"},
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_torchvision_key_names(name):
    with torch.device("meta"):
        model = models.create(name, 10)
    own = model.state_dict()
    for tv, ours in PINNED[name].items():
        assert model.torchvision_key(tv) == ours
        assert ours in own or ours.startswith("classifier.")


def test_torchvision_layout_loads(tmp_path, hub):
    """A ResNet-18 state_dict in torchvision's layout, put in the hub cache under torchvision's
    file name, loads by weights name (any case) with equal features."""
    torch.manual_seed(0)
    src = trained_like(models.create("resnet18", 1000), 6)
    inverse = [("stem.0.", "conv1."), ("stem.1.", "bn1."), (".shortcut.", ".downsample.")]
    tv = {}
    for k, v in src.state_dict().items():
        for a, b in inverse:
            k = k.replace(a, b)
        tv[k] = v
    assert "conv1.weight" in tv and "layer2.0.downsample.0.weight" in tv
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(tv, hub / "checkpoints" / "resnet18-f37072fd.pth")
    m = models.create("resnet18", 3, pretrained="resnet18_weights.imagenet1k_v1")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(features(m, x), features(src, x))
    r = m.pretrained_report
    assert r.path == str(hub / "checkpoints" / "resnet18-f37072fd.pth")
    assert not r.missing and not r.unexpected and r.replaced == ["fc.weight", "fc.bias"]


def test_missing_hub_file_names_the_path(hub, tmp_path):
    want = hub / "checkpoints" / "resnet50-0676ba61.pth"
    with pytest.raises(FileNotFoundError) as e:
        models.create("resnet50", 10, pretrained="ResNet50_Weights.IMAGENET1K_V1")
    text = str(e.value)
    assert str(want) in text and "TORCH_HOME" in text and "get_state_dict" in text
    assert "nothing is downloaded" in text
    argv = ["--data", "synthetic", "--model", "resnet50", "--pretrained",
            "ResNet50_Weights.IMAGENET1K_V2", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit, match=str(hub / "checkpoints" / "resnet50-11ad3fa6.pth")):
        train.main(argv)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.pt"))
    with pytest.raises(SystemExit, match="not a torchvision weights name"):
        train.main(["--pretrained", "ResNet50_Weights.IMAGENET9K", "--dry-run"])


def test_trainer_starts_from_pretrained(tmp_path, capsys):
    """``--pretrained`` + ``--backbone-lr-scale`` through the trainer: the log lists what was
    loaded, the run's configuration records both, and its optimizer holds the two groups."""
    torch.manual_seed(0)
    torch.save(trained_like(models.create("resnet8", 10), 2).state_dict(), tmp_path / "r8.pt")
    out = tmp_path / "run"
    argv = ["--data", "synthetic", "--train-size", "16", "--test-size", "8", "--image-size", "16",
            "--model", "resnet8", "--batch-size", "8", "--epochs", "1", "--pictures", "0",
            "--no-progress", "--seeds", "1", "--method", "ggam",
            "--pretrained", str(tmp_path / "r8.pt"),
            "--backbone-lr-scale", "0.25", "--lr", "0.04", "--out", str(out)]
    assert train.main(argv) == 0
    log = capsys.readouterr().out
    assert f"pretrained {tmp_path / 'r8.pt'}: " in log and "head 'fc' new" in log
    import json
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["backbone_lr_scale"] == 0.25
    assert summary["config"]["pretrained"] == str(tmp_path / "r8.pt")
    ck = torch.load(out / "ggam" / "checkpoint.pt", weights_only=True)
    groups = ck["optimizer"]["param_groups"]
    assert [(g["name"], g["lr_scale"], g["initial_lr"]) for g in groups] == [
        ("backbone", 0.25, pytest.approx(0.01)), ("new", 1.0, pytest.approx(0.04))]
    row = json.loads((out / "ggam" / "metrics.json").read_text())["epochs"][0]
    assert row["lr"] == pytest.approx(0.04) and row["backbone_lr"] == pytest.approx(0.01)
