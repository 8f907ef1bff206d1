"""Sources read from image files through torchvision: an ImageNet-style folder, Caltech-256 and
CUB-200-2011 (PASCAL VOC 2012, read by PIL alone, is in :mod:`.voc`)."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .base import IMAGENET_MEAN, IMAGENET_STD, Data, need_dir


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


def transforms(tv, image_size):
    """(training, test) transforms of the image-file sources: the usual ImageNet crops
    (random-resized + flip for training, resize + center crop for test), as [0, 1] tensors;
    :meth:`Data.prepare` normalizes."""
    t = tv.transforms
    return (t.Compose([t.RandomResizedCrop(image_size), t.RandomHorizontalFlip(), t.ToTensor()]),
            t.Compose([t.Resize(round(image_size * 8 / 7)), t.CenterCrop(image_size),
                       t.ToTensor()]))


def _file_data(name, tv, train_samples, test_samples, classes, image_size):
    """Datasets over (path, label) lists with :func:`transforms`."""
    train_tf, test_tf = transforms(tv, image_size)
    loader = tv.datasets.folder.default_loader
    return Data(name, _TransformedFiles(train_samples, train_tf, loader),
                _TransformedFiles(test_samples, test_tf, loader), len(classes), 3, image_size,
                list(classes), IMAGENET_MEAN, IMAGENET_STD)


def imagefolder(root, image_size=224, **_):
    """ImageNet-style tree: root/train/<class>/*, root/val/<class>/*."""
    tv = _torchvision("imagefolder")
    base = need_dir(root, "imagefolder", "a folder with train/<class>/ and val/<class>/")
    for s in ("train", "val"):
        if not (base / s).is_dir():
            raise FileNotFoundError(f"imagefolder: {base / s} is missing")
    tr = tv.datasets.ImageFolder(str(base / "train"))
    # val/ is labelled by train/'s class indices: ImageFolder on val/ alone would renumber its
    # classes whenever val/ lacks one of them
    unknown = sorted(set(tv.datasets.folder.find_classes(str(base / "val"))[0]) - set(tr.classes))
    if unknown:
        raise ValueError(f"imagefolder: {base / 'val'} has classes that {base / 'train'} lacks: "
                         f"{', '.join(unknown[:10])}")
    te = tv.datasets.folder.make_dataset(str(base / "val"), tr.class_to_idx,
                                         extensions=tv.datasets.folder.IMG_EXTENSIONS,
                                         allow_empty=True)
    return _file_data("imagefolder", tv, tr.samples, te, tr.classes, image_size)


def caltech256(root, image_size=224, per_class=30, seed=0, **_):
    """Caltech-256: ``per_class`` random training images per class, the rest for test."""
    tv = _torchvision("caltech256")
    base = need_dir(root, "caltech256", "the folder holding 256_ObjectCategories/")
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
    base = need_dir(root, "cub200", hint)
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
