"""The optimizer of a run: SGD over two parameter groups and the LR schedule of
:func:`.recipes.lr_factor` applied to both.

* ``backbone``: the model's parameters except its head (the layers a ``--pretrained`` start
  loads), at ``lr * backbone_lr_scale`` (GGAM fine-tunes them at one tenth);
* ``new``: the head (the model's last ``nn.Linear``, always new) and every parameter the
  method's wrapper adds (GGAM's attention module), at ``lr``.

With ``backbone_lr_scale`` 1 (the default) both groups follow the same rate, as one group did.
Each group carries its ``name`` and ``lr_scale``, so that a checkpoint's optimizer state says
which is which and an overriding resume can recompute its rate.
"""
from __future__ import annotations

import torch

from ..pretrained import head_name
from .recipes import lr_factor

GROUPS = ("backbone", "new")


def param_groups(net, model, cfg):
    """[{"name", "params", "lr", "lr_scale"}] for the backbone and the new parameters of ``net``
    (the method's wrapper around ``model``; module docstring)."""
    head = head_name(model) + "."
    backbone = {id(p) for n, p in model.named_parameters() if not n.startswith(head)}
    params = {g: [] for g in GROUPS}
    for p in net.parameters():
        params["backbone" if id(p) in backbone else "new"].append(p)
    scales = {"backbone": group_scale(cfg, "backbone"), "new": 1.0}
    return [{"name": g, "params": params[g], "lr": cfg["lr"] * scales[g], "lr_scale": scales[g]}
            for g in GROUPS if params[g]]


def group_scale(cfg, name):
    """The LR multiplier of group ``name`` under ``cfg`` (the backbone's scale, 1 otherwise)."""
    return float(cfg.get("backbone_lr_scale", 1.0)) if name == "backbone" else 1.0


def optimizer(net, model, cfg, steps_per_epoch):
    """(SGD over :func:`param_groups`, the LambdaLR of :func:`.recipes.lr_factor` on every
    group)."""
    opt = torch.optim.SGD(param_groups(net, model, cfg), lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"])
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, steps_per_epoch))
