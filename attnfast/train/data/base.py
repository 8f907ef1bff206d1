"""What every data source returns (:class:`Data`) and the helpers they share: batch
augmentation of in-memory images, channel statistics, folder checks, shards and subsets.

In-memory sources hold uint8/float images; :meth:`Data.prepare` turns a batch into the
normalized float input (and augments it when training) on the batch's device, using the global
torch RNG so that a resumed run draws the same augmentations.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as nnf
from torch.utils.data import Dataset, Subset

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Data:
    """Train/test (and optionally validation) datasets yielding (image, target) -- or
    (image, target, box) when ``boxes`` -- and what the trainer needs to know.

    ``scale``: in-memory images are divided by it (255 for uint8) before normalizing; ``pad`` and
    ``flip``: batch augmentation of in-memory sources (0 / False when the dataset does its own).
    ``val``: a validation split disjoint from test (None when the source has none); ``boxes``:
    every sample carries the object's box (y0, x0, y1, x1), half-open, in image pixels;
    ``sources``: for built data sets, the indices of the source images behind each split.
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
    val: Dataset | None = None
    boxes: bool = False
    sources: dict | None = None

    def split(self, name):
        """The dataset of split ``name`` ("train", "val" or "test")."""
        ds = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if ds is None:
            raise SystemExit(f"data source {self.name} has no {name!r} split"
                             + (" (sources with one: located-digits, located-digits-cue)"
                                if name == "val" else ""))
        return ds

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


def channel_stats(images, scale):
    x = images.float() / scale
    return (tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist()))


def need_dir(path, what, hint):
    if path is None:
        raise ValueError(f"{what} needs --data-dir: {hint}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what}: {p} is not a directory ({hint})")
    return p


def shard(dataset, rank, world):
    """Every ``world``-th sample starting at ``rank`` (an evaluation shard, no padding)."""
    return dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world))


def first(dataset, n):
    """The first ``n`` samples (all when ``n`` is None or not smaller)."""
    return dataset if n is None or n >= len(dataset) else Subset(dataset, range(n))
