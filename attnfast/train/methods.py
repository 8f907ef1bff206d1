"""The model of a run and the wrapper of its method (``recipes.METHODS``): the baseline,
Sharpen Focus or GGAM around a model from :mod:`attnfast.models` (or torchvision), and
the probe that measures attention on every method (the same probe for every method: first
order, the paper's loss options, so that its numbers compare across methods)."""
from __future__ import annotations

import warnings

import torch

from ..baseline import Baseline
from ..ggam import GGAM
from ..guidance import Guidance
from ..sharpen_focus import SharpenFocus
from .. import models
from .recipes import method_weight


def build(cfg, method, data, dst):
    """(model, net, probe, last): net is the method's wrapper; probe measures attention on the
    model; last is the name of the last supervised layer."""
    kw = {"shortcut": cfg["shortcut"]} if cfg["shortcut"] and cfg["model"] in models.available() \
        else {}
    with warnings.catch_warnings():   # the run's log lists what --pretrained loaded (loop.run)
        warnings.simplefilter("ignore")
        model = models.create(cfg["model"], data.num_classes, data.in_channels,
                              pretrained=cfg.get("pretrained"), **kw)
    inner, last = getattr(model, "attention_layers", ("layer3", "layer4"))
    inner, last = cfg.get("inner_layer") or inner, cfg.get("last_layer") or last
    head = None if cfg["head"] == "none" else cfg["head"]
    if dst.world > 1 and dst.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(dst.device)
    if cfg.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        if method == "sharpen-focus" and cfg["order"] != "first":
            raise SystemExit("--compile needs --first-order with sharpen-focus: second-order "
                             "Sharpen Focus differentiates through the model's backward, which "
                             "torch.compile does not support (double backward)")
        model.compile(backend=cfg["compile_backend"])
    sf_kw = dict(head=head, attention=cfg["attention"], multilabel=data.multilabel)
    exact = dict(per_sample_grads=bool(cfg["per_sample_grads"]))
    if method == "sharpen-focus":
        net = SharpenFocus(model, inner, last, second_order=cfg["order"] == "second",
                           weight=method_weight(cfg, method), mask=cfg["mask"],
                           part_weights=(cfg["inner_weight"], cfg["last_weight"],
                                         cfg["consistency_weight"]), **exact, **sf_kw)
    elif method == "ggam":
        layer = cfg.get("ggam_layer") or last
        channels = getattr(model, "stage_channels", {}).get(layer)  # None: GGAM reads the layer
        net = GGAM(model, layer, channels=channels, reduction=cfg["reduction"],
                   weight=method_weight(cfg, method),
                   target=cfg["ggam_target"], multilabel=data.multilabel,
                   guide=cfg["ggam_guide"], **exact)
        net.to(dst.device)
    elif method == "guidance":
        net = Guidance(model, guided_layers(cfg["guidance_layers"], inner, last),
                       attention=cfg["guidance_attention"], loss=cfg["guidance_loss"],
                       upsample=cfg["guidance_upsample"], weight=method_weight(cfg, method),
                       second_order=cfg["order"] == "second", multilabel=data.multilabel, **exact)
    else:
        net = Baseline(model, multilabel=data.multilabel)
    # the probe measures attention on every method; made after GGAM, its hooks see the
    # rescaled features that feed the rest of the network
    probe = SharpenFocus(model, inner, last, second_order=False, **sf_kw)
    return model, net, probe, last



def guided_layers(spec, inner, last):
    """--guidance-layers: 'last', 'inner', 'both' or comma-separated layer names."""
    named = {"last": [last], "inner": [inner], "both": [inner, last]}
    return named.get(spec) or [name.strip() for name in spec.split(",") if name.strip()]
