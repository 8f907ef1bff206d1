"""Guidance from boxes (Rao, Böhle, Parchami-Araghi, Schiele, ICCV 2023) around any model whose
layers are named:

    loss = CE(Y, t) + sum_l weight_l * mean over annotated rows r of L(A_l[r], boxes[r])

A row r is one (image n, class c) of an image that has boxes: c is the label (single-label) or
each positive class (multi-label, with the boxes of that class). A_l[r] is the map of kind
``attention`` ("gradcam" by default, "ixg", "pixel", "channel") of the features F_l[n] of layer l
and the class-score gradient G_l[r] = dY[n, c]/dF_l[n]; L is ``loss`` ("energy" by default, "l1",
"ppce", "rrr") of :func:`attnfast.guidance_loss` against the share of each layer cell covered by
the row's boxes (``upsample="bilinear"``: the paper code's energy of the map upsampled to the
image, decision 24). Images without boxes add only their classification loss and are not counted in
the mean (docs/SPEC.md decision 23), so guiding with boxes for 1 % of the images is the same call.
With ``second_order`` (the paper's setting) the gradients stay in the graph (``create_graph``),
so the loss also trains through them. Features and gradients are captured as
:mod:`attnfast.capture` describes (hooks that :meth:`Guidance.remove` takes off again).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import ops
from ._args import flag, real
from ._compat import compile_opaque, donated_buffer_disabled
from ._schema import GUIDANCE_KINDS, LOSS_CODES
from .capture import (LayerTap, SupervisedWrapper, check_targets, classification_loss,
                      detach_step, refuse_compiled_double_backward, score_grads)

__all__ = ["Guidance", "GuidanceStep", "box_rows"]


class GuidanceStep(NamedTuple):
    """One guided step: ``guidance_loss`` = sum_l weight_l * ``parts[l]``, ``parts`` the mean
    loss per layer (name -> scalar), ``rows`` = (image index, class) of each guided row."""
    logits: torch.Tensor
    loss: torch.Tensor
    classification_loss: torch.Tensor
    attention_loss: torch.Tensor
    parts: dict
    rows: tuple


def box_rows(targets, boxes, annotated=None, box_classes=None):
    """(images R, classes R, boxes R x B x 4) of the guided rows.

    ``boxes``: an N x 4 or N x B x 4 tensor (pad with empty boxes), or a list of N tensors
    (B_n x 4; None for an image without boxes). ``annotated``: optional N booleans (False: the
    image's boxes are not used). Single-label ``targets`` (N labels): one row per annotated image,
    all its boxes. Multi-hot targets (N x C): one row per positive class of an annotated image,
    with the boxes whose ``box_classes`` entry is that class."""
    n = targets.shape[0]
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() == 2:
            boxes = boxes[:, None]
        if boxes.dim() != 3 or boxes.shape[0] != n or boxes.shape[2] != 4:
            raise ValueError(f"boxes must be N x 4 or N x B x 4 with N = {n} images, got shape "
                             f"{tuple(boxes.shape)}")
        listed = list(boxes)
    elif isinstance(boxes, (list, tuple)):
        if len(boxes) != n:
            raise ValueError(f"boxes must hold one entry per image ({n}), got {len(boxes)}")
        listed = [None if b is None else torch.as_tensor(b).reshape(-1, 4) for b in boxes]
    else:
        raise TypeError(f"boxes must be a tensor or a list of N tensors, got {type(boxes).__name__}")
    keep = [b is not None for b in listed]
    if annotated is not None:
        if len(annotated) != n:
            raise ValueError(f"annotated must hold one flag per image ({n}), got {len(annotated)}")
        keep = [k and bool(a) for k, a in zip(keep, annotated)]
    images, classes, row_boxes = [], [], []
    for i in (i for i in range(n) if keep[i]):
        if targets.dim() == 1:
            images.append(i), classes.append(int(targets[i])), row_boxes.append(listed[i])
            continue
        if box_classes is None:
            raise ValueError("multi-label guidance needs box_classes: the class of every box")
        labels = torch.as_tensor(box_classes[i]).reshape(-1)
        for c in targets[i].nonzero()[:, 0].tolist():
            images.append(i), classes.append(c), row_boxes.append(listed[i][labels.to(listed[i].device) == c])
    device = targets.device
    width = max([len(b) for b in row_boxes], default=0)
    padded = torch.zeros(len(row_boxes), width, 4, device=device)
    for r, b in enumerate(row_boxes):
        padded[r, :len(b)] = b.to(device=device, dtype=padded.dtype)
    return (torch.tensor(images, dtype=torch.long, device=device),
            torch.tensor(classes, dtype=torch.long, device=device), padded)


class Guidance(SupervisedWrapper):
    """Guidance of ``model``'s maps at ``layers`` by boxes (module docstring).

    ``layers``: a layer name, a list of names (each with ``weight``), or a dict name -> weight.
    ``g(images, targets, boxes, annotated=None, box_classes=None)`` -> :class:`GuidanceStep`
    (see :func:`box_rows` for the forms of ``boxes``); ``g(images)`` -> logits. Called with
    gradients disabled, the step is first-order and detached. ``remove()`` (or leaving a
    ``with`` block) takes the hooks off the model, which then is exactly as it was
    (:class:`attnfast.capture.Attached`).
    """

    def __init__(self, model, layers="layer4", *, attention="gradcam", loss="energy", weight=1.0,
                 second_order=True, multilabel=False, per_sample_grads=False, upsample="area",
                 eps=1e-6):
        super().__init__()
        if attention not in GUIDANCE_KINDS:
            raise ValueError(f"attention must be one of {tuple(GUIDANCE_KINDS)}, got {attention!r}")
        if loss not in LOSS_CODES:
            raise ValueError(f"loss must be one of {tuple(LOSS_CODES)}, got {loss!r}")
        if upsample not in ("area", "bilinear"):
            raise ValueError(f"upsample must be 'area' or 'bilinear', got {upsample!r}")
        if upsample == "bilinear" and loss != "energy":
            raise ValueError(f'upsample="bilinear" is defined for loss="energy" only, got {loss!r}')
        if isinstance(layers, str):
            layers = [layers]
        weights = dict(layers) if isinstance(layers, dict) else {name: weight for name in layers}
        if not weights:
            raise ValueError("layers must name at least one layer")
        self.weights = {name: real(w, f"weight of {name!r}", lo=0.0) for name, w in weights.items()}
        for name, value in (("second_order", second_order), ("multilabel", multilabel),
                            ("per_sample_grads", per_sample_grads)):
            flag(value, name)
        refuse_compiled_double_backward(model, "Guidance", second_order)
        self.model = model
        self.attention, self.loss_kind, self.eps = attention, loss, real(eps, "eps", positive=True)
        self.second_order, self.multilabel, self.upsample = second_order, multilabel, upsample
        self._tap = LayerTap(model, tuple(self.weights), per_sample=per_sample_grads,
                             user="Guidance")
        self._attach(self._tap)  # last: a failed construction attaches nothing

    @property
    def weight(self):
        """The weight of a single guided layer (the trainer's ramp sets it)."""
        (w,) = set(self.weights.values())
        return w

    @weight.setter
    def weight(self, value):
        self.weights = {name: value for name in self.weights}

    def forward(self, images, targets=None, boxes=None, annotated=None, box_classes=None):
        """The step of ``images``, ``targets`` and ``boxes``, or the logits without targets."""
        self._require_attached()
        if targets is None:
            with donated_buffer_disabled():
                return self.model(images)
        if boxes is None:
            raise ValueError("Guidance needs boxes: g(images, targets, boxes)")
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            step = self._guided(images, targets, boxes, annotated, box_classes,
                                self.second_order and keep_graph)
        return step if keep_graph else detach_step(step)

    @compile_opaque  # autograd.grad w.r.t. hooked features: eager (model may be compiled)
    def _guided(self, images, targets, boxes, annotated, box_classes, create_graph):
        with donated_buffer_disabled():
            with self._tap.capture() as store:
                logits = self.model(images)
            targets = check_targets(targets, logits, self.multilabel)
            images_r, classes_r, boxes_r = box_rows(targets, boxes, annotated, box_classes)
            feats = [store[name] for name in self.weights]
            grads = self._row_grads(logits, images_r, classes_r, feats, create_graph)
        cls = classification_loss(logits, targets, self.multilabel)
        parts = {name: ops.guidance_loss(f, g, boxes_r, images_r, image_size=images.shape[-2:],
                                         attention=self.attention, loss=self.loss_kind,
                                         upsample=self.upsample, eps=self.eps)
                 for name, f, g in zip(self.weights, feats, grads)}
        attention = sum(self.weights[name] * v for name, v in parts.items())
        return GuidanceStep(logits, cls + attention, cls, attention, parts,
                            (images_r, classes_r))

    def _row_grads(self, logits, images_r, classes_r, feats, create_graph):
        """G_l[r] = dY[n_r, c_r]/dF_l[n_r] for every layer: one gradient pass per class slot (an
        image's m-th row), the slot's rows gathered from it."""
        r = images_r.numel()
        if r == 0:
            return [f.new_zeros((0, *f.shape[1:])) for f in feats]
        slot = torch.zeros_like(images_r)
        for j in range(1, r):  # rows of an image are consecutive: the m-th gets slot m
            slot[j] = slot[j - 1] + 1 if images_r[j] == images_r[j - 1] else 0
        sels, pieces = [], [[] for _ in feats]
        for m in range(int(slot.max()) + 1):
            sel = (slot == m).nonzero()[:, 0]
            score_mask = torch.zeros(logits.shape, device=logits.device)
            score_mask[images_r[sel], classes_r[sel]] = 1.0
            for pieces_l, g in zip(pieces, score_grads(logits, score_mask, feats, create_graph)):
                pieces_l.append(g[images_r[sel]])
            sels.append(sel)
        back = torch.cat(sels).argsort()  # slot order -> row order
        return [torch.cat(p)[back] for p in pieces]
