"""Pretrained starts against torchvision itself (CI lane 2; skipped, naming why, without
torchvision): the weights-file table of ``attnfast.train.pretrained`` agrees with torchvision's
URLs, and randomly initialized torchvision ResNet-50 / VGG19 / VGG19-BN state_dicts, put in a tmp
hub cache under torchvision's file names, load by weights name into this library's models with
equal features (same pooled conv features, eval mode) and a new head."""
import pytest
import torch

from helpers import needs_torchvision, torchvision_error

pytestmark = needs_torchvision()
if torchvision_error() is None:
    import torchvision


def test_hub_file_table_matches_torchvision():
    from attnfast import pretrained
    for name, file in pretrained.HUB_FILES.items():
        assert torchvision.models.get_weight(name).url.rsplit("/", 1)[-1] == file, name
    assert pretrained.weights_name("ResNet152_Weights.IMAGENET1K_V2") is not None, \
        "with torchvision, any of its weights names resolves"
    assert pretrained.hub_file("ResNet152_Weights.IMAGENET1K_V2").startswith("resnet152-")


def tv_features(model, x):
    """torchvision model's pooled features before its classifier (eval mode)."""
    model.eval()
    with torch.no_grad():
        if hasattr(model, "fc"):
            trunk = torch.nn.Sequential(*list(model.children())[:-2])
        else:   # VGG: the conv features without the last max-pool
            trunk = model.features[:-1]
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(trunk(x), 1), 1)


def ours_features(model, x):
    model.eval()
    with torch.no_grad():
        y = model.stem(x)
        for i in range(1, model.num_stages + 1):
            y = getattr(model, f"layer{i}")(y)
        return torch.flatten(model.avgpool(y), 1)


# VGG's three-layer classifier, its head included, is not part of this library's VGG (GAP + fc)
VGG_CLASSIFIER = [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]


@pytest.mark.parametrize("name, weights, unused", [
    ("resnet50", "ResNet50_Weights.IMAGENET1K_V1", []),
    ("vgg19", "VGG19_Weights.IMAGENET1K_V1", VGG_CLASSIFIER),
    ("vgg19_bn", "VGG19_BN_Weights.IMAGENET1K_V1", VGG_CLASSIFIER)])
def test_torchvision_weights_load_with_equal_features(name, weights, unused, tmp_path):
    from attnfast import models, pretrained
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(weights=None)
    for m in tv.modules():   # non-default BatchNorm statistics, so that loading them shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        torch.save(tv.state_dict(),
                   tmp_path / "hub" / "checkpoints" / pretrained.HUB_FILES[weights])
        with pytest.warns(UserWarning) if unused else _nothing():
            ours = models.create(name, 7, pretrained=weights)
    finally:
        torch.hub.set_dir(old)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours_features(ours, x), tv_features(tv, x), rtol=0, atol=1e-5)
    r = ours.pretrained_report
    assert r.unexpected == unused and not r.missing
    assert ours.fc.weight.shape[0] == 7
    assert len(r.loaded) + len(r.unexpected) + len(r.replaced) == len(tv.state_dict())


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
