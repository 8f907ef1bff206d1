"""Thin trainer for Sharpen Focus and GGAM: ``python -m attnfast.train`` / ``attnfast-train``.

The default (``--compare``, the README's main job) trains a baseline and Sharpen Focus on
scikit-learn's bundled digits with a CIFAR-style ResNet-20 and prints a comparison table: top-1,
attention separability (mean test soft-IoU between the target's and the confuser's maps, inner
and last layer, masked as in the loss; lower = better separated), the inner/last consistency term
L_ac (lower = the inner map lies more inside the last layer's mask) and training images/s.

Per run (``<out>/<method>/``): ``metrics.json`` and ``metrics.csv`` (one row per epoch),
``checkpoint.pt`` (written atomically every epoch: temp file + rename; loaded with
``weights_only=True``; ``--resume`` continues exactly: weights, optimizer, scheduler, grad scaler,
RNG states, epoch) and ``attention.png`` (top-5 class maps of test images); with several methods
``<out>/comparison.png`` puts them side by side. A non-finite loss stops training with a message
and leaves the last good checkpoint in place. Under ``torchrun`` the run is data-parallel
(DistributedSampler; gloo on CPU, nccl on GPU); ``--batch-size`` is the global batch.

Modules, in the order a run uses them:

* ``recipes``: the paper recipes, command-line options, the run's config and its LR schedule;
* ``distributed``: rank, world and device from torchrun's environment;
* ``data``: the data sources; ``models``: ResNets with named stages;
* ``methods``: the model and the method's wrapper (baseline, Sharpen Focus, GGAM);
* ``loop``: the epoch loop and one method's run; ``metrics``: test metrics (top-k, mAP/AUC,
  attention separability);
* ``checkpoints``: atomic files, RNG states, save and resume;
* ``pictures``: the attention figures; ``report``: metrics files, summaries, the table;
* ``cli``: :func:`main`, the whole job.

The library (``import attnfast``) never imports this package.
"""
from .cli import main

__all__ = ["main"]
