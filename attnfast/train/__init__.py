"""Thin trainer for Sharpen Focus, GGAM and guidance from boxes: ``python -m attnfast.train`` /
``attnfast-train``.

The default (``--compare``, the README's main job, recipe ``located-digits``) trains a baseline,
Sharpen Focus and guidance from boxes (10 % of the training images) on the located digits (a digit somewhere on a 32 x 32 canvas among fragments of
other digits, its box known; :mod:`.data.located`) with a CIFAR-style ResNet-8, over three seeds,
and prints a table of mean ± sd: top-1, localization of the target maps at both supervised layers
(energy pointing game, pointing game; the confuser map's energy in the box; :mod:`.localize`),
attention separability (soft-IoU target vs confuser, masked as in the loss; lower = better
separated), the consistency term L_ac and training images/s, plus the per-seed difference to
the baseline. Its Sharpen Focus and guidance settings were chosen on the validation split
(docs/METHOD.md). On a source without boxes the recipe's guidance arm is left out (an explicit
``--method guidance`` there is refused before any training).

With ``--seeds N`` seed s runs in ``<out>/seed<s>/``; ``<out>/summary.json`` and
``<out>/summary.md`` hold the table. ``--eval-split val`` measures on the validation split
(sources that have one), for choosing settings without looking at test.

Per run (``<out>/<method>/``): ``metrics.json`` and ``metrics.csv`` (one row per epoch),
``checkpoint.pt`` (written atomically every epoch: temp file + rename, stale temp files of killed
writers removed on the next start; checked against its zip CRCs and loaded with
``weights_only=True``, a damaged, truncated or empty one refused by name; ``--resume`` continues
exactly: weights, optimizer, scheduler, grad scaler, RNG states, epoch; it refuses a checkpoint
written with other settings, listing them, unless ``--resume-override`` asks to continue with the
new ones, the LR schedule recomputed for them) and ``attention.png`` (top-5 class maps of evaluation images, object boxes
outlined where known); with several methods
``<out>/comparison.png`` puts them side by side. A non-finite loss stops training with a message
and leaves the last good checkpoint in place. Before any training every output folder is checked
to be writable (and, with ``--resume``, every checkpoint sound and of the same settings). Under ``torchrun`` the run is data-parallel
(DistributedSampler; gloo on CPU, nccl on GPU); ``--batch-size`` is the global batch; each
process evaluates a shard (boxes travel inside the samples) with rank 0's BatchNorm statistics.

Modules, in the order a run uses them:

* ``recipes``: the paper recipes, command-line options, the run's config and its LR schedule;
* ``distributed``: rank, world and device from torchrun's environment;
* ``data``: the data sources; ``models``: ResNets and VGGs with named stages; ``pretrained``:
  starting a model from pretrained weights (``--pretrained``);
* ``methods``: the model and the method's wrapper (baseline, Sharpen Focus, GGAM);
* ``optim``: SGD over the backbone and new parameter groups (``--backbone-lr-scale``);
* ``loop``: the epoch loop and one method's run; ``metrics``: evaluation metrics (top-k,
  mAP/AUC, attention separability, localization); ``localize``: maps against boxes;
* ``checkpoints``: atomic files, RNG states, save and resume;
* ``pictures``: the attention figures; ``report``: metrics files, summaries, the table;
* ``cli``: :func:`main`, the whole job.

The library (``import attnfast``) never imports this package.
"""
from .cli import main

__all__ = ["main"]
