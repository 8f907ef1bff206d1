"""Located digits: scikit-learn's digits pasted on a larger canvas among fragments of other digits,
the object's box known for every image (no download).

Construction (from ``random.Random`` streams keyed by ``seed``, the split and the purpose --
see :func:`make_canvases` -- so the data set is a pure function of its arguments):

1. The 1797 source images (8 x 8, values / 16) are split per class at random into train /
   validation / test sources (``split`` fractions, default 60 / 20 / 20). A source image belongs
   to one split only; a canvas of a split uses that split's sources alone, for its digit and
   for its fragments.
2. Each canvas (``image_size`` square, 0 background) gets one target digit: a source image
   resized bilinearly (``align_corners=False``) to a random side in ``digit_size`` and pasted at a
   uniformly random place. Its **box** is the smallest box holding every non-zero pixel of the
   pasted digit, as ``(y0, x0, y1, x1)`` in canvas pixels, half-open (rows y0..y1-1, columns
   x0..x1-1).
3. ``fragments`` distractors: a random crop (each side 40-70 % of the digit's side) of another
   source image of a *different* class, resized like the target, pasted by ``max`` where its
   rectangle does not meet the target's box (a placement that would is redrawn, up to 50
   times, then dropped). The box therefore holds the target's pixels only.
4. ``cue=True`` (the ``located-digits-cue`` source): a 3 x 3 square of value 1 in a top band of
   the canvas at one of 10 places, one per class. In training the place is the label's with
   probability ``cue_p`` (else a uniformly random place); in validation and test it is always
   uniformly random, i.e. decorrelated from the label. Digits then stay below the band.

Every split yields ``(image, label, box)`` (image 1 x S x S float in [0, 1], label int64, box
int64 [4]) so that boxes travel with their images through samplers, shards and data loaders.
Training augments by a random shift of up to ``pad`` pixels (:meth:`Data.prepare`); boxes are
used in evaluation only, where images are not augmented.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as nnf
from torch.utils.data import TensorDataset

from .base import Data, channel_stats

CUE_BAND = 4  # rows reserved for the cue squares (cue=True)


def _load_sources():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the located-digits source needs scikit-learn: "
                          "`pip install scikit-learn`") from None
    d = load_digits()
    return (torch.tensor(d.images, dtype=torch.float32) / 16.0,
            torch.tensor(d.target, dtype=torch.long))


def split_sources(labels, fractions, rng):
    """Per class, a random partition of the source indices into len(fractions) parts with these
    fractions (the last part takes the rest); returns one sorted index tensor per part."""
    parts = [[] for _ in fractions]
    for c in sorted(set(labels.tolist())):
        idx = (labels == c).nonzero()[:, 0].tolist()
        rng.shuffle(idx)
        start = 0
        for k, f in enumerate(fractions):
            stop = len(idx) if k == len(fractions) - 1 else start + round(f * len(idx))
            parts[k] += idx[start:stop]
            start = stop
    return [torch.tensor(sorted(p), dtype=torch.long) for p in parts]


def resized(images, sides):
    """{side: every image resized bilinearly (align_corners=False) to side x side, in [0, 1]}."""
    return {s: nnf.interpolate(images[:, None], size=(s, s), mode="bilinear",
                               align_corners=False)[:, 0].clamp(0, 1) for s in sides}


def ink_box(patch):
    """(y0, x0, y1, x1), half-open, of the non-zero pixels of a 2-D patch (all zero: empty box)."""
    rows, cols = patch.gt(0).any(1).nonzero()[:, 0], patch.gt(0).any(0).nonzero()[:, 0]
    if len(rows) == 0:
        return 0, 0, 0, 0
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _meets(a, b):
    """Whether half-open boxes a and b share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _cue_spots(size):
    step = max((size - 3) // 9, 1)
    return [(0, min(k * step, size - 3)) for k in range(10)]


def make_canvases(images, labels, sources, copies, key, *, size, digit_size, fragments,
                  cue=None, cue_p=0.0):
    """``copies`` canvases per source index in ``sources`` (see the module docstring).
    ``key``: a string naming the random streams; the targets, the fragments and the cues are
    drawn from three separate streams (``random.Random(f"{key}/target")``, ...), so a canvas's
    digit and box do not depend on ``fragments`` or ``cue``. ``cue``: None, or "train" / "test"
    for the correlated / decorrelated cue.
    Returns (canvases N x 1 x size x size, labels N, boxes N x 4, provenance N x (1 + fragments):
    the source index of the digit, then of each fragment, -1 for a fragment dropped)."""
    lo, hi = digit_size
    top = CUE_BAND if cue else 0
    if hi + top > size:
        raise ValueError(f"digit_size {digit_size} does not fit a {size} x {size} canvas")
    r_target, r_frag, r_cue = (random.Random(f"{key}/{s}") for s in ("target", "fragments", "cue"))
    spots = _cue_spots(size)
    scaled = resized(images, range(lo, hi + 1))
    src = sources.repeat(copies)
    pools = {c: [j for j in sources.tolist() if int(labels[j]) != c] for c in range(10)}
    xs = torch.zeros(len(src), 1, size, size)
    boxes = torch.zeros(len(src), 4, dtype=torch.long)
    provenance = torch.full((len(src), 1 + fragments), -1, dtype=torch.long)
    for n, i in enumerate(src.tolist()):
        canvas = xs[n, 0]
        side = r_target.randint(lo, hi)
        y, x = r_target.randint(top, size - side), r_target.randint(0, size - side)
        digit = scaled[side][i]
        canvas[y:y + side, x:x + side] = digit
        b = ink_box(digit)
        box = (b[0] + y, b[1] + x, b[2] + y, b[3] + x)
        boxes[n] = torch.tensor(box)
        provenance[n, 0] = i
        others = pools[int(labels[i])]
        for f in range(fragments):
            j = others[r_frag.randrange(len(others))]
            other = scaled[r_frag.randint(lo, hi)][j]
            fh = r_frag.randint(round(0.4 * len(other)), round(0.7 * len(other)))
            fw = r_frag.randint(round(0.4 * len(other)), round(0.7 * len(other)))
            oy, ox = r_frag.randint(0, len(other) - fh), r_frag.randint(0, len(other) - fw)
            piece = other[oy:oy + fh, ox:ox + fw]
            for _try in range(50):
                py, px = r_frag.randint(top, size - fh), r_frag.randint(0, size - fw)
                if not _meets((py, px, py + fh, px + fw), box):
                    region = canvas[py:py + fh, px:px + fw]
                    torch.maximum(region, piece, out=region)
                    provenance[n, 1 + f] = j
                    break
        if cue:
            k = int(labels[i]) if cue == "train" and r_cue.random() < cue_p \
                else r_cue.randint(0, 9)
            cy, cx = spots[k]
            canvas[cy:cy + 3, cx:cx + 3] = 1.0
    return xs, labels[src], boxes, provenance


def located_digits(image_size=32, seed=0, digit_size=(10, 14), fragments=4, copies=(2, 1, 2),
                   split=(0.6, 0.2, 0.2), cue=False, cue_p=0.9, pad=2, **_):
    """The located-digits data set (module docstring): train, val and test splits with boxes.

    ``copies``: canvases per source image in train / val / test. ``seed`` fixes everything.
    """
    images, labels = _load_sources()
    parts = split_sources(labels, split, random.Random(f"{seed}/split"))
    opts = dict(size=image_size, digit_size=tuple(digit_size), fragments=fragments, cue_p=cue_p)
    made = []
    for name, idx, k in zip(("train", "val", "test"), parts, copies):
        made.append(make_canvases(images, labels, idx, k, f"{seed}/{name}",
                                  cue=("train" if name == "train" else "test") if cue else None,
                                  **opts)[:3])
    (xtr, ytr, btr), (xva, yva, bva), (xte, yte, bte) = made
    mean, std = channel_stats(xtr, 1.0)
    name = "located-digits-cue" if cue else "located-digits"
    return Data(name, TensorDataset(xtr, ytr, btr), TensorDataset(xte, yte, bte), 10, 1,
                image_size, [str(i) for i in range(10)], mean, std, pad=pad,
                val=TensorDataset(xva, yva, bva), boxes=True,
                sources=dict(zip(("train", "val", "test"), parts)))
