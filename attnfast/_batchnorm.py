"""Exact per-sample class-score gradients through BatchNorm in train mode (the wrappers'
``per_sample_grads=True``; see :mod:`attnfast.capture`).

A BatchNorm layer that normalizes with batch statistics computes, per channel,
y = (x - mu) * rstd * w + b with mu, rstd = 1 / sqrt(var + eps) the batch's mean and (biased)
variance over every sample and pixel. Its full gradient has three parts:
dL/dx = w rstd dL/dy (the sample's own path) + (dL/dmu) dmu/dx + (dL/drstd) drstd/dx (the
statistics' paths, which reach every sample of the batch).

While recording, :class:`FixedBatchStatistics` replaces the output of each such layer of the model
by :class:`_FixedStatistics` (the same value, computed from the same x, mu, rstd) whose backward
is the full gradient, except during a class-score gradient pass (:func:`score_gradient_pass`,
entered by ``capture.score_grads``), where it returns no gradient for mu and rstd: the statistics
are constants there, and the pass gives each sample its own class-score gradient. The backward is
written in differentiable operations on the saved x, mu, rstd and w, so a second-order step
(``create_graph=True``) differentiates those per-sample gradients through the statistics' values
as through any other activation. Everything else (forward values up to rounding, running
statistics, which the layer itself still updates, and the gradients of any other loss) is as
without it.
"""
from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn as nn

from ._compat import compile_opaque

__all__ = ["FixedBatchStatistics", "score_gradient_pass"]

_LOCK = threading.Lock()
_PASSES = [0]  # > 0 while a class-score gradient pass runs (read by backward, on any thread)


@contextlib.contextmanager
def score_gradient_pass():
    """Recorded BatchNorm layers hold their batch statistics fixed in backward passes run inside."""
    with _LOCK:
        _PASSES[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _PASSES[0] -= 1


class _FixedStatistics(torch.autograd.Function):
    """y = (x - mu) * rstd * w + b (mu, rstd, w, b shaped 1 x C x 1 ...; computed in the dtype of
    mu), returned in x's dtype. Backward: full BatchNorm gradient, or mu and rstd held constant
    inside :func:`score_gradient_pass` (then only x gets a gradient)."""

    @staticmethod
    def forward(ctx, x, mu, rstd, w, b):
        ctx.save_for_backward(x, mu, rstd, w)
        return ((x.to(mu.dtype) - mu) * (rstd * w) + b).to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, mu, rstd, w = ctx.saved_tensors
        gy = gy.to(mu.dtype)
        gx = (gy * (rstd * w)).to(x.dtype) if ctx.needs_input_grad[0] else None
        if _PASSES[0] > 0:
            return gx, None, None, None, None
        dims = [0, *range(2, x.dim())]
        centred = x.to(mu.dtype) - mu
        need = ctx.needs_input_grad

        def total(t):
            return t.sum(dims, keepdim=True)
        return (gx,
                -total(gy * (rstd * w)) if need[1] else None,
                total(gy * centred * w) if need[2] else None,
                total(gy * centred * rstd) if need[3] else None,
                total(gy) if need[4] else None)


def _uses_batch_statistics(bn):
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def _refuse_sync(bn):
    if not isinstance(bn, nn.SyncBatchNorm) or not torch.distributed.is_available() \
            or not torch.distributed.is_initialized():
        return
    group = bn.process_group or torch.distributed.group.WORLD
    if torch.distributed.get_world_size(group) > 1:
        raise NotImplementedError(
            "per_sample_grads=True does not support SyncBatchNorm across processes (its "
            "statistics span the processes' batches); keep per-process BatchNorm layers or use "
            "per_sample_grads=False")


class FixedBatchStatistics:
    """Forward hooks on every BatchNorm layer of ``model`` that, while :meth:`recording` and once
    :meth:`arm` has been called in that forward (by the wrapper, when the first feature whose
    gradient it takes is computed), give the layer's output the backward described in the module
    docstring. Layers that ran before (they cannot depend on the features) and layers in eval
    mode with running statistics (their samples do not interact) are left alone."""

    def __init__(self, model):
        self.active = self.armed = False
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    @staticmethod
    @contextlib.contextmanager
    def recording(fixed):
        """Record the forward run inside on ``fixed`` (a no-op for ``None``)."""
        if fixed is None:
            yield
            return
        fixed.active, fixed.armed = True, False
        try:
            yield
        finally:
            fixed.active = fixed.armed = False

    @staticmethod
    def arm(fixed):
        """From now on in this forward, record BatchNorm layers (a no-op for ``None``)."""
        if fixed is not None and fixed.active:
            fixed.armed = True

    @compile_opaque
    def _hook(self, bn, args, output):
        if not self.armed or not torch.is_grad_enabled() or not _uses_batch_statistics(bn):
            return None
        _refuse_sync(bn)
        x = args[0]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        dims, shape = [0, *range(2, x.dim())], (1, -1) + (1,) * (x.dim() - 2)
        xa = x.to(acc)
        mu = xa.mean(dims, keepdim=True)
        rstd = torch.rsqrt(xa.var(dims, correction=0, keepdim=True) + bn.eps)
        one = torch.ones((), dtype=acc, device=x.device)
        w = bn.weight.to(acc).view(shape) if bn.weight is not None else one
        b = bn.bias.to(acc).view(shape) if bn.bias is not None else 0 * one
        return _FixedStatistics.apply(x, mu, rstd, w, b).to(output.dtype)

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []
