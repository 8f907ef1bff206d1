"""Starting a model from pretrained weights (``--pretrained SOURCE``,
``models.create(..., pretrained=SOURCE)``).

SOURCE is either the path of a local file -- a state_dict, a checkpoint holding one under
``state_dict`` / ``model`` / ``net`` (this trainer's checkpoints: the wrapper's ``model.``
prefix is removed), keys of a DistributedDataParallel model (``module.``) included -- or a
torchvision weights name such as ``ResNet50_Weights.IMAGENET1K_V1``. A weights name is read from
the local torch hub cache, ``torch.hub.get_dir()/checkpoints/<torchvision's file name>``;
nothing is downloaded at run time, and a missing file is an error that names the path and says
how to put the file there.

Keys in torchvision's layout are renamed to the model's own (``model.torchvision_key``, e.g.
``conv1.`` -> ``stem.0.`` for the ResNets of :mod:`.models`). The head (the model's last
``nn.Linear``) is never loaded: it stays freshly initialized for the data's classes. Every key is
accounted for in the :class:`Report`: loaded, missing (left as initialized), unexpected (in the
file, unused by the model) or the replaced head's.
"""
from __future__ import annotations

__all__ = ["Report", "weights_name", "hub_file", "resolve", "require", "read_state_dict",
           "head_name", "load_into"]

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

# torchvision weights name -> the file torchvision downloads it to (the last part of its URL);
# the torchvision lane checks this table against torchvision's own (tests/test_pretrained_tv.py).
HUB_FILES = {
    "ResNet18_Weights.IMAGENET1K_V1": "resnet18-f37072fd.pth",
    "ResNet50_Weights.IMAGENET1K_V1": "resnet50-0676ba61.pth",
    "ResNet50_Weights.IMAGENET1K_V2": "resnet50-11ad3fa6.pth",
    "ResNet101_Weights.IMAGENET1K_V1": "resnet101-63fe2227.pth",
    "ResNet101_Weights.IMAGENET1K_V2": "resnet101-cd907fc2.pth",
    "VGG19_Weights.IMAGENET1K_V1": "vgg19-dcbb9e9d.pth",
    "VGG19_BN_Weights.IMAGENET1K_V1": "vgg19_bn-c79401a0.pth",
}
# keys a container file may hold the state_dict under, in the order they are tried
CONTAINER_KEYS = ("state_dict", "model", "net")


@dataclass
class Report:
    """What :func:`load_into` did with the file at ``path``: the model's keys ``loaded`` from it,
    ``missing`` from it (left as initialized; BatchNorm ``num_batches_tracked`` counters aside,
    counted in ``counters``), the file's ``unexpected`` keys (unused by the model) and the keys
    of the replaced ``head``."""
    path: str
    head: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    replaced: list = field(default_factory=list)
    counters: int = 0

    def describe(self):
        """A few lines for a person: counts, then every missing and unexpected key."""
        lines = [f"pretrained {self.path}: {len(self.loaded)} tensors loaded; head {self.head!r} "
                 f"new ({len(self.replaced)} of the file's tensors not used for it)"]
        if self.counters:
            lines.append(f"  {self.counters} BatchNorm num_batches_tracked counters absent "
                         "from the file: left at 0")
        for what, keys in (("missing from the file (left as initialized)", self.missing),
                           ("unexpected (in the file, unused by the model)", self.unexpected)):
            if keys:
                lines.append(f"  {len(keys)} {what}: {', '.join(keys)}")
        return "\n".join(lines)


def weights_name(source):
    """The torchvision weights name ``source`` stands for (case-insensitive; with torchvision
    installed any of its weights names), or None."""
    text = str(source)
    for name in HUB_FILES:
        if name.lower() == text.lower():
            return name
    if "_Weights." not in text and "_weights." not in text:
        return None
    try:
        import torchvision
        torchvision.models.get_weight(text)
        return text
    except Exception:  # no torchvision, or not one of its names
        return None


def hub_file(name):
    """The file name of torchvision weights ``name`` (:data:`HUB_FILES`, else torchvision's)."""
    if name in HUB_FILES:
        return HUB_FILES[name]
    import torchvision
    return torchvision.models.get_weight(name).url.rsplit("/", 1)[-1]


def resolve(source):
    """The local file of SOURCE: the path itself when it is a file, else the hub cache's file
    of a torchvision weights name (which may not exist). Raises ValueError when SOURCE is
    neither an existing file nor a weights name."""
    path = Path(os.fspath(source)).expanduser()
    if path.is_file():
        return path
    name = weights_name(source)
    if name is None:
        raise ValueError(f"--pretrained {source}: not a file, and not a torchvision weights name "
                         f"(known here: {', '.join(HUB_FILES)})")
    return Path(torch.hub.get_dir()) / "checkpoints" / hub_file(name)


def require(source):
    """:func:`resolve`, and the file must exist: FileNotFoundError naming the path it looked for
    and how to put the weights there."""
    path = resolve(source)
    if path.is_file():
        return path
    name = weights_name(source)
    raise FileNotFoundError(
        f"--pretrained {source}: looked for {path} (the torch hub cache: torch.hub.get_dir()/"
        f"checkpoints) and it is not there; nothing is downloaded at run time. Put torchvision's "
        f"file {path.name} there: on a machine with network, `python -c \"import torchvision; "
        f"torchvision.models.get_weight('{name}').get_state_dict()\"` downloads it into that "
        f"machine's cache; copy it to {path} (or set TORCH_HOME to a folder holding "
        f"hub/checkpoints/{path.name}), or pass the file's path to --pretrained.")


def read_state_dict(path):
    """The state_dict in the file at ``path`` (``weights_only`` load on the CPU), taken out of a
    checkpoint container when it is one, ``module.`` prefixes removed."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in CONTAINER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"--pretrained {path}: not a state_dict (a dict of tensors), nor a "
                         f"checkpoint holding one under {' / '.join(CONTAINER_KEYS)}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def head_name(model):
    """The name of the model's head: its last ``nn.Linear``."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("the model has no nn.Linear head to replace")
    return names[-1]


def _own_names(model, state):
    """``state`` with its keys renamed to the model's: a trainer checkpoint's ``model.`` prefix
    removed, torchvision's layout renamed by ``model.torchvision_key`` where the model has it."""
    own = model.state_dict()
    if not any(k in own for k in state) and any(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    rename = getattr(model, "torchvision_key", None)
    if rename is not None:
        state = {(k if k in own else rename(k)): v for k, v in state.items()}
    return state


def load_into(model, source):
    """Load SOURCE (module docstring) into ``model`` except its head; returns a :class:`Report`.
    A tensor whose shape differs from the model's is a ValueError naming every such key."""
    path = require(source)
    state = _own_names(model, read_state_dict(path))
    head = head_name(model)
    own = model.state_dict()
    report = Report(str(path), head)
    take, wrong = {}, []
    for key, value in state.items():
        if key.startswith(head + "."):
            report.replaced.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            wrong.append(f"{key} {tuple(value.shape)} (model {tuple(own[key].shape)})")
        else:
            take[key] = value
    if wrong:
        raise ValueError(f"--pretrained {path}: shapes differ from the model's: "
                         + "; ".join(wrong))
    for key in own:
        if key in take or key.startswith(head + "."):
            continue
        if key.endswith("num_batches_tracked"):
            report.counters += 1
        else:
            report.missing.append(key)
    model.load_state_dict(take, strict=False)
    report.loaded = sorted(take)
    return report
