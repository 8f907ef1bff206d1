"""The fine-grained sources of GGAM besides CUB-200-2011, read through torchvision's datasets from
their official layouts in a local folder (``--data-dir``; nothing is downloaded):

* ``fgvc-aircraft``: FGVC-Aircraft 2013b at the variant level, 100 classes, the official
  ``trainval`` split (6667 images) for training and ``test`` (3333) for test. The folder holds
  ``fgvc-aircraft-2013b/data/`` (``images/``, ``variants.txt``,
  ``images_variant_{trainval,test}.txt``), as the archive unpacks; ``--data-dir`` may also name
  ``fgvc-aircraft-2013b`` itself.
* ``stanford-cars``: Stanford Cars, 196 classes, 8144 training and 8041 test images. The folder
  holds ``stanford_cars/`` with the official files: ``devkit/cars_meta.mat``,
  ``devkit/cars_train_annos.mat``, ``cars_train/``, ``cars_test/`` and
  ``cars_test_annos_withlabels.mat`` (torchvision's layout); ``--data-dir`` may also name
  ``stanford_cars`` itself. Reading the ``.mat`` files needs scipy.

Both use the crops of the other image-file sources (:func:`.files.transforms`).
"""
from __future__ import annotations

from .base import IMAGENET_MEAN, IMAGENET_STD, Data, need_dir
from .files import _torchvision, transforms


def _layout(base, folder, files, what, hint):
    """The folder above ``folder`` (given it or its parent), every one of ``files`` (relative to
    ``folder``) present there; FileNotFoundError naming the first that is missing."""
    root = base.parent if base.name == folder and not (base / folder).is_dir() else base
    for rel in files:
        if not (root / folder / rel).exists():
            raise FileNotFoundError(f"{what}: {root / folder / rel} is missing ({hint})")
    return root


def _data(name, train, test, image_size):
    """The :class:`Data` of torchvision datasets ``train`` / ``test`` (RGB, ImageNet statistics,
    the classes of ``train``)."""
    return Data(name, train, test, len(train.classes), 3, image_size, list(train.classes),
                IMAGENET_MEAN, IMAGENET_STD)


def fgvc_aircraft(root, image_size=448, **_):
    """FGVC-Aircraft, variants, trainval / test (module docstring)."""
    tv = _torchvision("fgvc-aircraft")
    hint = "the folder holding fgvc-aircraft-2013b/data/ (images/, variants.txt, " \
           "images_variant_trainval.txt, images_variant_test.txt)"
    base = _layout(need_dir(root, "fgvc-aircraft", hint), "fgvc-aircraft-2013b",
                   [f"data/{f}" for f in ("images", "variants.txt", "images_variant_trainval.txt",
                                          "images_variant_test.txt")], "fgvc-aircraft", hint)
    train_tf, test_tf = transforms(tv, image_size)
    split = {s: tv.datasets.FGVCAircraft(str(base), split=s, annotation_level="variant",
                                         transform=tf)
             for s, tf in (("trainval", train_tf), ("test", test_tf))}
    return _data("fgvc-aircraft", split["trainval"], split["test"], image_size)


def stanford_cars(root, image_size=448, **_):
    """Stanford Cars, the official train / test split (module docstring)."""
    tv = _torchvision("stanford-cars")
    hint = "the folder holding stanford_cars/ (devkit/cars_meta.mat, " \
           "devkit/cars_train_annos.mat, cars_train/, cars_test/, cars_test_annos_withlabels.mat)"
    base = _layout(need_dir(root, "stanford-cars", hint), "stanford_cars",
                   ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_train",
                    "cars_test", "cars_test_annos_withlabels.mat"), "stanford-cars", hint)
    train_tf, test_tf = transforms(tv, image_size)
    split = {s: tv.datasets.StanfordCars(str(base), split=s, transform=tf)
             for s, tf in (("train", train_tf), ("test", test_tf))}
    return _data("stanford-cars", split["train"], split["test"], image_size)
