"""GGAM (Xu et al. 2021) around any model whose layers are named.

After ``layer`` the channel attention S = softmax_c(W2 ReLU(W1 GAP(A) + b1) + b2) (the paper's
Eq. 1: a distribution over the C channels) and the channel-spatial op give D = A * T, passed
on as (H W) * D (docs/SPEC.md decision 13: T sums to 1 over the pixels; see
ChannelSpatialAttention). The loss adds
``weight * mean_n ggam_loss(S, guide(beta))``, beta = Grad-CAM channel weights
(mean_ij dY^c/dA) of the predicted (or labelled) class w.r.t. the module input A, detached;
ggam_loss compares S with q = sigmoid(b) / sum_k sigmoid(b) by a symmetric KL (Eq. 5).

``guide``: what b is. "paper": b = beta, the paper's literal form. Grad-CAM weights are small
(|beta| ~ 1e-3 for a ResNet-20 on digits, so q is uniform within 0.1 %, and the KL then only
pulls S towards uniform); "standardized": b = (beta - mean_k beta) / std_k beta per sample, so q
ranks the channels as Grad-CAM does with a contrast that does not depend on the gradients' scale
(measurements: docs/GGAM_AND_CAPTURE.md). Gradients are taken as :mod:`attnfast.capture`
describes (``per_sample_grads`` there).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from . import ops
from ._args import count, flag, real
from ._compat import compile_opaque, donated_buffer_disabled
from .capture import (FixedBatchStatistics, SupervisedWrapper, check_feature_map,
                      check_targets, classification_loss, refuse_compiled_double_backward,
                      resolve_layer, score_grads)

__all__ = ["GGAM", "GGAMStep", "ChannelSpatialAttention", "GUIDES", "guide_logits",
           "layer_channels"]

GUIDES = ("paper", "standardized")


class GGAMStep(NamedTuple):
    """One GGAM training step: S (N x C), T (N x H x W), beta (N x C, detached: the raw Grad-CAM
    weights, before ``guide``) and the classes whose Grad-CAM gave beta (N indices, or N x C
    multi-hot)."""
    logits: torch.Tensor
    loss: torch.Tensor
    classification_loss: torch.Tensor
    attention_loss: torch.Tensor
    channel_weights: torch.Tensor
    spatial: torch.Tensor
    gradcam_weights: torch.Tensor
    classes: torch.Tensor


def guide_logits(beta, guide="paper"):
    """The b that ggam_loss turns into q = sigmoid(b) / sum_k sigmoid(b): beta itself ("paper"),
    or beta standardized over the channels of each sample, (beta - mean) / std (population std;
    a sample whose beta is constant gets b = 0, i.e. a uniform q) ("standardized")."""
    if guide == "paper":
        return beta
    if guide != "standardized":
        raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}")
    centred = beta - beta.mean(dim=1, keepdim=True)
    std = beta.std(dim=1, correction=0, keepdim=True)
    return centred / std.clamp_min(torch.finfo(beta.dtype).tiny)


class ChannelSpatialAttention(nn.Module):
    """S = softmax_c(W2 ReLU(W1 GAP(A) + b1) + b2) (hidden = C / reduction; GGAM Eq. 1), then
    (D, T) = channel_spatial_attention(A, S): D = A * T, T = sum_c A S / sum_{c,i,j} A S.

    The module outputs (H W) * D = A * (H W) T: T sums to 1 over the H x W pixels, so D alone is
    the features shrunk by about H W (1/64 on an 8 x 8 map), which starves a GAP + linear head
    that follows (on digits a ResNet-20 stays at chance); with the constant H W a uniform T (the
    channel sum of A S the same at every pixel) makes the module the identity. T, and so the
    output, does not change when S is multiplied by a constant (up to the op's eps), so the
    softmax (rather than an SE sigmoid) changes what the loss compares, not what the module can
    express: a uniform S = 1/C gives T = sum_c A / sum_{c,i,j} A, the features' own energy map.
    """

    def __init__(self, channels, reduction=16):
        super().__init__()
        count(channels, "channels"), count(reduction, "reduction")
        hidden = max(channels // reduction, 1)
        self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)

    def forward(self, a):
        """Returns ((H W) * D, S, T); S and T in float32 (float64 for float64 features)."""
        if a.dim() != 4 or a.shape[1] != self.fc1.in_features:
            raise ValueError(f"GGAM attention expects N x {self.fc1.in_features} x H x W features, "
                             f"got shape {tuple(a.shape)} (check `channels`)")
        acc = torch.float64 if a.dtype == torch.float64 else torch.float32
        z = self.fc2(torch.relu(self.fc1(a.mean(dim=(2, 3)))))
        s = torch.softmax(z.to(acc), dim=1)
        d, t = ops.channel_spatial_attention(a, s)
        return d * (a.shape[2] * a.shape[3]), s, t


def layer_channels(module):
    """The channel count of ``module``'s output as far as its structure says: ``out_channels``
    of a conv / ``num_features`` of a BatchNorm (the module itself, else the last such inside
    it, in registration order), or None."""
    for m in reversed(list(module.modules())):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return m.out_channels
        if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            return m.num_features
    return None


def _channels(module, layer, channels):
    """``channels``, checked against (or, None, read from) the layer's structure."""
    found = layer_channels(module)
    if channels is None:
        if found is None:
            raise ValueError(f"GGAM cannot read the channel count of layer {layer!r} "
                             f"({type(module).__name__}: no Conv2d or BatchNorm2d inside); "
                             "pass channels=")
        return found
    count(channels, "channels")
    if found is not None and found != channels:
        raise ValueError(f"GGAM: channels={channels} but layer {layer!r} outputs {found} "
                         "channels (its last conv / BatchNorm); pass channels=None to use them")
    return channels


class GGAM(SupervisedWrapper):
    """GGAM around ``model``: the channel-spatial module rescales the output of ``layer``.

    ``ggam(images, targets)`` -> :class:`GGAMStep` with
    loss = classification + weight * mean_n ggam_loss(S, guide(beta.detach())), beta the
    Grad-CAM channel weights w.r.t. the module input of the predicted class
    (``target="predicted"``, the paper) or of the label (``"label"``; multi-label: the positives /
    the classes with logit > 0). ``guide``: "paper" or "standardized" (module docstring).
    ``per_sample_grads``: beta from gradients with the batch statistics of the BatchNorm layers
    after ``layer`` held fixed (exact per-sample; see :mod:`attnfast.capture`); without it, in
    train mode, beta[n] also holds the other samples' terms through those statistics.
    ``ggam(images)`` -> logits (the module applied).

    ``channels``: the number of channels of ``layer``'s output; None (default) reads it from the
    layer (:func:`layer_channels`: the last ``Conv2d`` / ``BatchNorm2d`` inside it); a given
    value is checked against the layer's when that can be read, and in any case against the
    output on the first call (a mismatch there removes the wrapper and raises).

    While the wrapper is attached, the bare ``model(x)`` runs the module too (the hook is on the
    model); the module's parameters live in the wrapper, not in ``model``: save and load
    ``ggam.state_dict()`` (model and module), not ``model.state_dict()``. ``ggam.remove()`` or
    ``with GGAM(...) as ggam:`` takes the module off (:class:`attnfast.capture.Attached`): the
    model then gives its old output again. A second GGAM on the same layer is refused.
    """

    def __init__(self, model, layer="layer4", *, channels=None, reduction=16, weight=1.0,
                 target="predicted", multilabel=False, guide="paper", per_sample_grads=False):
        super().__init__()
        weight = real(weight, "weight", lo=0.0)
        flag(multilabel, "multilabel"), flag(per_sample_grads, "per_sample_grads")
        if target not in ("predicted", "label"):
            raise ValueError(f"target must be 'predicted' or 'label', got {target!r}")
        if guide not in GUIDES:
            raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}")
        refuse_compiled_double_backward(model, "GGAM", False)
        module = resolve_layer(model, layer)
        channels = _channels(module, layer, channels)
        self.model, self.layer = model, layer
        self.attention = ChannelSpatialAttention(channels, reduction)
        self.weight, self.target, self.multilabel, self.guide = weight, target, multilabel, guide
        self._capture, self._store = False, {}
        claim = self._claim_output(module, layer)  # refuses a layer another GGAM changes
        self._fixed = FixedBatchStatistics(model) if per_sample_grads else None
        self._handle = module.register_forward_hook(self._attend)
        self._attach(claim, *([self._fixed] if self._fixed else []), self._handle)

    @property
    def per_sample_grads(self) -> bool:
        return self._fixed is not None

    @compile_opaque
    def _attend(self, module, args, output):
        k = self.attention.fc1.in_features
        if not isinstance(output, torch.Tensor) or output.dim() != 4 or output.shape[1] != k:
            self.remove()   # the model is left as it was before the wrapper
            check_feature_map(self.layer, module, output, "GGAM (removed from the model)")
            raise ValueError(f"GGAM: layer {self.layer!r} outputs {output.shape[1]} channels, "
                             f"not channels={k}; the wrapper has removed itself from the model "
                             "(the model is as it was): make it again with the right channels")
        if self._capture:
            FixedBatchStatistics.arm(self._fixed)  # before the module: it may hold BatchNorm
        d, s, t = self.attention(output)
        if self._capture:
            self._store.update(a=output, s=s, t=t)
        return d

    def _step(self, images, targets, keep_graph):
        logits, targets, classes, s, t, beta = self._forward_gradcam(images, targets)
        attn = ops.ggam_loss(s, guide_logits(beta, self.guide)).mean()
        cls = classification_loss(logits, targets, self.multilabel)
        loss = cls + self.weight * attn
        return GGAMStep(logits, loss, cls, attn, s, t, beta, classes)

    @compile_opaque  # autograd.grad w.r.t. the hooked input: eager (model may be compiled)
    def _forward_gradcam(self, images, targets):
        """Logits, checked targets, the Grad-CAM classes, S, T and beta (detached)."""
        with donated_buffer_disabled():
            self._capture = True
            try:
                with FixedBatchStatistics.recording(self._fixed):
                    logits = self.model(images)
            finally:
                self._capture = False
            a, s, t = (self._store.pop(k) for k in ("a", "s", "t"))
            targets = check_targets(targets, logits, self.multilabel)
            classes = targets if self.target == "label" else self._predicted(logits)
            g, = score_grads(logits, classes, (a,), False)
        beta = ops.channel_weights(g, positive=False).detach()
        return logits, targets, classes, s, t, beta

    def _predicted(self, logits):
        y = logits.detach()
        return (y > 0).float() if self.multilabel else y.argmax(1)
