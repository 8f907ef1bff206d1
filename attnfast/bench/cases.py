"""What a run measures: its settings (:class:`Config`), the kernel cases (every op at real
network shapes) and the training cases (networks for one SGD step)."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import models

MODES = ("fwd", "bwd", "fwd+bwd")
MB = 2.0 ** 20


@dataclass
class Config:
    """What one run measures; ``for_run`` fills the device-dependent defaults."""
    device: str = "cpu"
    dtype: str = "float32"
    channels_last: bool = False
    quick: bool = False
    cases: list = field(default_factory=list)        # glob patterns; empty = all
    providers: list = field(default_factory=list)    # names; empty = default set
    warmup: int = 5
    repeats: int = 50
    rotate_bytes: int = 64 << 20
    train_warmup: int = 2
    train_repeats: int = 10

    @classmethod
    def for_run(cls, **kw) -> "Config":
        cfg = cls(**kw)
        if cfg.device == "cuda":
            if not torch.cuda.is_available():
                raise SystemExit("attnfast.bench: --device cuda but no CUDA device is visible")
            l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
            cfg.rotate_bytes = 2 * l2
        if cfg.quick:
            cfg.warmup, cfg.repeats, cfg.train_warmup, cfg.train_repeats = 2, 7, 1, 3
        return cfg

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def selected(self, *names: str) -> bool:
        return not self.cases or any(fnmatch.fnmatch(n, p) for p in self.cases for n in names)


def default_device() -> str:
    """cuda when a CUDA device is visible, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_config(device=None, dtype="float32", *, channels_last=False, quick=False, cases=(),
                providers=(), repeats=None, warmup=None, threads=None) -> Config:
    """A :class:`Config` for this machine: ``cases`` and ``providers`` as lists or
    comma-separated strings, ``repeats`` / ``warmup`` overriding the (--quick) defaults;
    ``threads`` sets torch's CPU threads."""
    def split(v):
        return [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else list(v)
    cfg = Config.for_run(device=device or default_device(), dtype=dtype,
                         channels_last=channels_last, quick=quick, cases=split(cases),
                         providers=split(providers))
    cfg.repeats = repeats or cfg.repeats
    cfg.warmup = warmup if warmup is not None else cfg.warmup
    if threads:
        torch.set_num_threads(threads)
    return cfg


# ===================================================================================== kernels
@dataclass(frozen=True)
class Net:
    """Batch and the (K, H, W) of the inner and last supervised layers of a network."""
    n: int
    inner: tuple
    last: tuple


# Foundation issue (CPU): CIFAR ResNet-110 (N = 128; its last two stages) and ResNet-18 at 224
# (N = 32; layer3, layer4). GPU: ResNet-18/50 layer3/layer4 at 224 and 448, plus odd sizes.
NETS = {
    "cpu": {"cifar_r110": Net(128, (32, 16, 16), (64, 8, 8)),
            "r18_224": Net(32, (256, 14, 14), (512, 7, 7))},
    "cuda": {"cifar_r110": Net(128, (32, 16, 16), (64, 8, 8)),
             "r18_224": Net(256, (256, 14, 14), (512, 7, 7)),
             "r50_224": Net(128, (1024, 14, 14), (2048, 7, 7)),
             "r50_448": Net(32, (1024, 28, 28), (2048, 14, 14)),
             "odd": Net(48, (273, 13, 17), (546, 7, 9))},
}


@dataclass(frozen=True)
class Arg:
    """One tensor argument: ``big`` ones (N x K x H x W) take --dtype and --channels-last,
    small ones (maps, N x K weights) are float32 as the ops produce them. ``dist``: "unif"
    U[0, 1) (features after ReLU, maps, masks, sigmoid outputs) or "normal" N(0, 1)."""
    shape: tuple
    big: bool = False
    dist: str = "unif"


@dataclass(frozen=True)
class Case:
    """An op on a shape: ``op`` is the public name (``attnfast.<op>`` / ``reference.<op>``),
    ``n_grad_out`` the leading outputs that receive an upstream gradient (None: all)."""
    name: str
    op: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    n_grad_out: int | None = None

    @property
    def net(self) -> str:
        return self.name.split("/")[1].split(".")[0]

    def make(self, cfg: Config, seed: int) -> list:
        """Random inputs (one rotating set), each requiring grad."""
        gen = torch.Generator().manual_seed(seed)
        out = []
        for a in self.args:
            draw = torch.rand if a.dist == "unif" else torch.randn
            t = draw(a.shape, generator=gen)
            if a.big:
                t = t.to(cfg.torch_dtype)
                if cfg.channels_last:
                    t = t.to(memory_format=torch.channels_last)
            out.append(t.to(cfg.torch_device).requires_grad_(True))
        return out


def all_kernel_cases(device: str = "cpu") -> list:
    """Every op at the inner/last layers of each network of ``NETS[device]``; map ops on the
    inner layer's maps (soft_mask resizes the last map to the inner size, as the loss does);
    GGAM ops on the last layer; the fused loss with pixel maps and with the "channel" kind fed
    N x K last-layer weights (the GAP + linear head the training wrappers use)."""
    cases = []
    for net, s in NETS[device].items():
        n, (ki, hi, wi), (kl, hl, wl) = s.n, s.inner, s.last
        for layer, (k, h, w) in (("inner", s.inner), ("last", s.last)):
            feat, grad = Arg((n, k, h, w), True), Arg((n, k, h, w), True, "normal")
            tag = f"{net}.{layer}"
            cases += [Case(f"channel_weights/{tag}", "channel_weights", (grad,)),
                      Case(f"weighted_attention/{tag}", "weighted_attention",
                           (feat, Arg((n, k), dist="normal"))),
                      Case(f"channel_attention/{tag}", "channel_attention", (feat, grad)),
                      Case(f"pixel_attention/{tag}", "pixel_attention", (feat, grad))]
        imap, lmap = Arg((n, hi, wi)), Arg((n, hl, wl))
        fi, gi = Arg((n, ki, hi, wi), True), Arg((n, ki, hi, wi), True, "normal")
        fl, gl = Arg((n, kl, hl, wl), True), Arg((n, kl, hl, wl), True, "normal")
        head = Arg((n, kl), dist="normal")
        cases += [
            Case(f"normalize_attention/{net}.inner", "normalize_attention", (imap,)),
            Case(f"soft_mask/{net}.last->inner", "soft_mask", (lmap,), {"size": (hi, wi)}),
            Case(f"soft_iou/{net}.inner", "soft_iou", (imap, imap, imap)),
            Case(f"attention_consistency/{net}.inner", "attention_consistency", (imap, imap)),
            Case(f"channel_spatial_attention/{net}.last", "channel_spatial_attention",
                 (fl, Arg((n, kl)))),
            Case(f"ggam_loss/{net}.last", "ggam_loss", (Arg((n, kl)), Arg((n, kl), dist="normal"))),
            Case(f"sharpen_focus_loss/{net}", "sharpen_focus_loss", (fi, gi, gi, fl, gl, gl),
                 {"attention": "pixel"}, n_grad_out=1),
            Case(f"sharpen_focus_loss.head/{net}", "sharpen_focus_loss",
                 (fi, gi, gi, fl, head, head), {"attention": "channel"}, n_grad_out=1),
        ]
    return cases


def selected_kernel_cases(cfg: Config) -> list:
    """``all_kernel_cases`` of the device, filtered by --cases."""
    return [c for c in all_kernel_cases(cfg.device) if cfg.selected(c.name, c.op, c.net)]


# ========================================================================== training steps
@dataclass(frozen=True)
class TrainNet:
    """A training case: ``attnfast.models`` name (``cifar_stem``: its 7x7/2 stem and max-pool
    replaced by a 3x3/1 conv, the usual ResNet-18 for 32 x 32 inputs), input size, classes, N."""
    model: str
    size: int
    classes: int
    n: int
    cifar_stem: bool = False

    def build(self) -> nn.Module:
        model = models.create(self.model, num_classes=self.classes)
        if self.cifar_stem:
            model.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                       nn.ReLU())
        return model


TRAIN_NETS = {
    "cuda": {"r18_cifar": TrainNet("resnet18", 32, 100, 128, cifar_stem=True),
             "r50_224": TrainNet("resnet50", 224, 1000, 256)},
    "cpu": {"r18_cifar": TrainNet("resnet18", 32, 100, 32, cifar_stem=True),
            "r50_224": TrainNet("resnet50", 224, 1000, 4)},
    "quick": {"r18_cifar": TrainNet("resnet18", 32, 100, 8, cifar_stem=True)},
}


def selected_training_cases(cfg: Config) -> list:
    """(case name, TrainNet) of this run: ``TRAIN_NETS`` of the device (CPU --quick: "quick"),
    filtered by --cases."""
    nets = TRAIN_NETS["quick" if cfg.quick and cfg.device == "cpu" else cfg.device]
    return [(f"train/{k}", v) for k, v in nets.items() if cfg.selected(f"train/{k}", k)]


def case_names(cfg: Config) -> list:
    """[(name, what)] of every case this run could measure, --cases aside: kernel cases (with
    their op and network, which --cases globs also match) and training cases."""
    unfiltered = Config(**{**vars(cfg), "cases": []})
    kernels = [(c.name, f"op {c.op}, network {c.net}") for c in all_kernel_cases(cfg.device)]
    train = [(name, f"training step, {net.model} N {net.n}")
             for name, net in selected_training_cases(unfiltered)]
    return kernels + train


def unmatched(cfg: Config) -> list:
    """The --cases patterns that select no case (by case, op or network name)."""
    kernels = all_kernel_cases(cfg.device)
    trains = [(name, name.split("/", 1)[1]) for name, _ in
              selected_training_cases(Config(**{**vars(cfg), "cases": []}))]
    return [p for p in cfg.cases
            if not any(fnmatch.fnmatch(n, p) for c in kernels for n in (c.name, c.op, c.net))
            and not any(fnmatch.fnmatch(n, p) for t in trains for n in t)]
