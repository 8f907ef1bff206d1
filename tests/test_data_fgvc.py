"""The GGAM data sources ``fgvc-aircraft`` and ``stanford-cars`` on small generated trees in their
official layouts (JPEGs written with PIL, Stanford Cars' .mat tables with scipy), through
torchvision's datasets, and a one-epoch baseline + GGAM run on each through
``attnfast.train.main``.

As in tests/test_data_files.py, every image of class k is one solid colour (plus a little
noise), so a loaded image's mean colour says which class it came from, whatever the crop; and
without torchvision (the CPU build of torch of most of the suite) these tests skip, naming the
import error. They run in CI lane 2 (.ci/cuda_lane.sh).
"""
import json

import pytest
import torch

from helpers import COLOURS, jpeg, needs_torchvision

pytestmark = needs_torchvision()



def labels_by_colour(dataset, size):
    """Every item's label, checked against its colour: a 3 x size x size float image in [0, 1]
    whose mean colour is nearest COLOURS[label]."""
    got = []
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert type(y) is int, f"item {i}: label of type {type(y).__name__}, not int"
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1
        mean = x.mean(dim=(1, 2)) * 255
        near = min(range(len(COLOURS)),
                   key=lambda k: float(((mean - torch.tensor(COLOURS[k], dtype=torch.float32))
                                        ** 2).sum()))
        assert near == y, f"item {i}: label {y} but the colour of class {near}"
        got.append(y)
    return sorted(got)


def train_ggam(tmp_path, data, root):
    """``attnfast.train.main``: baseline and GGAM, 1 epoch, resnet8 at 32 x 32."""
    from attnfast.train import main
    out = tmp_path / "run"
    argv = ["--data", data, "--data-dir", str(root), "--model", "resnet8", "--epochs", "1",
            "--batch-size", "4", "--image-size", "32", "--out", str(out), "--pictures", "0",
            "--method", "baseline,ggam", "--no-progress", "--seeds", "1", "--workers", "0",
            "--backbone-lr-scale", "0.1"]
    assert main(argv) == 0
    for method in ("baseline", "ggam"):
        metrics = json.loads((out / method / "metrics.json").read_text())
        assert len(metrics["epochs"]) == 1 and metrics["summary"]["top1"] is not None


# ----------------------------------------------------------------------------- fgvc-aircraft

AIRCRAFT = ["707-320", "A300B4", "Cessna 172"]   # variant names (one with a space, as in 2013b)


def aircraft_tree(root):
    """fgvc-aircraft-2013b/data: 3 variants; trainval holds images 10k+0..2 of each, test 10k+3;
    the lines are out of order and the names of unused splits (train, val) are written too."""
    data = root / "fgvc-aircraft-2013b" / "data"
    trainval, test = [], []
    for k, name in enumerate(AIRCRAFT):
        for i in range(4):
            iid = f"{10000 * (k + 1) + i:07d}"
            jpeg(data / "images" / f"{iid}.jpg", COLOURS[k], 10 * k + i)
            (trainval if i < 3 else test).append(f"{iid} {name}")
    (data / "variants.txt").write_text("\n".join(AIRCRAFT) + "\n")
    (data / "images_variant_trainval.txt").write_text("\n".join(trainval[::-1]) + "\n")
    (data / "images_variant_test.txt").write_text("\n".join(test) + "\n")
    (data / "images_variant_train.txt").write_text("\n".join(trainval[:2]) + "\n")
    return root


def test_fgvc_aircraft(tmp_path):
    from attnfast.train import data as data_mod
    root = aircraft_tree(tmp_path / "aircraft")
    d = data_mod.load("fgvc-aircraft", root, image_size=32)
    assert (d.name, d.num_classes, d.in_channels, d.image_size) == ("fgvc-aircraft", 3, 3, 32)
    assert d.class_names == AIRCRAFT and not d.multilabel
    assert labels_by_colour(d.train, 32) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert labels_by_colour(d.test, 32) == [0, 1, 2]
    again = data_mod.load("fgvc-aircraft", root / "fgvc-aircraft-2013b", image_size=32)
    assert len(again.train) == 9, "--data-dir may name fgvc-aircraft-2013b itself"


def test_fgvc_aircraft_missing_split(tmp_path):
    from attnfast.train import data as data_mod
    root = aircraft_tree(tmp_path / "aircraft")
    (root / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="images_variant_test.txt is missing"):
        data_mod.load("fgvc-aircraft", root, image_size=32)


def test_fgvc_aircraft_trains(tmp_path):
    train_ggam(tmp_path, "fgvc-aircraft", aircraft_tree(tmp_path / "aircraft"))


# ----------------------------------------------------------------------------- stanford-cars

CARS = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]


def cars_tree(root, counts=((3, 2), (2, 1), (3, 2))):
    """stanford_cars/ in the official layout: class k has counts[k] = (train, test) images; the
    annotation tables are MATLAB struct arrays (1 x 1 uint8 bbox fields and class, counted from
    1; fname), as in the devkit."""
    import numpy as np
    from scipy.io import savemat
    base = root / "stanford_cars"
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
              ("class", "O"), ("fname", "O")]
    annos = {"train": [], "test": []}
    for k, (n_train, n_test) in enumerate(counts):
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                fname = f"{len(annos[split]) + 1:05d}.jpg"
                jpeg(base / f"cars_{split}" / fname, COLOURS[k], 100 * k + 10 * (split == "test")
                     + i)
                annos[split].append((*(np.array([[v]], dtype=np.uint8) for v in (1, 2, 30, 20,
                                                                                 k + 1)), fname))
    (base / "devkit").mkdir(parents=True)
    for split, path in (("train", base / "devkit" / "cars_train_annos.mat"),
                        ("test", base / "cars_test_annos_withlabels.mat")):
        table = np.zeros((1, len(annos[split])), dtype=fields)
        for i, row in enumerate(annos[split]):
            table[0, i] = row
        savemat(path, {"annotations": table})
    names = np.empty((1, len(CARS)), dtype=object)
    names[0, :] = CARS
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    return root


def test_stanford_cars(tmp_path):
    from attnfast.train import data as data_mod
    root = cars_tree(tmp_path / "cars")
    d = data_mod.load("stanford-cars", root, image_size=32)
    assert (d.name, d.num_classes, d.in_channels, d.image_size) == ("stanford-cars", 3, 3, 32)
    assert d.class_names == CARS
    assert labels_by_colour(d.train, 32) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert labels_by_colour(d.test, 32) == [0, 0, 1, 2, 2]
    again = data_mod.load("stanford-cars", root / "stanford_cars", image_size=32)
    assert len(again.test) == 5, "--data-dir may name stanford_cars itself"


def test_stanford_cars_missing_table(tmp_path):
    from attnfast.train import data as data_mod
    root = cars_tree(tmp_path / "cars")
    (root / "stanford_cars" / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(FileNotFoundError, match="cars_test_annos_withlabels.mat is missing"):
        data_mod.load("stanford-cars", root, image_size=32)


def test_stanford_cars_trains(tmp_path):
    train_ggam(tmp_path, "stanford-cars", cars_tree(tmp_path / "cars"))


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
    for name in ("fgvc-aircraft", "stanford-cars"):
        with pytest.raises(ImportError, match=f"the {name} source .*pip install torchvision"):
            data_mod.load(name, tmp_path)
