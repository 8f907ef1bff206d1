"""Localization of attention maps against known object boxes.

A map A (N x h x w, one class per image, at any layer) is brought to image coordinates by
bilinear upsampling to the image's H x W with ``align_corners=False`` (:func:`to_image`, as
``torch.nn.functional.interpolate`` does it: output pixel (i, j) samples the map at
((i + 0.5) h / H - 0.5, (j + 0.5) w / W - 0.5), clamped to the map's edge), then only its
positive part A+ = max(A, 0) counts. A box is (y0, x0, y1, x1) in image pixels, half-open.

* **energy** (the energy-based pointing game of Score-CAM, Wang et al. 2020): the share of the
  map's positive mass inside the box, sum_{p in box} A+[p] / sum_p A+[p].
* **pointing** (the pointing game of Zhang et al. 2016, without tolerance): whether the map's
  maximum lies inside the box. When several pixels share the maximum the score is the share of
  them inside the box (so a tie is never decided by scan order).

An all-zero map carries no location: it counts as the uniform map, whose two scores are both the
box's share of the image (chance level). A map with a NaN scores NaN (no made-up value). Per
image the scores lie in [0, 1]; the trainer reports their means.
"""
from __future__ import annotations

import torch
import torch.nn.functional as nnf

__all__ = ["to_image", "box_masks", "energy_in_box", "pointing_in_box", "localization"]


def to_image(maps, size):
    """N x h x w maps -> N x H x W, bilinear, ``align_corners=False``, float32."""
    maps = maps.float()
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return nnf.interpolate(maps[:, None], size=tuple(size), mode="bilinear",
                           align_corners=False)[:, 0]


def box_masks(boxes, size):
    """N x H x W booleans, True inside each half-open box (y0, x0, y1, x1)."""
    h, w = size
    b = boxes.long()
    rows = torch.arange(h, device=b.device)[None, :, None]
    cols = torch.arange(w, device=b.device)[None, None, :]
    return ((rows >= b[:, 0, None, None]) & (rows < b[:, 2, None, None])
            & (cols >= b[:, 1, None, None]) & (cols < b[:, 3, None, None]))


def energy_in_box(maps, inside):
    """Per image: sum of A+ inside / sum of A+ (maps already in image coordinates); an all-zero
    map scores the box's share of the image."""
    a = maps.clamp_min(0).flatten(1).double()
    m = inside.flatten(1)
    total = a.sum(1)
    share = m.double().mean(1)
    # total == 0 (not "total > 0 else"): a NaN map keeps its NaN instead of scoring chance
    return torch.where(total == 0, share, (a * m).sum(1) / total.clamp_min(1e-300)).float()


def pointing_in_box(maps, inside):
    """Per image: the share of the map's maximal pixels that lie inside the box (1 or 0 for a
    unique maximum)."""
    a = maps.clamp_min(0).flatten(1)
    top = a == a.amax(1, keepdim=True)
    m = inside.flatten(1)
    return ((top & m).sum(1).float() / top.sum(1).float())


def localization(maps, boxes, size):
    """(energy, pointing) per image of raw maps N x h x w against boxes N x 4 on H x W images."""
    up = to_image(maps, size)
    inside = box_masks(boxes.to(up.device), size)
    return energy_in_box(up, inside), pointing_in_box(up, inside)
