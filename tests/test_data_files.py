"""The image-file sources -- ``imagefolder`` (ImageNet layout), ``caltech256`` and ``cub200`` --
on small generated trees of JPEG files (written with PIL in a tmp dir), through torchvision, and a
one-epoch training run through ``attnfast.train.main`` on each.

Every image of class k is one solid colour COLOURS[k] (plus a little noise), so that a loaded
image's mean colour says which file and which class it came from, whatever the crop.

torchvision does not load with the CPU build of torch used for most of the suite: these tests then
skip, naming the import error; they run with the CUDA build of torch (no GPU needed), e.g.
``/work/venv/cudatorch`` (docs/GGAM_AND_CAPTURE.md says how).
"""
import json

import pytest
import torch

from helpers import COLOURS, jpeg, needs_torchvision

pytestmark = needs_torchvision()



def colour_class(image):
    """The class whose colour is nearest the (un-normalized, [0, 1]) image's mean colour."""
    mean = image.float().mean(dim=(1, 2)) * 255
    dist = [((mean - torch.tensor(c, dtype=torch.float32)) ** 2).sum() for c in COLOURS]
    return int(torch.stack(dist).argmin())


def check_items(dataset, size, labels=None):
    """Every item: a 3 x size x size float image in [0, 1] whose colour is its label's."""
    got = []
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1
        assert colour_class(x) == y, f"item {i}: label {y} but colour of class {colour_class(x)}"
        got.append(int(y))
    if labels is not None:
        assert sorted(got) == sorted(labels)
    return got


def train_one_epoch(tmp_path, data, root, *extra):
    """``attnfast.train.main`` on the source: baseline and Sharpen Focus, 1 epoch, resnet8."""
    from attnfast.train import main
    out = tmp_path / "run"
    argv = ["--data", data, "--data-dir", str(root), "--model", "resnet8", "--epochs", "1",
            "--batch-size", "4", "--image-size", "32", "--out", str(out), "--pictures", "2",
            "--compare", "--no-progress", "--seeds", "1", *extra]
    assert main(argv) == 0
    for method in ("baseline", "sharpen-focus"):
        metrics = json.loads((out / method / "metrics.json").read_text())
        assert len(metrics["epochs"]) == 1 and metrics["summary"]["top1"] is not None
        assert (out / method / "checkpoint.pt").is_file()
    assert (out / "comparison.png").is_file()


# ----------------------------------------------------------------------------- imagefolder

def imagenet_tree(root, classes=("n01", "n02", "n03"), train=4, val=2, val_classes=None):
    for k, name in enumerate(classes):
        for i in range(train):
            jpeg(root / "train" / name / f"{name}_{i}.JPEG", COLOURS[k], 10 * k + i)
    for k, name in enumerate(val_classes or classes):
        for i in range(val):
            jpeg(root / "val" / name / f"val_{name}_{i}.jpg", COLOURS[classes.index(name)],
                 100 + 10 * k + i)
    return root


def test_imagefolder(tmp_path):
    from attnfast.train import data as data_mod
    root = imagenet_tree(tmp_path / "imagenet")
    d = data_mod.load("imagefolder", root, image_size=32)
    assert (d.name, d.num_classes, d.in_channels, d.image_size) == ("imagefolder", 3, 3, 32)
    assert d.class_names == ["n01", "n02", "n03"] and not d.multilabel
    check_items(d.train, 32, [0] * 4 + [1] * 4 + [2] * 4)
    check_items(d.test, 32, [0, 0, 1, 1, 2, 2])
    a, b = d.test[0][0], d.test[0][0]
    assert torch.equal(a, b), "the test transform must be deterministic (resize + center crop)"


def test_imagefolder_val_labels_follow_the_training_classes(tmp_path):
    """A val/ tree that lacks a class must keep the training set's class indices (torchvision's
    own ImageFolder on val/ alone would renumber them); a val class unknown to train/ is an
    error."""
    from attnfast.train import data as data_mod
    root = imagenet_tree(tmp_path / "imagenet", val_classes=("n01", "n03"))
    d = data_mod.load("imagefolder", root, image_size=32)
    check_items(d.test, 32, [0, 0, 2, 2])
    jpeg(root / "val" / "n09" / "x.jpg", COLOURS[3], 7)
    with pytest.raises(ValueError, match="n09"):
        data_mod.load("imagefolder", root, image_size=32)


def test_imagefolder_trains(tmp_path):
    train_one_epoch(tmp_path, "imagefolder", imagenet_tree(tmp_path / "imagenet"),
                    "--workers", "1")


# ----------------------------------------------------------------------------- caltech256

def caltech_tree(root, counts=(5, 4, 6)):
    base = root / "256_ObjectCategories"
    names = ["001.ak47", "002.american-flag", "003.backpack"]
    for k, (name, n) in enumerate(zip(names, counts)):
        for i in range(n):
            jpeg(base / name / f"{name[:3]}_{i + 1:04d}.jpg", COLOURS[k], 10 * k + i)
    for i in range(3):
        jpeg(base / "257.clutter" / f"257_{i + 1:04d}.jpg", COLOURS[3], 90 + i)
    return root, names


def test_caltech256(tmp_path):
    from attnfast.train import data as data_mod
    root, names = caltech_tree(tmp_path / "caltech")
    d = data_mod.load("caltech256", root, image_size=32, per_class=2, seed=3)
    assert d.num_classes == 3 and d.class_names == names, "the clutter class is dropped"
    check_items(d.train, 32, [0, 0, 1, 1, 2, 2])
    check_items(d.test, 32, [0] * 3 + [1] * 2 + [2] * 4)
    train, test = {p for p, _ in d.train.samples}, {p for p, _ in d.test.samples}
    assert not train & test and len(train | test) == 15
    again = data_mod.load("caltech256", root / "256_ObjectCategories", image_size=32,
                          per_class=2, seed=3)
    assert again.train.samples == d.train.samples, "the split is a function of the seed"
    other = data_mod.load("caltech256", root, image_size=32, per_class=2, seed=4)
    assert other.train.samples != d.train.samples


def test_caltech256_trains(tmp_path):
    root, _ = caltech_tree(tmp_path / "caltech")
    train_one_epoch(tmp_path, "caltech256", root, "--per-class", "2", "--workers", "0")


# ----------------------------------------------------------------------------- cub200

def cub_tree(root):
    """3 classes x 3 images; images 1, 2, 4, 5, 7 (ids) are training images, the rest test.
    The tables list the images out of order, with CRLF line ends as in the official files."""
    base = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split = [], [], []
    for k, name in enumerate(classes):
        for i in range(3):
            iid = 3 * k + i + 1
            rel = f"{name}/{name[4:]}_{iid:04d}_{iid}.jpg"
            jpeg(base / "images" / rel, COLOURS[k], iid)
            images.append(f"{iid} {rel}")
            labels.append(f"{iid} {k + 1}")
            split.append(f"{iid} {1 if iid in (1, 2, 4, 5, 7) else 0}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split),
                        ("classes.txt", [f"{k + 1} {c}" for k, c in enumerate(classes)])):
        (base / name).write_bytes(("\r\n".join(lines[::-1]) + "\r\n").encode())
    return root, classes


def test_cub200(tmp_path):
    from attnfast.train import data as data_mod
    root, classes = cub_tree(tmp_path / "cub")
    d = data_mod.load("cub200", root, image_size=32)
    assert d.num_classes == 3 and d.class_names == classes
    check_items(d.train, 32, [0, 0, 1, 1, 2])
    check_items(d.test, 32, [0, 1, 2, 2])
    names = sorted(p.name for p, _ in d.train.samples)
    assert names == sorted(f"{c[4:]}_{i:04d}_{i}.jpg" for c, i in
                           zip([classes[0], classes[0], classes[1], classes[1], classes[2]],
                               (1, 2, 4, 5, 7)))


def test_cub200_missing_table(tmp_path):
    from attnfast.train import data as data_mod
    root, _ = cub_tree(tmp_path / "cub")
    (root / "CUB_200_2011" / "train_test_split.txt").unlink()
    with pytest.raises(FileNotFoundError, match="train_test_split.txt"):
        data_mod.load("cub200", root, image_size=32)


def test_cub200_trains(tmp_path):
    root, _ = cub_tree(tmp_path / "cub")
    train_one_epoch(tmp_path, "cub200", root, "--workers", "0")


def test_torchvision_error_names_the_source(monkeypatch, tmp_path):
    """Without torchvision each source says what it needs (simulated here)."""
    import builtins

    from attnfast.train import data as data_mod
    real = builtins.__import__

    def no_tv(name, *a, **k):
        if name == "torchvision" or name.startswith("torchvision."):
            raise ImportError("simulated")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_tv)
    for name in ("imagefolder", "caltech256", "cub200"):
        with pytest.raises(ImportError, match=f"the {name} source .*pip install torchvision"):
            data_mod.load(name, tmp_path)
