"""Data sources for the trainer, all returning a :class:`Data`.

* ``digits`` (default): scikit-learn's bundled 8x8 handwritten digits (1797 real images, no
  download), pixel values / 16, resized bilinearly to ``image_size`` (default 32), 1 channel;
  a fixed stratified 80/20 split (1437 train, 360 test).
* ``cifar10`` / ``cifar100``: the standard python-pickle files (``cifar-10-batches-py`` /
  ``cifar-100-python``) in a local folder; training crops 32x32 from the 4-pixel zero-padded
  image and flips horizontally (He et al. 2016).
* ``imagefolder`` (ImageNet layout ``train/``, ``val/``), ``caltech256`` (``256_ObjectCategories``,
  ``per_class`` = 30 or 60 training images per class, the rest for test, clutter class dropped)
  and ``cub200`` (``CUB_200_2011`` with its official split): image files through torchvision.
* ``voc2012``: PASCAL VOC 2012 classification (``train`` / ``val`` lists of a local VOCdevkit),
  20 classes multi-hot from the annotation XML (parsed with the standard library), images by PIL.
* ``synthetic`` / ``synthetic-multilabel``: noise plus a bright square at a class-specific place
  (one square per positive class); learnable in seconds, for tests and throughput runs.

In-memory sources hold uint8/float images; :meth:`Data.prepare` turns a batch into the
normalized float input (and augments it when training) on the batch's device, using the global
torch RNG so that a resumed run draws the same augmentations.
"""
from __future__ import annotations

import os
import pickle
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as nnf
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = ["Data", "load", "SOURCES", "VOC_CLASSES"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


@dataclass
class Data:
    """Train/test datasets yielding (image, target) and what the trainer needs to know.

    ``scale``: in-memory images are divided by it (255 for uint8) before normalizing; ``pad`` and
    ``flip``: batch augmentation of in-memory sources (0 / False when the dataset does its own).
    """
    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list
    mean: tuple
    std: tuple
    multilabel: bool = False
    scale: float = 1.0
    pad: int = 0
    flip: bool = False

    def prepare(self, images, train):
        """float32 (x / scale - mean) / std, with random pad-crop and flip when ``train``."""
        x = images.float()
        if self.scale != 1.0:
            x = x / self.scale
        if train and self.pad:
            x = random_crop(x, self.pad)
        if train and self.flip:
            x = random_flip(x)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def unnormalize(self, x):
        """Inverse of the normalization of :meth:`prepare`: images in [0, 1] for pictures."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() * std + mean).clamp(0, 1)


def random_crop(x, pad):
    """Per image: zero-pad by ``pad`` on each side, crop the original size at a random offset."""
    n, c, h, w = x.shape
    xp = nnf.pad(x, (pad, pad, pad, pad))
    i = torch.randint(0, 2 * pad + 1, (n,)).to(x.device)
    j = torch.randint(0, 2 * pad + 1, (n,)).to(x.device)
    rows = (i[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (j[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[idx_n, idx_c, rows, cols]


def random_flip(x):
    """Flip each image horizontally with probability 1/2."""
    flip = (torch.rand(x.shape[0]) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(3), x)


def _channel_stats(images, scale):
    x = images.float() / scale
    return (tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist()))


def _need_dir(path, what, hint):
    if path is None:
        raise ValueError(f"{what} needs --data-dir: {hint}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what}: {p} is not a directory ({hint})")
    return p


# ----------------------------------------------------------------------------- in memory

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
    mean, std = _channel_stats(x[tr], 1.0)
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
    base = _need_dir(root, f"cifar{classes}", hint)
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
    mean, std = _channel_stats(xtr, 255.0)
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
    mean, std = _channel_stats(xtr, 1.0)
    name = "synthetic-multilabel" if multilabel else "synthetic"
    return Data(name, TensorDataset(xtr, ytr), TensorDataset(xte, yte), num_classes, in_channels,
                image_size, [f"class{c}" for c in range(num_classes)], mean, std,
                multilabel=multilabel)


# ----------------------------------------------------------------------------- image files

class _ImageFiles(Dataset):
    """(path, target) pairs read with PIL as RGB, resized to size x size, uint8 C x H x W."""

    def __init__(self, samples, size):
        self.samples, self.size = samples, size

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        import numpy as np
        from PIL import Image
        path, target = self.samples[i]
        with Image.open(path) as im:
            im = im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        return x, target


def voc_labels(annotation_xml):
    """Multi-hot float tensor of the 20 VOC classes present in one annotation XML file."""
    y = torch.zeros(len(VOC_CLASSES))
    for obj in ET.parse(annotation_xml).getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name in VOC_CLASSES:
            y[VOC_CLASSES.index(name)] = 1.0
    return y


def voc2012(root, image_size=224, **_):
    """PASCAL VOC 2012 classification: ImageSets/Main/train.txt for training, val.txt for test."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ImportError("voc2012 needs Pillow to read JPEGs: `pip install pillow`") from None
    hint = "the folder holding VOCdevkit/VOC2012 (JPEGImages, Annotations, ImageSets/Main)"
    base = _need_dir(root, "voc2012", hint)
    for cand in (base / "VOCdevkit" / "VOC2012", base / "VOC2012", base):
        if (cand / "ImageSets" / "Main" / "train.txt").is_file():
            base = cand
            break
    else:
        raise FileNotFoundError(f"voc2012: no ImageSets/Main/train.txt under {base} ({hint})")

    def split(name):
        ids = (base / "ImageSets" / "Main" / f"{name}.txt").read_text().split()
        return _ImageFiles([(base / "JPEGImages" / f"{i}.jpg",
                             voc_labels(base / "Annotations" / f"{i}.xml")) for i in ids],
                           image_size)

    return Data("voc2012", split("train"), split("val"), 20, 3, image_size, list(VOC_CLASSES),
                IMAGENET_MEAN, IMAGENET_STD, multilabel=True, scale=255.0, flip=True)


def _torchvision(what):
    try:
        import torchvision
        return torchvision
    except ImportError:
        raise ImportError(f"the {what} source reads image folders through torchvision, which is "
                          "not installed: `pip install torchvision` (or use digits, cifar10, "
                          "cifar100, voc2012 or synthetic)") from None


class _TransformedFiles(Dataset):
    """(path, label) pairs read by ``loader`` and passed through ``transform``."""

    def __init__(self, samples, transform, loader):
        self.samples, self.transform, self.loader = samples, transform, loader

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(self.loader(str(path))), label


def _file_data(name, tv, train_samples, test_samples, classes, image_size):
    """Datasets over (path, label) lists with the usual ImageNet crops (random-resized + flip for
    training, resize + center crop for test), as [0, 1] tensors; :meth:`Data.prepare` normalizes."""
    t = tv.transforms
    train_tf = t.Compose([t.RandomResizedCrop(image_size), t.RandomHorizontalFlip(), t.ToTensor()])
    test_tf = t.Compose([t.Resize(round(image_size * 8 / 7)), t.CenterCrop(image_size),
                         t.ToTensor()])
    loader = tv.datasets.folder.default_loader
    return Data(name, _TransformedFiles(train_samples, train_tf, loader),
                _TransformedFiles(test_samples, test_tf, loader), len(classes), 3, image_size,
                list(classes), IMAGENET_MEAN, IMAGENET_STD)


def imagefolder(root, image_size=224, **_):
    """ImageNet-style tree: root/train/<class>/*, root/val/<class>/*."""
    tv = _torchvision("imagefolder")
    base = _need_dir(root, "imagefolder", "a folder with train/<class>/ and val/<class>/")
    for s in ("train", "val"):
        if not (base / s).is_dir():
            raise FileNotFoundError(f"imagefolder: {base / s} is missing")
    tr, te = (tv.datasets.ImageFolder(str(base / s)) for s in ("train", "val"))
    return _file_data("imagefolder", tv, tr.samples, te.samples, tr.classes, image_size)


def caltech256(root, image_size=224, per_class=30, seed=0, **_):
    """Caltech-256: ``per_class`` random training images per class, the rest for test."""
    tv = _torchvision("caltech256")
    base = _need_dir(root, "caltech256", "the folder holding 256_ObjectCategories/")
    base = base / "256_ObjectCategories" if (base / "256_ObjectCategories").is_dir() else base
    folder = tv.datasets.ImageFolder(str(base))
    keep = [i for i, c in enumerate(folder.classes) if "clutter" not in c]
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for new, c in enumerate(keep):
        paths = [p for p, label in folder.samples if label == c]
        order = torch.randperm(len(paths), generator=g).tolist()
        train += [(paths[i], new) for i in order[:per_class]]
        test += [(paths[i], new) for i in order[per_class:]]
    return _file_data("caltech256", tv, train, test, [folder.classes[c] for c in keep], image_size)


def cub200(root, image_size=448, **_):
    """CUB-200-2011 with its official train/test split (train_test_split.txt)."""
    tv = _torchvision("cub200")
    hint = "the CUB_200_2011 folder (images/, images.txt, train_test_split.txt, ...)"
    base = _need_dir(root, "cub200", hint)
    base = base / "CUB_200_2011" if (base / "CUB_200_2011").is_dir() else base

    def table(name):
        f = base / name
        if not f.is_file():
            raise FileNotFoundError(f"cub200: {f} is missing ({hint})")
        return dict(line.split(maxsplit=1) for line in f.read_text().splitlines() if line.strip())

    paths, labels, is_train = table("images.txt"), table("image_class_labels.txt"), \
        table("train_test_split.txt")
    names = table("classes.txt")
    classes = [names[k].strip() for k in sorted(names, key=int)]
    samples = {i: (base / "images" / p.strip(), int(labels[i]) - 1) for i, p in paths.items()}
    train = [s for i, s in samples.items() if is_train[i].strip() == "1"]
    test = [s for i, s in samples.items() if is_train[i].strip() != "1"]
    return _file_data("cub200", tv, train, test, classes, image_size)


SOURCES = {
    "digits": digits,
    "cifar10": lambda root=None, **kw: cifar(root, 10, **kw),
    "cifar100": lambda root=None, **kw: cifar(root, 100, **kw),
    "imagefolder": imagefolder,
    "caltech256": caltech256,
    "cub200": cub200,
    "voc2012": voc2012,
    "synthetic": synthetic,
    "synthetic-multilabel": lambda **kw: synthetic(multilabel=True, **kw),
}


def load(name, root=None, **options) -> Data:
    """Load source ``name`` (see the module docstring); ``root`` is its local folder.

    ``options`` (image_size, seed, per_class, train_size, ...) go to the source; ``None`` values
    are dropped so each source keeps its own defaults.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; choose from {sorted(SOURCES)}")
    options = {k: v for k, v in options.items() if v is not None}
    if root is not None:
        options["root"] = os.fspath(root)
    return SOURCES[name](**options)


def shard(dataset, rank, world):
    """Every ``world``-th sample starting at ``rank`` (an evaluation shard, no padding)."""
    return dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world))


def first(dataset, n):
    """The first ``n`` samples (all when ``n`` is None or not smaller)."""
    return dataset if n is None or n >= len(dataset) else Subset(dataset, range(n))
