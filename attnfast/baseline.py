"""The plain classifier with the training wrappers' call convention (what Sharpen Focus and
GGAM are compared against): loss = cross-entropy, or MultiLabelSoftMarginLoss for multi-hot
targets; no attention term."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from .capture import check_targets, classification_loss

__all__ = ["Baseline", "BaselineStep"]


class BaselineStep(NamedTuple):
    """Plain classification step (``attention_loss`` is 0), the same fields a trainer logs."""
    logits: torch.Tensor
    loss: torch.Tensor
    classification_loss: torch.Tensor
    attention_loss: torch.Tensor


class Baseline(nn.Module):
    """``b(images, targets)`` -> :class:`BaselineStep`, ``b(images)`` -> logits."""

    def __init__(self, model, *, multilabel=False):
        super().__init__()
        self.model, self.multilabel = model, multilabel

    def forward(self, images, targets=None):
        logits = self.model(images)
        if targets is None:
            return logits
        targets = check_targets(targets, logits, self.multilabel)
        cls = classification_loss(logits, targets, self.multilabel)
        return BaselineStep(logits, cls, cls, torch.zeros_like(cls))
