"""ResNets with named stages for attention supervision.

* CIFAR ResNets after He et al. 2016, Sec. 4.2: depth = 6n + 2, a 3x3 conv with 16 channels, three
  stages ``layer1..layer3`` of n basic blocks with 16/32/64 channels (the 2nd and 3rd start with
  stride 2), then global average pooling and ``fc``. Shortcuts: option "A" (parameter-free:
  identity, subsampled by 2 and zero-padded in channels where the shape changes; the paper's CIFAR
  choice) or "B" (1x1 conv + BN projection where the shape changes).
* ImageNet-style ResNet-18 (basic blocks [2, 2, 2, 2]), ResNet-50 and ResNet-101 (bottlenecks
  [3, 4, 6, 3] / [3, 4, 23, 3], expansion 4): 7x7/2 conv, 3x3/2 max-pool, stages
  ``layer1..layer4`` (64..512 widths), GAP, ``fc``. Inner / last layer: ``layer3`` / ``layer4``.
* VGG-19 and VGG-19-BN (Simonyan & Zisserman 2015, configuration E, without and with BatchNorm):
  sixteen 3x3 convolutions in five stages ``layer1..layer5`` of 2, 2, 4, 4, 4 (64, 128, 256,
  512, 512 channels); every stage after the first starts with the 2x2/2 max-pool of the one
  before. VGG's own pool5 and three-layer classifier are replaced by GAP and one ``fc`` (so
  that, as for the ResNets, the last layer feeds GAP + linear and the analytic head applies,
  and GGAM's module sits right before the pooling). Inner / last layer: ``layer4`` (conv4_4 +
  ReLU, 1/8 of the input: 56 x 56 at 448) / ``layer5`` (conv5_4 + ReLU, 1/16: 28 x 28).

Every model has ``avgpool`` (GAP) feeding the ``nn.Linear`` ``fc`` directly, so the analytic
last-layer gradient dY^c/dF[n,k,i,j] = W[c,k] / (H W) holds for ``last_layer`` = the last stage.
``model.attention_layers`` gives the paper's (inner, last) pair (the last two stages) and
``model.stage_channels`` maps each stage name to its output channels.

Pretrained weights in torchvision's layout load into these models by name
(``model.torchvision_key`` renames a torchvision key; :mod:`.pretrained`); ``create(...,
pretrained=SOURCE)`` starts a model from them with a new head.
"""
from __future__ import annotations

import re
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as nnf

__all__ = ["CifarResNet", "ResNet", "VGG", "create", "available", "cifar_resnet", "resnet18",
           "resnet50", "resnet101", "vgg19", "vgg19_bn"]


def _conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv_bn(cin, cout, kernel, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, bias=False),
                         nn.BatchNorm2d(cout))


class PadShortcut(nn.Module):
    """Option-A shortcut: x[:, :, ::s, ::s], zero-padded from cin to cout channels."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        lo = self.extra // 2
        return nnf.pad(x, (0, 0, 0, 0, lo, self.extra - lo))


class BasicBlock(nn.Module):
    """y = ReLU(BN(conv3x3(ReLU(BN(conv3x3(x))))) + shortcut(x))."""
    expansion = 1

    def __init__(self, cin, width, stride=1, shortcut="B"):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = _conv3x3(cin, width, stride), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv3x3(width, cout), nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride, shortcut)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """y = ReLU(BN(conv1x1(ReLU(BN(conv3x3/s(ReLU(BN(conv1x1(x)))))))) + shortcut(x)), 4x wide."""
    expansion = 4

    def __init__(self, cin, width, stride=1, shortcut="B"):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv3x3(width, width, stride), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride, shortcut)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


def _shortcut(cin, cout, stride, kind):
    if stride == 1 and cin == cout:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(cin, cout, stride)
    if kind == "B":
        return _conv_bn(cin, cout, 1, stride)
    raise ValueError(f"shortcut must be 'A' or 'B', got {kind!r}")


def _stage(block, cin, width, blocks, stride, shortcut):
    layers = []
    for b in range(blocks):
        layers.append(block(cin, width, stride if b == 0 else 1, shortcut))
        cin = width * block.expansion
    return nn.Sequential(*layers), cin


class _Backbone(nn.Module):
    """Stem, named stages, GAP, fc. Subclasses build ``stem`` and call ``_build_stages``."""

    def _build_stages(self, block, cin, widths, depths, strides, shortcut, num_classes):
        self.stage_channels = {}
        for i, (w, d, s) in enumerate(zip(widths, depths, strides), start=1):
            stage, cin = _stage(block, cin, w, d, s, shortcut)
            self.add_module(f"layer{i}", stage)
            self.stage_channels[f"layer{i}"] = cin
        self._finish(cin, num_classes)

    def _finish(self, cin, num_classes):
        """After the stages (``stage_channels`` filled): the (inner, last) pair of the paper, GAP,
        ``fc`` and the convolutions' He initialization (biases, where there are any, zero)."""
        self.num_stages = len(self.stage_channels)
        self.attention_layers = (f"layer{self.num_stages - 1}", f"layer{self.num_stages}")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.stem(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CifarResNet(_Backbone):
    """He et al. 2016 CIFAR ResNet of depth 6n + 2 (20, 32, 44, 56, 110, ...; 8 for quick tests)."""

    def __init__(self, depth=20, num_classes=10, in_channels=3, shortcut="A"):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(_conv3x3(in_channels, 16), nn.BatchNorm2d(16), nn.ReLU())
        self._build_stages(BasicBlock, 16, (16, 32, 64), (n, n, n), (1, 2, 2), shortcut,
                           num_classes)


class ResNet(_Backbone):
    """ImageNet-style ResNet: 7x7/2 conv, 3x3/2 max-pool, four stages, GAP, fc."""

    # torchvision's names of the stem and of the projection shortcuts -> ours
    _TV_RENAMES = ((re.compile(r"^conv1\."), "stem.0."), (re.compile(r"^bn1\."), "stem.1."),
                   (re.compile(r"\.downsample\."), ".shortcut."))

    def __init__(self, block, depths, num_classes=1000, in_channels=3, shortcut="B"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self._build_stages(block, 64, (64, 128, 256, 512), depths, (1, 2, 2, 2), shortcut,
                           num_classes)

    def torchvision_key(self, key):
        """The name in this model of the state_dict key ``key`` of torchvision's ResNet."""
        for pattern, new in self._TV_RENAMES:
            key = pattern.sub(new, key)
        return key


class VGG(_Backbone):
    """VGG with named stages (module docstring): ``layer1..layer5``, GAP, ``fc``."""

    def __init__(self, convs=(2, 2, 4, 4, 4), batch_norm=False, num_classes=1000,
                 in_channels=3):
        super().__init__()
        self.stem = nn.Identity()
        self.stage_channels, self._tv_names, tv, cin = {}, {}, 0, in_channels
        for s, (n, width) in enumerate(zip(convs, (64, 128, 256, 512, 512)), start=1):
            layers = [nn.MaxPool2d(2, 2)] if s > 1 else []
            tv += s > 1   # torchvision's features: the pool ends the stage before
            for _ in range(n):
                parts = [nn.Conv2d(cin, width, 3, padding=1)]
                parts += [nn.BatchNorm2d(width)] if batch_norm else []
                for part in parts:   # torchvision index of each layer with weights -> ours
                    self._tv_names[f"features.{tv}."] = f"layer{s}.{len(layers)}."
                    layers.append(part)
                    tv += 1
                layers.append(nn.ReLU(inplace=True))
                tv += 1
                cin = width
            self.add_module(f"layer{s}", nn.Sequential(*layers))
            self.stage_channels[f"layer{s}"] = cin
        self._finish(cin, num_classes)

    def torchvision_key(self, key):
        """The name in this model of the state_dict key ``key`` of torchvision's VGG
        (``features.<i>.`` -> ``layer<s>.<j>.``; the classifier keeps its name and is unused)."""
        head, dot, rest = key.partition(".")
        idx, _, param = rest.partition(".")
        return self._tv_names.get(f"{head}.{idx}.", f"{head}.{idx}.") + param if dot and param \
            else key


def cifar_resnet(depth, **kw):
    return CifarResNet(depth, **kw)


def resnet18(**kw):
    return ResNet(BasicBlock, (2, 2, 2, 2), **kw)


def resnet50(**kw):
    return ResNet(Bottleneck, (3, 4, 6, 3), **kw)


def resnet101(**kw):
    return ResNet(Bottleneck, (3, 4, 23, 3), **kw)


def vgg19(**kw):
    return VGG((2, 2, 4, 4, 4), batch_norm=False, **kw)


def vgg19_bn(**kw):
    return VGG((2, 2, 4, 4, 4), batch_norm=True, **kw)


_CIFAR_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
_REGISTRY = {**{f"resnet{d}": (lambda d=d, **kw: cifar_resnet(d, **kw)) for d in _CIFAR_DEPTHS},
             "resnet18": resnet18, "resnet50": resnet50, "resnet101": resnet101,
             "vgg19": vgg19, "vgg19_bn": vgg19_bn}


def available():
    """Names accepted by :func:`create`."""
    return sorted(_REGISTRY, key=lambda s: (s[:3], int(re.sub(r"\D", "", s))))


def torchvision_name(name):
    """Whether ``name`` is a model of ``torchvision.models`` (False without torchvision)."""
    try:
        import torchvision
    except Exception:  # not installed, or not loadable with this torch
        return False
    return name in torchvision.models.list_models()


def create(name, num_classes, in_channels=3, pretrained=None, **kw):
    """Build a model by name (``resnet20`` ... CIFAR-style; ``resnet18``, ``resnet50``,
    ``resnet101``; ``vgg19``, ``vgg19_bn``).

    A name not in :func:`available` is looked up in ``torchvision.models`` when torchvision is
    installed (its ResNets also have ``layer1..layer4`` and an ``fc`` fed by GAP).
    ``pretrained``: a torchvision weights name or the path of a state_dict / checkpoint
    (:func:`.pretrained.load_into`): every weight but the head's is loaded, the head stays new
    for ``num_classes``; ``model.pretrained_report`` lists what was loaded, missing and unused,
    and a warning says so when something was missing or unused.
    """
    if pretrained is not None:
        from .pretrained import load_into
        model = create(name, num_classes, in_channels, **kw)
        report = load_into(model, pretrained)
        model.pretrained_report = report
        if report.missing or report.unexpected:
            warnings.warn(report.describe(), stacklevel=2)
        return model
    if name in _REGISTRY:
        return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **kw)
    try:
        import torchvision
    except ImportError:
        raise ValueError(f"unknown model {name!r}; attnfast.train.models has {available()} "
                         "(torchvision models need `pip install torchvision`)") from None
    try:
        model = torchvision.models.get_model(name, num_classes=num_classes, **kw)
    except ValueError as e:
        raise ValueError(f"unknown model {name!r}: not in attnfast.train.models {available()} "
                         f"nor in torchvision ({e})") from None
    if in_channels != 3:
        raise ValueError(f"torchvision model {name!r} expects 3 input channels, "
                         f"got in_channels={in_channels}")
    return model
