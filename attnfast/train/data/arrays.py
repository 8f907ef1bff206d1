"""Sources held in memory as tensors: scikit-learn's digits, CIFAR-10/100 from their
python-pickle files, and the synthetic squares."""
from __future__ import annotations

import pickle

import torch
import torch.nn.functional as nnf
from torch.utils.data import TensorDataset

from .base import Data, channel_stats, need_dir


def digits(image_size=32, seed=0, **_):
    """sklearn's 8x8 digits, [0, 1], bilinear-resized to image_size, stratified 80/20 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits source needs scikit-learn: `pip install scikit-learn`") \
            from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    if image_size != 8:
        x = nnf.interpolate(x, size=(image_size, image_size), mode="bilinear",
                            align_corners=False).clamp(0, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = (y == c).nonzero()[:, 0]
        idx = idx[torch.randperm(len(idx), generator=g)]
        cut = round(0.2 * len(idx))
        test_idx.append(idx[:cut])
        train_idx.append(idx[cut:])
    tr, te = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    mean, std = channel_stats(x[tr], 1.0)
    return Data("digits", TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te]), 10, 1,
                image_size, [str(i) for i in range(10)], mean, std, pad=max(image_size // 16, 1))


def _unpickle(path):
    # The CIFAR files are pickles by their authors' choice; only open copies you downloaded
    # from the official site.
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def cifar(root, classes=10, **_):
    """CIFAR-10/100 from the python-pickle files under ``root`` (or its standard subfolder)."""
    sub = "cifar-10-batches-py" if classes == 10 else "cifar-100-python"
    hint = f"a folder holding {sub}/ from https://www.cs.toronto.edu/~kriz/cifar.html"
    base = need_dir(root, f"cifar{classes}", hint)
    base = base / sub if (base / sub).is_dir() else base
    if classes == 10:
        files, test, key, meta, names = ([f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                                         b"labels", "batches.meta", b"label_names")
    else:
        files, test, key, meta, names = (["train"], "test", b"fine_labels", "meta",
                                         b"fine_label_names")
    missing = [f for f in (*files, test) if not (base / f).is_file()]
    if missing:
        raise FileNotFoundError(f"cifar{classes}: {base} lacks {missing} ({hint})")

    def read(fs):
        parts = [_unpickle(base / f) for f in fs]
        x = torch.cat([torch.tensor(p[b"data"], dtype=torch.uint8) for p in parts])
        y = torch.cat([torch.tensor(p[key], dtype=torch.long) for p in parts])
        return x.view(-1, 3, 32, 32), y

    (xtr, ytr), (xte, yte) = read(files), read([test])
    labels = [n.decode() for n in _unpickle(base / meta)[names]] if (base / meta).is_file() \
        else [str(i) for i in range(classes)]
    mean, std = channel_stats(xtr, 255.0)
    return Data(f"cifar{classes}", TensorDataset(xtr, ytr), TensorDataset(xte, yte), classes, 3,
                32, labels, mean, std, scale=255.0, pad=4, flip=True)


def synthetic(image_size=32, num_classes=10, train_size=512, test_size=256, multilabel=False,
              in_channels=3, seed=0, **_):
    """Noise N(0, 0.3) plus, per positive class c, a 1.0-valued square at a place fixed per c."""
    g = torch.Generator().manual_seed(seed)
    side = max(image_size // 4, 1)
    spots = torch.randint(0, image_size - side + 1, (num_classes, 2), generator=g)

    def make(n):
        if multilabel:
            y = (torch.rand(n, num_classes, generator=g) < 2.0 / num_classes).float()
            y[torch.arange(n), torch.randint(0, num_classes, (n,), generator=g)] = 1.0
        else:
            y = torch.randint(0, num_classes, (n,), generator=g)
        x = 0.3 * torch.randn(n, in_channels, image_size, image_size, generator=g)
        hot = y if multilabel else nnf.one_hot(y, num_classes).float()
        for c in range(num_classes):
            i, j = spots[c].tolist()
            x[:, :, i:i + side, j:j + side] += hot[:, c, None, None, None]
        return x, y

    (xtr, ytr), (xte, yte) = make(train_size), make(test_size)
    mean, std = channel_stats(xtr, 1.0)
    name = "synthetic-multilabel" if multilabel else "synthetic"
    return Data(name, TensorDataset(xtr, ytr), TensorDataset(xte, yte), num_classes, in_channels,
                image_size, [f"class{c}" for c in range(num_classes)], mean, std,
                multilabel=multilabel)
