"""The run's configuration: paper recipes, command-line options and the LR schedule.

:func:`configure` merges, in this order of precedence, the options given on the command line,
the chosen recipe (``RECIPES``) and ``DEFAULTS``.
"""
from __future__ import annotations

import argparse
import math

from .._schema import ATTENTION_KINDS, GUIDANCE_KINDS, LOSS_CODES
from . import data as data_mod
from .. import models, pretrained

DESCRIPTION = ("Thin trainer for Sharpen Focus, GGAM and guidance from boxes: "
               "``python -m attnfast.train`` / ``attnfast-train``. The defaults shown are those of "
               "the located-digits recipe (the main job); --recipe NAME brings that recipe's "
               "values instead.")
SHOWN_RECIPE = "located-digits"  # whose values --help shows as the defaults
METHODS = ("baseline", "sharpen-focus", "ggam", "guidance")

# Paper recipes (Sharpen Focus Sec. 4; He et al. 2016 for CIFAR-10). Values a paper leaves open
# (noted "assumed") are ordinary choices for that setting.
RECIPES = {
    # The main job (``make train``): baseline, Sharpen Focus and guidance on the located digits,
    # three seeds, sized to stay under 6 minutes on a 2-core CPU. Its Sharpen Focus settings (``sf``,
    # over SF_PAPER) were chosen by a sweep on the validation split (docs/METHOD.md), never on
    # test: weight 0.1, the three parts weighted 1, second order, pixel maps, layer2/layer3.
    # GGAM (weight 0.1, decision 14) with the standardized guide: the same rule on the same
    # split, among the configurations with the loss on (docs/GGAM_AND_CAPTURE.md).
    # Its third arm, guidance from boxes (Rao et al. 2023): energy on the last layer's Grad-CAM,
    # boxes for 10 % of the training images, weight 0.1 (experiments/guidance_located.py: the
    # rule written before the runs, validation split).
    "located-digits": dict(data="located-digits", model="resnet8", epochs=8, batch_size=64,
                           lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine", seeds=3,
                           eval_every=0, sf=dict(weight=0.1), ggam_guide="standardized",
                           method="baseline,sharpen-focus,guidance", guidance_weight=0.1,
                           box_fraction=0.1),
    "digits": dict(data="digits", model="resnet20", epochs=8, batch_size=64, lr=0.05,
                   momentum=0.9, weight_decay=5e-4, schedule="cosine"),
    "cifar10-resnet20": dict(data="cifar10", model="resnet20", epochs=164, batch_size=128, lr=0.1,
                             momentum=0.9, weight_decay=1e-4, schedule="step",
                             milestones=(82, 123)),
    "cifar100-resnet110": dict(data="cifar100", model="resnet110", epochs=160, batch_size=128,
                               lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="step",
                               milestones=(81, 122)),
    "imagenet-resnet18": dict(data="imagefolder", model="resnet18", epochs=90, batch_size=256,
                              lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step",
                              milestones=(30, 60)),
    "caltech256-resnet18": dict(data="caltech256", model="resnet18", epochs=20,
                                batch_size=64,  # assumed
                                lr=0.01, momentum=0.9, weight_decay=1e-3, schedule="cosine"),
    "voc2012-resnet18": dict(data="voc2012", model="resnet18", epochs=20,
                             batch_size=64,  # assumed
                             lr=0.01, momentum=0.9, weight_decay=1e-3, schedule="cosine"),
    # Guidance from boxes (Rao et al., ICCV 2023) on VOC 2012 (the paper: VOC 2007): ImageNet
    # ResNet-50 at 224 x 224, batch 64, the energy loss of the last layer's Grad-CAM map against
    # the boxes of the XML annotations (difficult ones kept, as the paper's code does; every
    # positive class of an image is a row with its own boxes, where the paper's code guides one
    # random positive class per image and step). Boxes for every training image; the paper's
    # 1 % / 10 % arms are --box-fraction 0.01 / 0.1. The authors' code trains the baseline with
    # Adam (lr 1e-4) and then fine-tunes it with guidance for 50 epochs at a weight chosen per
    # setting (its README's example: 1e-3); this trainer has SGD only and trains both arms from
    # the ImageNet start for 50 epochs, so the optimizer values and the weight are assumed.
    "voc2012-resnet50-guidance": dict(
        data="voc2012", model="resnet50", pretrained="ResNet50_Weights.IMAGENET1K_V1",
        method="baseline,guidance", image_size=224, batch_size=64, epochs=50,
        lr=0.01, momentum=0.9, weight_decay=1e-4, schedule="cosine",  # assumed
        guidance_loss="energy", guidance_attention="gradcam", guidance_layers="last",
        guidance_upsample="bilinear",  # its code upsamples the map to 224 x 224 (decision 24)
        guidance_weight=1e-3),  # assumed
}
# Sharpen Focus on CUB-200-2011 (Sec. 4): fine-tuning ImageNet-pretrained ResNet-50 / ResNet-101
# at 448 x 448, SGD batch 10, lr 0.001 (one rate for every layer), /10 at epochs 30 and 60 of 90.
for _depth in (50, 101):
    RECIPES[f"cub200-resnet{_depth}"] = dict(
        data="cub200", model=f"resnet{_depth}", pretrained=f"ResNet{_depth}_Weights.IMAGENET1K_V1",
        epochs=90, batch_size=10, lr=0.001, momentum=0.9, weight_decay=1e-4,  # assumed
        schedule="step", milestones=(30, 60), image_size=448)
# GGAM (Xu et al. 2021, Sec. 3): ImageNet-pretrained ResNet-50 and VGG19 fine-tuned at 448 x 448,
# SGD momentum 0.9, weight decay 5e-4, 100 epochs, cosine; lr 0.1 for the new layers (head and
# attention module), one tenth for the pretrained ones. The baseline is the same fine-tuning
# without the module. The GGAM loss weight is the trainer's (decision 14), not the paper's.
GGAM_BACKBONES = {"resnet50": "ResNet50_Weights.IMAGENET1K_V1",
                  "vgg19": "VGG19_Weights.IMAGENET1K_V1"}
for _data in ("cub200", "fgvc-aircraft", "stanford-cars"):
    for _model, _weights in GGAM_BACKBONES.items():
        RECIPES[f"{_data}-{_model}-ggam"] = dict(
            data=_data, model=_model, pretrained=_weights, method="baseline,ggam", epochs=100,
            batch_size=16,  # assumed
            lr=0.1, backbone_lr_scale=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
            image_size=448)
DEFAULTS = dict(schedule="cosine", milestones=(), warmup_epochs=0.0, momentum=0.9,
                weight_decay=5e-4, image_size=None, attention="pixel", weight=None, head="auto",
                reduction=16, ggam_target="predicted", seed=0, seeds=1, data_seed=0,
                eval_split="test", eval_every=1, workers=None, pictures=6, shortcut=None,
                per_class=30, compile_backend="inductor", device="auto", ramp_epochs=0.0,
                ggam_guide="paper", per_sample_grads=False, guidance_loss="energy",
                guidance_layers="last", guidance_attention="gradcam", guidance_upsample="area",
                box_fraction=1.0,
                guidance_weight=1.0, pretrained=None, backbone_lr_scale=1.0)
# Sharpen Focus as the paper writes Eq. 9 (a recipe's ``sf`` dict overrides these, the command
# line overrides both): weight of the attention term, the weights of its three parts, second
# order, the max-normalized mask of docs/SPEC.md decision 1, the model's default layers.
SF_PAPER = dict(weight=1.0, inner_weight=1.0, last_weight=1.0, consistency_weight=1.0,
                order="second", mask="normalized", inner_layer=None, last_layer=None)


# ----------------------------------------------------------------------------- options

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="attnfast-train", description=DESCRIPTION)
    recipe = RECIPES[SHOWN_RECIPE]
    shown = {**DEFAULTS, **SF_PAPER, **recipe, **recipe.get("sf", {})}

    def a(*flags, **kw):
        """add_argument, the help ending in the value the option takes when not given: its
        default, or the shown recipe's value (unless the help already says)."""
        act = p.add_argument(*flags, **kw)
        value = act.default if act.default is not None else shown.get(act.dest)
        if act.nargs != 0 and "default" not in (act.help or "") and value not in (None, ()):
            text = ",".join(map(str, value)) if isinstance(value, tuple) else value
            act.help = f"{act.help or ''} (default: {text})".lstrip()
        return act
    a("--method", default=None, help="baseline | sharpen-focus | ggam, or a comma list")
    a("--compare", action="store_true",
      help="train the baseline too and compare (without --method: baseline and sharpen-focus, "
           "which is also the default)")
    a("--recipe", default="located-digits", choices=sorted(RECIPES),
      help="recipe by name (located-digits: the main job; the others follow papers)")
    a("--data", choices=sorted(data_mod.SOURCES), help="data source")
    a("--data-dir", help="local folder of the data source")
    a("--image-size", type=int)
    a("--per-class", type=int, help="caltech256: training images per class (30 or 60)")
    a("--train-size", type=int, help="use the first N training images (synthetic: generate N)")
    a("--test-size", type=int, help="use the first N test images (synthetic: generate N)")
    a("--model", help=f"{models.available()} or a torchvision model name")
    a("--shortcut", choices=("A", "B"), help="ResNet shortcut option (CIFAR default A, else B)")
    a("--pretrained", metavar="SOURCE",
      help="start from pretrained weights: a torchvision weights name (e.g. "
           "ResNet50_Weights.IMAGENET1K_V1, read from the local torch hub cache, never "
           "downloaded) or the path of a state_dict / checkpoint; the head is new")
    a("--backbone-lr-scale", type=float,
      help="LR multiplier of the model's layers except its head (GGAM: 0.1); the head and "
           "the attention modules train at the full LR")
    a("--epochs", type=int)
    a("--batch-size", type=int, help="global batch; differing from the recipe's scales the LR "
                                     "linearly and warms up 5 epochs (Goyal et al.)")
    a("--lr", type=float)
    a("--momentum", type=float)
    a("--weight-decay", type=float)
    a("--schedule", choices=("step", "cosine", "constant"))
    a("--milestones", type=lambda s: tuple(int(v) for v in s.split(",") if v),
      help="epochs where a step schedule divides the LR by 10, e.g. 81,122")
    a("--warmup-epochs", type=float)
    a("--attention", choices=tuple(ATTENTION_KINDS))
    a("--order", choices=("first", "second"), help="sharpen-focus: second order differentiates "
      "through the attention gradients (the paper), first order treats them as constants")
    a("--first-order", dest="order", action="store_const", const="first",
      help="same as --order first")
    a("--weight", type=float, help="weight of the attention loss (default: the recipe's for "
                                    "sharpen-focus, 1 as in Eq. 9 without one; 0.1 for ggam, "
                                    "whose symmetric KL otherwise swamps the classification)")
    a("--inner-weight", type=float, help="sharpen-focus: weight of sIoU_inner in the attention "
                                         "term (Eq. 9: 1)")
    a("--last-weight", type=float, help="sharpen-focus: weight of sIoU_last (Eq. 9: 1)")
    a("--consistency-weight", type=float, help="sharpen-focus: weight of L_ac (Eq. 9: 1)")
    a("--mask", choices=("normalized", "raw"), help="sharpen-focus soft mask: on the "
      "max-normalized last-layer map (default) or the paper's literal raw-scale formula")
    a("--ramp-epochs", type=float, help="raise the attention weight linearly from 0 over this "
                                        "many epochs (0: full weight from the start)")
    a("--inner-layer")
    a("--last-layer")
    a("--head", help="'auto', 'none' or the name of the nn.Linear fed by GAP of the last layer")
    a("--ggam-layer", help="layer after which GGAM's module sits (default: the last stage)")
    a("--reduction", type=int, help="GGAM SE reduction")
    a("--ggam-target", choices=("predicted", "label"))
    a("--ggam-guide", choices=("paper", "standardized"),
      help="GGAM's guide T: the paper's normalized sigmoid(beta) or beta standardized per map "
           "(docs/GGAM_AND_CAPTURE.md)")
    a("--guidance-loss", choices=tuple(LOSS_CODES),
      help="guidance: the loss of the guided maps against the boxes (Rao et al. 2023)")
    a("--guidance-layers", help="guidance: 'last', 'inner', 'both' or comma-separated layer names")
    a("--guidance-attention", choices=tuple(GUIDANCE_KINDS),
      help="guidance: the guided map")
    a("--guidance-upsample", choices=("area", "bilinear"),
      help="guidance: cells weighted by their area inside the boxes, or the paper code's "
           "bilinear upsampling of the map to the image (energy only; docs/SPEC.md decision 24)")
    a("--box-fraction", type=float, help="guidance: share of the training images whose boxes "
      "are used (chosen once per seed, listed in the run's boxes_used.json)")
    a("--per-sample-grads", action="store_true", default=None,
      help="sharpen-focus / ggam: exact per-sample attention gradients in train mode (BatchNorm "
           "statistics held fixed in the class-score gradient pass; attnfast.capture)")
    a("--amp", choices=("bf16", "fp16"), help="autocast dtype (fp16 adds a grad scaler)")
    a("--channels-last", action="store_true")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--compile-backend", help="torch.compile backend")
    a("--device", choices=("auto", "cpu", "cuda"),
      help="auto: cuda when available (under torchrun: cuda:LOCAL_RANK)")
    a("--workers", type=int, help="DataLoader worker processes (default: 0 for in-memory "
                                  "sources, else up to 8)")
    a("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    a("--seed", type=int, help="training seed (initialization, order, augmentation)")
    a("--seeds", type=int, help="train every method with seeds seed .. seed+N-1 and report "
                                "mean ± sd over them")
    a("--data-seed", type=int, help="seed of the data set's split and construction")
    a("--eval-split", choices=("test", "val"), help="split the metrics are measured on "
                                                    "(val: for choosing settings)")
    a("--eval-every", type=int, help="evaluate every N epochs (0: after the last epoch only)")
    a("--out", help="output folder (default runs/<data>)")
    a("--resume", action="store_true", help="continue from <out>/<method>/checkpoint.pt "
                                            "(refused when its settings differ from these)")
    a("--overwrite", action="store_true", help="train afresh into an --out that already holds "
                                               "a run, replacing it (without it, refused)")
    a("--resume-override", action="store_true",
      help="with --resume: continue with this command line's settings where they differ from "
           "the checkpoint's (the LR schedule is recomputed for them)")
    a("--stop-after", type=int, help="stop after this many epochs in this invocation "
                                     "(a planned interruption; resume later with --resume)")
    a("--pictures", type=int, help="test images in the attention pictures (0: none)")
    a("--progress", action=argparse.BooleanOptionalAction, default=None,
      help="progress bar (default: when stderr is a terminal)")
    a("--dry-run", action="store_true", default=None,
      help="print the resolved configuration (JSON) and exit without loading data or training")
    return p.parse_args(argv)


def configure(args) -> dict:
    """Recipe values, overridden by explicit options, then DEFAULTS; linear LR scaling when the
    batch differs from the recipe's and no --lr is given."""
    recipe = RECIPES[args.recipe]
    given = {k: v for k, v in vars(args).items() if v is not None}
    sf = {**SF_PAPER, **recipe.get("sf", {})}
    cfg = {**DEFAULTS, **sf, "weight": None, **recipe, **given}
    cfg["sf_weight"] = sf["weight"]
    cfg["base_lr"] = recipe["lr"]
    if "batch_size" in given and "lr" not in given and given["batch_size"] != recipe["batch_size"]:
        cfg["lr"] = recipe["lr"] * given["batch_size"] / recipe["batch_size"]
        if "warmup_epochs" not in given and given["batch_size"] > recipe["batch_size"]:
            cfg["warmup_epochs"] = 5.0
    methods = [m.strip() for m in (cfg.get("method") or "baseline,sharpen-focus").split(",")]
    if cfg.get("compare"):
        methods = list(dict.fromkeys(["baseline", *methods]))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {METHODS}")
    if "guidance" in methods and cfg["data"] not in data_mod.WITH_BOXES:
        if "method" in given:
            raise SystemExit(f"--method guidance needs boxes; --data {cfg['data']} has none "
                             f"(sources with boxes: {', '.join(data_mod.WITH_BOXES)})")
        methods.remove("guidance")  # the recipe's arm, for its own data: not on a boxless one
    cfg["methods"] = methods
    cfg["out"] = cfg.get("out") or f"runs/{cfg['data']}"
    cfg["milestones"] = tuple(cfg["milestones"])
    if cfg["resume_override"] and not cfg["resume"]:
        raise SystemExit("--resume-override goes with --resume")
    if cfg["resume"] and cfg["overwrite"]:
        raise SystemExit("--resume continues the run in --out, --overwrite replaces it: give one")
    if cfg.get("data_dir") and cfg["data"] not in data_mod.FROM_FOLDER:
        source = "--data" if "data" in given else f"the {args.recipe} recipe's source"
        raise SystemExit(f"--data-dir {cfg['data_dir']} is not read by {source} "
                         f"{cfg['data']!r}, which is built in memory; the sources read from a "
                         f"folder are {', '.join(data_mod.FROM_FOLDER)}: add --data with one of "
                         "them, or drop --data-dir")
    if cfg["seeds"] < 1:
        raise SystemExit(f"--seeds must be at least 1, got {cfg['seeds']}")
    if not 0.0 <= cfg["box_fraction"] <= 1.0:
        raise SystemExit(f"--box-fraction must lie in [0, 1], got {cfg['box_fraction']}")
    if cfg["guidance_upsample"] == "bilinear" and cfg["guidance_loss"] != "energy":
        raise SystemExit(f"--guidance-upsample bilinear is defined for --guidance-loss energy "
                         f"only, got {cfg['guidance_loss']}")
    check(cfg)
    return cfg


def check(cfg):
    """SystemExit naming the option when a resolved setting cannot make a run: an unknown data
    source or model, a --pretrained that is neither a file nor a weights name, a backbone LR
    scale that is not positive."""
    if cfg["data"] not in data_mod.SOURCES:
        raise SystemExit(f"--data {cfg['data']}: unknown; choose from {sorted(data_mod.SOURCES)}")
    if cfg["model"] not in models.available() and not models.torchvision_name(cfg["model"]):
        raise SystemExit(f"--model {cfg['model']}: unknown; attnfast.train.models has "
                         f"{models.available()} (other names need torchvision)")
    if cfg["pretrained"] is not None:
        try:
            pretrained.resolve(cfg["pretrained"])
        except ValueError as e:
            raise SystemExit(str(e)) from None
    if not cfg["backbone_lr_scale"] > 0:
        raise SystemExit(f"--backbone-lr-scale must be positive, got {cfg['backbone_lr_scale']}")


def method_weight(cfg, method):
    """The attention weight of ``method``: --weight, else the recipe's Sharpen Focus or guidance
    weight, else GGAM's 0.1 (decision 14)."""
    if cfg["weight"] is not None:
        return cfg["weight"]
    return {"sharpen-focus": cfg["sf_weight"], "guidance": cfg["guidance_weight"]}.get(method, 0.1)


def ramp_factor(cfg, steps_per_epoch):
    """Attention-weight multiplier after ``it`` optimizer steps: linear from 0 to 1 over
    ``ramp_epochs`` epochs (1 throughout when 0)."""
    ramp = cfg["ramp_epochs"] * steps_per_epoch
    return lambda it: min(1.0, it / ramp) if ramp > 0 else 1.0


def lr_factor(cfg, steps_per_epoch):
    """LR multiplier after ``it`` optimizer steps: linear warm-up times step (/10 at each
    milestone epoch), cosine (to 0 at the last step) or constant decay."""
    total, warm = cfg["epochs"] * steps_per_epoch, cfg["warmup_epochs"] * steps_per_epoch

    def factor(it):
        if cfg["schedule"] == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * min(it / max(total, 1), 1.0)))
        elif cfg["schedule"] == "step":
            decay = 0.1 ** sum(it // steps_per_epoch >= m for m in cfg["milestones"])
        else:
            decay = 1.0
        return decay * (min(1.0, (it + 1) / warm) if warm > 0 else 1.0)
    return factor

