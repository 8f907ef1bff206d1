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
* ``fgvc-aircraft`` (100 variants, trainval / test) and ``stanford-cars`` (196 classes): their
  official layouts through torchvision's datasets (see :mod:`.fgvc`).
* ``voc2012``: PASCAL VOC 2012 (``train`` / ``val`` lists of a local VOCdevkit), 20 classes
  multi-hot and the objects' boxes (with their classes, difficult and truncated ones kept) from
  the annotation XML (parsed with the standard library), images by PIL (see :mod:`.voc`).
* ``located-digits`` (the main job's task) / ``located-digits-cue``: a digit pasted at a random
  place on a larger canvas among fragments of other digits, its box known, train / validation /
  test split by source image (see :mod:`.located`); ``-cue`` adds a class-correlated cue in
  training that is decorrelated in validation and test.
* ``synthetic`` / ``synthetic-multilabel``: noise plus a bright square at a class-specific place
  (one square per positive class); learnable in seconds, for tests and throughput runs.

Modules: ``base`` (:class:`Data`, augmentation, shards), ``arrays`` (in-memory sources),
``files`` (image-file sources through torchvision), ``voc`` (PASCAL VOC 2012), ``fgvc``
(FGVC-Aircraft, Stanford Cars), ``located`` (the located digits). A new source is a function
returning a :class:`Data` in one of them and an entry in ``SOURCES``.
"""
from __future__ import annotations

import os

from .arrays import cifar, digits, synthetic
from .base import Data, first, shard
from .fgvc import fgvc_aircraft, stanford_cars
from .files import caltech256, cub200, imagefolder
from .located import located_digits
from .voc import VOC_CLASSES, voc2012

__all__ = ["Data", "load", "SOURCES", "FROM_FOLDER", "WITH_BOXES", "VOC_CLASSES", "shard",
           "first"]

SOURCES = {
    "digits": digits,
    "located-digits": located_digits,
    "located-digits-cue": lambda **kw: located_digits(cue=True, **kw),
    "cifar10": lambda root=None, **kw: cifar(root, 10, **kw),
    "cifar100": lambda root=None, **kw: cifar(root, 100, **kw),
    "imagefolder": imagefolder,
    "caltech256": caltech256,
    "cub200": cub200,
    "fgvc-aircraft": fgvc_aircraft,
    "stanford-cars": stanford_cars,
    "voc2012": voc2012,
    "synthetic": synthetic,
    "synthetic-multilabel": lambda **kw: synthetic(multilabel=True, **kw),
}

# The sources whose images come with object boxes (localization metrics, guidance).
WITH_BOXES = ("located-digits", "located-digits-cue", "voc2012")

# The sources read from a local folder (``--data-dir``); the others are built in memory.
FROM_FOLDER = ("cifar10", "cifar100", "imagefolder", "caltech256", "cub200", "fgvc-aircraft",
               "stanford-cars", "voc2012")


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
