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
    (image, target, box) when ``boxes``, (image, target, boxes, classes) with ``box_classes``
    too -- and what the trainer needs to know.

    ``scale``: in-memory images are divided by it (255 for uint8) before normalizing; ``pad`` and
    ``flip``: batch augmentation of in-memory sources (0 / False when the dataset does its own).
    ``val``: a validation split disjoint from test (None when the source has none); ``boxes``:
    every sample carries the object's box (y0, x0, y1, x1), half-open, in image pixels (the
    boxes :meth:`prepare` moves and guidance uses); ``box_classes``: with ``boxes``, a sample
    carries B boxes (B x 4, padded with empty boxes) and the class of each (B, -1 for padding),
    so that multi-label guidance gives each class its own boxes; the localization metrics
    (one box per image) are not measured then. ``sources``: for built data sets, the indices of
    the source images behind each split.
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
    box_classes: bool = False
    sources: dict | None = None

    @property
    def one_box(self):
        """Whether every sample carries one box: what the localization metrics and the pictures
        use."""
        return self.boxes and not self.box_classes

    def split(self, name):
        """The dataset of split ``name`` ("train", "val" or "test")."""
        ds = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if ds is None:
            raise SystemExit(f"data source {self.name} has no {name!r} split"
                             + (" (sources with one: located-digits, located-digits-cue)"
                                if name == "val" else ""))
        return ds

    def prepare(self, images, train, boxes=None):
        """float32 (x / scale - mean) / std, with random pad-crop and flip when ``train``. With
        ``boxes`` (N x 4 or N x B x 4, y0, x0, y1, x1) returns (images, boxes moved as the images
        were)."""
        x = images.float()
        if self.scale != 1.0:
            x = x / self.scale
        shift = None
        if train and self.pad:
            x, shift = random_crop(x, self.pad)
        flipped = None
        if train and self.flip:
            x, flipped = random_flip(x)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
        if boxes is None:
            return x
        return x, move_boxes(boxes, x.shape[-2:], shift, flipped)

    def unnormalize(self, x):
        """Inverse of the normalization of :meth:`prepare`: images in [0, 1] for pictures."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() * std + mean).clamp(0, 1)


def random_crop(x, pad):
    """Per image: zero-pad by ``pad`` on each side, crop the original size at a random offset.
    Returns (images, N x 2 shift): the content moved by (dy, dx) pixels."""
    n, c, h, w = x.shape
    xp = nnf.pad(x, (pad, pad, pad, pad))
    i = torch.randint(0, 2 * pad + 1, (n,)).to(x.device)
    j = torch.randint(0, 2 * pad + 1, (n,)).to(x.device)
    rows = (i[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (j[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[idx_n, idx_c, rows, cols], torch.stack([pad - i, pad - j], 1)


def random_flip(x):
    """Flip each image horizontally with probability 1/2; returns (images, N booleans)."""
    flip = (torch.rand(x.shape[0]) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x), flip


def move_boxes(boxes, size, shift=None, flipped=None):
    """Boxes (N x 4 or N x B x 4, half-open y0, x0, y1, x1) of images shifted by ``shift``
    (N x 2) and then flipped horizontally where ``flipped`` (N), clipped to the image (the
    guidance op clips too); empty boxes stay empty."""
    b = boxes.to(torch.float32).clone()
    per_image = (b.shape[0],) + (1,) * (b.dim() - 2)  # broadcasts an image's value to its boxes
    if shift is not None:
        b += shift.to(b)[:, [0, 1, 0, 1]].reshape(*per_image, 4)
    if flipped is not None:
        x0, x1 = b[..., 1].clone(), b[..., 3].clone()
        f = flipped.to(b.device).reshape(per_image)
        b[..., 1] = torch.where(f, size[1] - x1, x0)
        b[..., 3] = torch.where(f, size[1] - x0, x1)
    h, w = size
    return torch.stack([b[..., 0].clamp(0, h), b[..., 1].clamp(0, w), b[..., 2].clamp(0, h),
                        b[..., 3].clamp(0, w)], -1)


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
