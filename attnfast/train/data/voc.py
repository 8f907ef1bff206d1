"""PASCAL VOC 2012 from a local VOCdevkit: images by PIL, multi-hot labels and object boxes from
the annotation XML files (standard library), for classification and for guidance from boxes.

Annotations (``Annotations/<id>.xml``, one per image id of ``ImageSets/Main/<split>.txt``):
``<size><width/><height/></size>`` and per object ``<name/>`` (one of :data:`VOC_CLASSES`),
``<difficult/>``, ``<truncated/>`` and ``<bndbox><xmin/><ymin/><xmax/><ymax/></bndbox>`` in
1-based inclusive pixel coordinates. :func:`parse_annotation` turns a box into our convention
(docs/SPEC.md decision 20: (y0, x0, y1, x1) in image pixels, half-open, 0-based):
y0 = ymin - 1, x0 = xmin - 1, y1 = ymax, x1 = xmax.

**Difficult and truncated objects are kept**, as labels and as boxes. This follows the code of
Rao et al. 2023 (its VOC preprocessing keeps every object of the XML, for the labels and for the
boxes); the usual VOC practice differs (the classification ground truth marks an image whose
only objects of a class are difficult as "0", and detection evaluation ignores difficult
objects): a difficult object is still an object of its class, and keeping it means every
positive class of an image has at least one box, so every guided row has a target. A truncated
object's box is the visible part of the object (VOC's rule), used as it is.

Every sample is ``(image, target, boxes, classes)``: the image resized by PIL (bilinear) to
``image_size`` x ``image_size`` as uint8 3 x S x S; the multi-hot target over the 20 classes;
the boxes scaled exactly as the image is (:func:`scale_boxes`: the image's extent [0, W) x
[0, H) of the XML's ``<size>`` onto [0, S) x [0, S)), B x 4 float32; the class index of each box
(B int64). B is the most objects of any image of the split; shorter lists are padded with empty
boxes of class -1, so that batches stack. The image read must have the XML's size (else an
error names the file). The trainer's flip (:meth:`Data.prepare`) moves the boxes with the image.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import torch
from torch.utils.data import Dataset

from .base import IMAGENET_MEAN, IMAGENET_STD, Data, need_dir

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
HINT = "the folder holding VOCdevkit/VOC2012 (JPEGImages, Annotations, ImageSets/Main)"


def parse_annotation(path):
    """(size (H, W), classes [int], boxes [(y0, x0, y1, x1)], difficult [bool]) of one
    annotation XML file: one entry per ``<object>``, boxes 0-based and half-open in the image's
    pixels (module docstring). ValueError naming the file for a missing field or an unknown
    class."""
    root = ET.parse(path).getroot()

    def number(node, tag, what):
        text = node.findtext(tag)
        if text is None or not text.strip():
            raise ValueError(f"voc2012: {path}: {what} has no <{tag}>")
        return float(text)

    size = root.find("size")
    if size is None:
        raise ValueError(f"voc2012: {path}: no <size> (needed to scale the boxes)")
    hw = (int(number(size, "height", "<size>")), int(number(size, "width", "<size>")))
    classes, boxes, difficult = [], [], []
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise ValueError(f"voc2012: {path}: object {k} is {name!r}, not one of the 20 VOC "
                             "classes")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"voc2012: {path}: object {k} ({name}) has no <bndbox>")
        what = f"object {k} ({name})"
        xmin, ymin, xmax, ymax = (number(box, t, what) for t in ("xmin", "ymin", "xmax", "ymax"))
        classes.append(VOC_CLASSES.index(name))
        boxes.append((ymin - 1, xmin - 1, ymax, xmax))
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return hw, classes, boxes, difficult


def scale_boxes(boxes, size, image_size):
    """Boxes (B x 4, y0, x0, y1, x1) of an H x W image, in the pixels of that image resized to
    ``image_size`` x ``image_size`` (y * S / H, x * S / W), clipped to it; float32."""
    h, w = size
    s = float(image_size)
    b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    scaled = b * torch.tensor([s / h, s / w, s / h, s / w], dtype=torch.float64)
    return scaled.clamp(0.0, s).to(torch.float32)


class VocImages(Dataset):
    """(image, target, boxes, classes) of a list of image ids (module docstring)."""

    def __init__(self, base, ids, image_size):
        self.base, self.ids, self.size = base, list(ids), image_size
        parsed = [parse_annotation(base / "Annotations" / f"{i}.xml") for i in self.ids]
        width = max([len(p[1]) for p in parsed], default=0)
        n = len(self.ids)
        self.sizes = torch.tensor([p[0] for p in parsed], dtype=torch.long).reshape(n, 2)
        self.targets = torch.zeros(n, len(VOC_CLASSES))
        self.boxes = torch.zeros(n, width, 4)
        self.classes = torch.full((n, width), -1, dtype=torch.long)
        for k, (hw, classes, boxes, _) in enumerate(parsed):
            self.targets[k, classes] = 1.0
            self.boxes[k, :len(boxes)] = scale_boxes(boxes, hw, image_size)
            self.classes[k, :len(classes)] = torch.tensor(classes, dtype=torch.long)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        import numpy as np
        from PIL import Image
        path = self.base / "JPEGImages" / f"{self.ids[i]}.jpg"
        h, w = self.sizes[i].tolist()
        with Image.open(path) as im:
            if im.size != (w, h):
                raise ValueError(f"voc2012: {path} is {im.size[0]} x {im.size[1]} pixels but its "
                                 f"annotation says {w} x {h}: the boxes would not fit the image")
            im = im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        return x, self.targets[i], self.boxes[i], self.classes[i]


def _split_ids(base, name):
    """The image ids of ImageSets/Main/<name>.txt; FileNotFoundError listing the ids whose
    image or annotation file is missing."""
    ids = (base / "ImageSets" / "Main" / f"{name}.txt").read_text().split()
    for folder, ext in (("Annotations", "xml"), ("JPEGImages", "jpg")):
        missing = [i for i in ids if not (base / folder / f"{i}.{ext}").is_file()]
        if missing:
            raise FileNotFoundError(
                f"voc2012: {len(missing)} image id(s) of ImageSets/Main/{name}.txt have no "
                f"{folder}/<id>.{ext} under {base}: {', '.join(missing[:5])}"
                + (", ..." if len(missing) > 5 else "") + f" ({HINT})")
    return ids


def voc2012(root, image_size=224, **_):
    """PASCAL VOC 2012: ImageSets/Main/train.txt for training, val.txt for test; every sample
    with its boxes (module docstring)."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ImportError("voc2012 needs Pillow to read JPEGs: `pip install pillow`") from None
    base = need_dir(root, "voc2012", HINT)
    for cand in (base / "VOCdevkit" / "VOC2012", base / "VOC2012", base):
        if (cand / "ImageSets" / "Main" / "train.txt").is_file():
            base = cand
            break
    else:
        raise FileNotFoundError(f"voc2012: no ImageSets/Main/train.txt under {base} ({HINT})")
    train, test = (VocImages(base, _split_ids(base, s), image_size) for s in ("train", "val"))
    return Data("voc2012", train, test, 20, 3, image_size, list(VOC_CLASSES), IMAGENET_MEAN,
                IMAGENET_STD, multilabel=True, scale=255.0, flip=True, boxes=True,
                box_classes=True)
