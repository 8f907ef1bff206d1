"""The voc2012 source on a small generated VOC-format tree (VOCdevkit/VOC2012 with JPEGImages,
Annotations and ImageSets/Main written in a tmp dir, images by PIL): labels and boxes parsed from
the XML and scaled with their images (pinned by hand), boxes that follow the resize and the flip
of a known bright rectangle, the rows guidance makes of a batch, clear errors for missing or
inconsistent annotations, and a one-epoch guidance run of the trainer on the tree."""
import json

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from attnfast.guidance import box_rows
from attnfast.train import data as data_mod
from attnfast.train.data.base import move_boxes
from attnfast.train.data.voc import parse_annotation

Image = pytest.importorskip("PIL.Image", reason="the voc2012 source reads JPEGs with Pillow")
DOG, PERSON, CAR = (data_mod.VOC_CLASSES.index(c) for c in ("dog", "person", "car"))

# id -> ((W, H), [(name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult, truncated)])
IMAGES = {
    # a white rectangle on black, rows 4..11 and columns 6..25 (0-based): its box
    "rect": ((40, 20), [("dog", (7, 5, 26, 12), 0, 0)]),
    # two dogs (one truncated) and a difficult person: multi-object, multi-class
    "many": ((50, 25), [("dog", (11, 6, 30, 20), 0, 0), ("person", (1, 1, 50, 25), 1, 0),
                        ("dog", (41, 16, 50, 25), 0, 1)]),
    # a car only: no object of the other classes
    "car": ((30, 30), [("car", (4, 4, 15, 27), 0, 0)]),
}


def annotation(size, objects):
    """The annotation XML of an image of ``size`` (W, H) holding ``objects``."""
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>{trunc}</truncated>"
        f"<difficult>{diff}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1), diff, trunc in objects)
    return (f"<annotation><folder>VOC2012</folder><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{body}</annotation>")


def voc_tree(root, train=("rect", "many", "car"), val=("car", "rect")):
    """The VOCdevkit/VOC2012 tree of IMAGES under ``root``; returns the VOC2012 folder."""
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i, (k, (size, objects)) in enumerate(IMAGES.items()):
        pixels = np.full((size[1], size[0], 3), 40 * i, dtype=np.uint8)
        if k == "rect":
            pixels[:] = 0
            pixels[4:12, 6:26] = 255
        Image.fromarray(pixels).save(base / "JPEGImages" / f"{k}.jpg", quality=95)
        (base / "Annotations" / f"{k}.xml").write_text(annotation(size, objects))
    (base / "ImageSets/Main/train.txt").write_text("\n".join(train) + "\n")
    (base / "ImageSets/Main/val.txt").write_text("\n".join(val) + "\n")
    return base


def bright_box(image):
    """(y0, x0, y1, x1), half-open, of the pixels brighter than half (C x H x W in [0, 1])."""
    rows, cols = image.mean(0).gt(0.5).nonzero().unbind(1)
    return [int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1]


def test_annotation_parsed_to_half_open_zero_based_boxes(tmp_path):
    base = voc_tree(tmp_path)
    size, classes, boxes, difficult = parse_annotation(base / "Annotations" / "many.xml")
    assert size == (25, 50)  # (H, W)
    assert classes == [DOG, PERSON, DOG]
    # (ymin - 1, xmin - 1, ymax, xmax): the difficult and the truncated objects are kept
    assert boxes == [(5, 10, 20, 30), (0, 0, 25, 50), (15, 40, 25, 50)]
    assert difficult == [False, True, False]


def test_samples_carry_their_boxes_scaled_as_the_image(tmp_path):
    voc_tree(tmp_path)
    d = data_mod.load("voc2012", tmp_path, image_size=20)
    assert d.multilabel and d.num_classes == 20 and d.boxes and d.box_classes and not d.one_box
    x, y, boxes, classes = d.train[1]  # "many": 50 x 25 -> 20 x 20, x * 0.4, y * 0.8
    assert x.shape == (3, 20, 20) and x.dtype == torch.uint8
    assert {data_mod.VOC_CLASSES[i] for i in y.nonzero()[:, 0].tolist()} == {"dog", "person"}
    assert boxes.tolist() == [[4, 4, 16, 12], [0, 0, 20, 20], [12, 16, 20, 20]]
    assert classes.tolist() == [DOG, PERSON, DOG]
    _, y, boxes, classes = d.train[2]  # "car": 30 x 30 -> 20 x 20, padded to the split's 3
    assert y.nonzero()[:, 0].tolist() == [CAR]
    assert boxes.tolist() == [[2, 2, 18, 10], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert classes.tolist() == [CAR, -1, -1]
    _, y, boxes, classes = d.test[0]  # the val split's widest image has one object
    assert boxes.tolist() == [[2, 2, 18, 10]] and classes.tolist() == [CAR]
    # a size that does not divide: "many" at 16 pixels (x * 0.32, y * 0.64)
    small = data_mod.load("voc2012", tmp_path, image_size=16).train[1][2]
    assert torch.allclose(small[0], torch.tensor([3.2, 3.2, 12.8, 9.6]))


def test_box_follows_the_image_through_resize_and_flip(tmp_path):
    """The rectangle of "rect" (rows 4..11, columns 6..25 of 40 x 20) resized to 20 x 20 lies at
    rows 4..11, columns 3..12: its box (4, 3, 12, 13); flipped, columns 7..16."""
    voc_tree(tmp_path)
    d = data_mod.load("voc2012", tmp_path, image_size=20)
    x, _, box, _ = d.train[0]
    assert box.tolist() == [[4, 3, 12, 13], [0, 0, 0, 0], [0, 0, 0, 0]]  # padded to 3 boxes
    assert bright_box(x.float() / 255) == [4, 3, 12, 13]
    torch.manual_seed(0)
    images, boxes = d.prepare(x.repeat(8, 1, 1, 1), train=True, boxes=box.repeat(8, 1, 1))
    shown = d.unnormalize(images)
    flipped = [b[0].tolist() == [4, 7, 12, 17] for b in boxes]
    assert any(flipped) and not all(flipped)
    for n in range(8):
        assert boxes[n, 0].tolist() in ([4, 3, 12, 13], [4, 7, 12, 17])
        assert bright_box(shown[n]) == boxes[n, 0].tolist(), n
    assert (boxes[:, 1:, 3] == boxes[:, 1:, 1]).all()  # the padding stays empty


def test_move_boxes_of_several_boxes_per_image():
    """Shift (1, -1), then flip in a width of 10: (1, 2, 5, 6) -> (2, 1, 6, 5) -> (2, 5, 6, 9);
    the padding box stays empty, the one pushed out of the image is clipped to its edge."""
    boxes = torch.tensor([[[1., 2, 5, 6], [0, 0, 0, 0], [0, 8, 3, 10]],
                          [[1., 2, 5, 6], [0, 0, 0, 0], [0, 8, 3, 10]]])
    moved = move_boxes(boxes, (8, 10), torch.tensor([[1, -1], [0, 2]]),
                       torch.tensor([True, False]))
    assert moved.tolist() == [[[2, 5, 6, 9], [1, 10, 1, 10], [1, 1, 4, 3]],
                              [[1, 4, 5, 8], [0, 2, 0, 2], [0, 10, 3, 10]]]
    one = move_boxes(boxes[:, 0], (8, 10), torch.tensor([[1, -1], [0, 2]]),
                     torch.tensor([True, False]))
    assert one.tolist() == moved[:, 0].tolist()


def test_guided_rows_take_the_boxes_of_their_class(tmp_path):
    """A batch of the tree gives one row per (image, positive class), with that class's boxes;
    classes an image lacks give no row, an image left out by ``annotated`` none at all."""
    voc_tree(tmp_path)
    d = data_mod.load("voc2012", tmp_path, image_size=20)
    x, y, boxes, classes = default_collate([d.train[i] for i in range(3)])
    images, cls, rows = box_rows(y, boxes, box_classes=classes)
    assert images.tolist() == [0, 1, 1, 2] and cls.tolist() == [DOG, DOG, PERSON, CAR]
    assert rows.tolist() == [[[4, 3, 12, 13], [0, 0, 0, 0]],
                             [[4, 4, 16, 12], [12, 16, 20, 20]],
                             [[0, 0, 20, 20], [0, 0, 0, 0]],
                             [[2, 2, 18, 10], [0, 0, 0, 0]]]
    images, cls, _ = box_rows(y, boxes, torch.tensor([True, False, True]), classes)
    assert images.tolist() == [0, 2] and cls.tolist() == [DOG, CAR]


@pytest.mark.parametrize("gone", ["Annotations/many.xml", "JPEGImages/many.jpg"])
def test_a_missing_file_names_the_image_id(tmp_path, gone):
    base = voc_tree(tmp_path)
    (base / gone).unlink()
    folder, ext = gone.split("/")[0], gone.rsplit(".", 1)[1]
    with pytest.raises(FileNotFoundError, match=rf"1 image id\(s\) of ImageSets/Main/train.txt "
                                                rf"have no {folder}/<id>.{ext} under .*: many \("):
        data_mod.load("voc2012", tmp_path)


@pytest.mark.parametrize("xml, match", [
    (annotation((50, 25), [("dogg", (1, 1, 5, 5), 0, 0)]), "object 0 is 'dogg', not one of"),
    ("<annotation><size><width>5</width><height>5</height></size><object><name>dog</name>"
     "</object></annotation>", r"object 0 \(dog\) has no <bndbox>"),
    ("<annotation><object><name>dog</name></object></annotation>", "no <size>"),
    (annotation((50, 25), [("dog", (1, 1, 5, 5), 0, 0)]).replace("<ymax>5</ymax>", ""),
     r"object 0 \(dog\) has no <ymax>"),
])
def test_a_bad_annotation_names_the_file_and_the_object(tmp_path, xml, match):
    base = voc_tree(tmp_path)
    (base / "Annotations" / "many.xml").write_text(xml)
    with pytest.raises(ValueError, match="many.xml: " + match):
        data_mod.load("voc2012", tmp_path)


def test_an_image_of_another_size_than_its_annotation_is_refused(tmp_path):
    base = voc_tree(tmp_path)
    (base / "Annotations" / "car.xml").write_text(annotation((31, 30), IMAGES["car"][1]))
    d = data_mod.load("voc2012", tmp_path, image_size=20)
    with pytest.raises(ValueError, match=r"car.jpg is 30 x 30 pixels but its annotation says "
                                         r"31 x 30"):
        d.train[2]


@pytest.mark.usefixtures("torch_backend")  # conftest: the trainer's code, not the kernels
def test_guidance_trains_on_voc_boxes(tmp_path):
    """``--data voc2012 --method guidance --box-fraction 0.67``: two of the three training
    images are guided (listed in boxes_used.json), every image of the one batch, so the epoch's
    attention loss is an energy in (0, 1]; the localization metrics of one-box data are absent."""
    from attnfast.train import main
    voc_tree(tmp_path)
    out = tmp_path / "run"
    assert main(["--data", "voc2012", "--data-dir", str(tmp_path), "--method", "guidance",
                 "--box-fraction", "0.67", "--model", "resnet8", "--epochs", "1",
                 "--batch-size", "3", "--image-size", "32", "--out", str(out), "--pictures", "1",
                 "--no-progress", "--seeds", "1", "--workers", "0"]) == 0
    used = json.loads((out / "guidance" / "boxes_used.json").read_text())
    assert (used["box_fraction"], used["images"], used["of"]) == (0.67, 2, 3)
    metrics = json.loads((out / "guidance" / "metrics.json").read_text())
    (row,) = metrics["epochs"]
    assert 0 < row["train_attention_loss"] <= 1 and row["train_images"] == 3
    assert "test_mAP" in row and not any("energy" in k for k in row)
