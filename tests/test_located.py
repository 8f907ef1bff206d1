"""The located-digits data set (deterministic, boxes right, splits disjoint by source image, the
cue variant) and the localization metrics against hand-computed cases."""
import pytest
import torch

from attnfast.train.data import located
from attnfast.train.localize import (box_masks, energy_in_box, localization, pointing_in_box,
                                     to_image)

pytest.importorskip("sklearn")

SMALL = dict(image_size=32, copies=(1, 1, 1), split=(0.2, 0.1, 0.7))


@pytest.fixture(scope="module")
def sources():
    return located._load_sources()


def _canvases(sources, idx, fragments, cue=None, key="k"):
    images, labels = sources
    return located.make_canvases(images, labels, idx, 2, key, size=32, digit_size=(10, 14),
                                 fragments=fragments, cue=cue, cue_p=0.9)


# ----------------------------------------------------------------------------- data set

def test_same_seed_same_data_other_seed_other_data():
    a, b = located.located_digits(seed=3, **SMALL), located.located_digits(seed=3, **SMALL)
    c = located.located_digits(seed=4, **SMALL)
    for split in ("train", "val", "test"):
        for t, u in zip(a.split(split).tensors, b.split(split).tensors):
            assert torch.equal(t, u), split
        assert torch.equal(a.sources[split], b.sources[split])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert not torch.equal(a.sources["test"], c.sources["test"])


def test_splits_are_disjoint_by_source_image_and_cover_all(sources):
    d = located.located_digits(seed=0, **SMALL)
    tr, va, te = (set(d.sources[s].tolist()) for s in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert tr | va | te == set(range(len(sources[1])))
    # every class in every split, in the asked proportions (per class, rounded)
    labels = sources[1]
    for s, frac in zip(("train", "val", "test"), SMALL["split"]):
        counts = torch.bincount(labels[d.sources[s]], minlength=10)
        per_class = torch.bincount(labels, minlength=10)
        if s != "test":
            assert torch.equal(counts, (frac * per_class.double()).round().long()), s
        assert (counts > 0).all()
    assert len(d.train) == len(tr) and len(d.val) == len(va) and len(d.test) == len(te)


def test_fragments_come_from_the_same_split_and_another_class(sources):
    images, labels = sources
    idx = torch.arange(0, 300, 3)
    x, y, boxes, prov = _canvases(sources, idx, fragments=4)
    allowed = set(idx.tolist())
    assert torch.equal(y, labels[prov[:, 0]])
    used = prov[:, 1:]
    assert (used >= 0).float().mean() > 0.9  # almost every fragment found a place
    for n in range(len(y)):
        for j in used[n][used[n] >= 0].tolist():
            assert j in allowed and labels[j] != y[n]


def test_box_holds_the_digit_and_nothing_else(sources):
    """The digit is drawn from its own random stream: the canvases without fragments hold the
    same digits at the same places. Without fragments every lit pixel lies in the box and the
    box is tight; with fragments the box's content is unchanged (no fragment enters it)."""
    idx = torch.arange(1, 400, 4)
    bare, y0, b0, _ = _canvases(sources, idx, fragments=0)
    full, y1, b1, _ = _canvases(sources, idx, fragments=4)
    assert torch.equal(y0, y1) and torch.equal(b0, b1)
    inside = box_masks(b0, (32, 32))[:, None]
    assert (bare[~inside] == 0).all()
    for n in range(len(y0)):
        y_0, x_0, y_1, x_1 = b0[n].tolist()
        assert 0 <= y_0 < y_1 <= 32 and 0 <= x_0 < x_1 <= 32 and y_1 - y_0 <= 14
        patch = bare[n, 0, y_0:y_1, x_0:x_1]
        for edge in (patch[0], patch[-1], patch[:, 0], patch[:, -1]):
            assert edge.max() > 0  # tight: every side of the box touches the digit
    assert torch.equal(full[inside], bare[inside])
    assert (full[~inside] > 0).any()  # the fragments are there, outside the boxes


def test_the_box_holds_the_source_image_resized(sources):
    """Independently of the generator: the box's content is the labelled source image resized
    bilinearly (align_corners=False) to a side in 10..14, cut to its non-zero rows and columns."""
    images, labels = sources
    idx = torch.tensor([5, 17, 600])
    x, y, boxes, prov = _canvases(sources, idx, fragments=3)
    for n in range(len(y)):
        i = int(prov[n, 0])
        y_0, x_0, y_1, x_1 = boxes[n].tolist()
        content = x[n, 0, y_0:y_1, x_0:x_1]
        fits = []
        for side in range(10, 15):
            d = torch.nn.functional.interpolate(images[i][None, None], size=(side, side),
                                                mode="bilinear", align_corners=False)[0, 0]
            d = d.clamp(0, 1)
            rows, cols = d.gt(0).any(1).nonzero()[:, 0], d.gt(0).any(0).nonzero()[:, 0]
            d = d[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            fits.append(d.shape == content.shape and torch.equal(d, content))
        assert any(fits) and int(y[n]) == int(labels[i])


def test_cue_correlated_in_training_only(sources):
    idx = torch.arange(0, 1797, 2)
    _, y_tr, b_tr, _ = _canvases(sources, idx, fragments=2, cue="train")
    x_tr, _, _, _ = _canvases(sources, idx, fragments=2, cue="train")
    x_te, y_te, b_te, _ = _canvases(sources, idx, fragments=2, cue="test", key="t")
    spots = located._cue_spots(32)

    def spot_of(x):
        band = x[:, 0, :3]
        return torch.stack([band[:, 0:3, c:c + 3].eq(1).all(-1).all(-1) for _, c in spots], 1)

    hit_tr = spot_of(x_tr)[torch.arange(len(y_tr)), y_tr].float().mean()
    hit_te = spot_of(x_te)[torch.arange(len(y_te)), y_te].float().mean()
    assert 0.85 < hit_tr < 0.97          # 0.9 + 0.1 / 10 expected
    assert 0.05 < hit_te < 0.16          # 1 / 10 expected
    assert (b_tr[:, 0] >= located.CUE_BAND).all() and (b_te[:, 0] >= located.CUE_BAND).all()


def test_data_yields_boxes_and_prepare_keeps_them_valid():
    d = located.located_digits(seed=0, **SMALL)
    x, y, box = d.test[0]
    assert x.shape == (1, 32, 32) and y.dtype == torch.long and box.shape == (4,)
    assert d.boxes and d.val is not None and d.split("val") is d.val
    with pytest.raises(SystemExit, match="no 'val' split"):
        located.Data("x", d.train, d.test, 10, 1, 32, [], (0.0,), (1.0,)).split("val")


# ----------------------------------------------------------------------------- metrics

def test_bilinear_upsampling_by_hand():
    """2 x 2 -> 4 x 4, align_corners=False: output pixel i samples the map at
    (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]."""
    up = to_image(torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), (4, 4))[0]
    w = torch.tensor([1.0, 0.75, 0.25, 0.0])
    assert torch.allclose(up, w[:, None] * w[None, :], atol=1e-6)


def test_box_masks_are_half_open():
    m = box_masks(torch.tensor([[1, 2, 3, 4]]), (4, 5))[0]
    expect = torch.zeros(4, 5, dtype=torch.bool)
    expect[1:3, 2:4] = True
    assert torch.equal(m, expect)


def test_energy_and_pointing_by_hand():
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]).repeat(2, 1, 1)
    boxes = torch.tensor([[0, 0, 2, 2], [2, 2, 4, 4]])
    energy, pointing = localization(maps, boxes, (4, 4))
    # upsampled map = w w^T with w = (1, .75, .25, 0): total 2^2 = 4, top-left 2x2 = 1.75^2
    assert energy.tolist() == pytest.approx([1.75 ** 2 / 4, 0.25 ** 2 / 4])
    assert pointing.tolist() == [1.0, 0.0]


def test_negative_values_do_not_count_and_ties_share():
    a = torch.tensor([[[2.0, -2.0], [0.0, 0.0]]])
    inside = box_masks(torch.tensor([[0, 1, 1, 2]]), (2, 2))
    assert energy_in_box(a, inside).item() == 0.0 and pointing_in_box(a, inside).item() == 0.0
    flat = torch.ones(1, 4, 4)
    inside = box_masks(torch.tensor([[0, 0, 1, 2]]), (4, 4))
    assert energy_in_box(flat, inside).item() == pytest.approx(2 / 16)
    assert pointing_in_box(flat, inside).item() == pytest.approx(2 / 16)
    tie = torch.tensor([[[3.0, 0.0, 0.0, 3.0]]])
    inside = box_masks(torch.tensor([[0, 0, 1, 1]]), (1, 4))
    assert pointing_in_box(tie, inside).item() == pytest.approx(0.5)
    assert energy_in_box(tie, inside).item() == pytest.approx(0.5)


def test_all_zero_map_scores_chance():
    zero = torch.zeros(1, 2, 2)
    energy, pointing = localization(zero, torch.tensor([[0, 0, 2, 4]]), (4, 4))
    assert energy.item() == pytest.approx(0.5) and pointing.item() == pytest.approx(0.5)
