"""Wrappers leave the user's model as they found it (issue 19, items 1-3).

A new user's own 4-layer CNN (conv1..conv4, GAP, fc; no BatchNorm, so the bare model's output is
a plain function of its weights): every wrapper (GGAM, SharpenFocus, CAM) attaches only once its
constructor has succeeded, comes off with ``remove()`` or at the end of a ``with`` block (the bare
model then gives exactly its old logits), refuses a second GGAM on the same layer, checks every
layer argument at the first call with a message naming the layer and its output, and GGAM reads
its channel count from the layer and round-trips through ``state_dict``.
"""
import inspect

import pytest
import torch
import torch.nn as nn

import attnfast
from attnfast import GGAM, Guidance, SharpenFocus
from attnfast.cam import CAM
from attnfast.ggam import layer_channels

N, CLASSES = 4, 10


@pytest.fixture(autouse=True)
def torch_backend():
    with attnfast.use_backend("torch"):
        yield


class FourLayer(nn.Module):
    """conv1..conv4 (3 -> 16 -> 32 -> 64 -> 64 channels, ReLU after each), GAP, fc."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(64, 64, 3, padding=1)
        self.relu4 = nn.ReLU()
        self.fc = nn.Linear(64, CLASSES)

    def forward(self, x):
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.fc(self.relu4(self.conv4(x)).mean(dim=(2, 3)))


def model(seed=0):
    torch.manual_seed(seed)
    return FourLayer().eval()


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 3, 8, 8, generator=g), torch.randint(0, CLASSES, (N,), generator=g)


def hooks(m):
    """Forward hooks on every module of ``m``: what a wrapper attaches."""
    return sum(len(mod._forward_hooks) for mod in m.modules())


WRAPPERS = {
    "ggam": lambda m: GGAM(m, "conv4"),
    "sharpen_focus": lambda m: SharpenFocus(m, "conv3", "conv4"),
    "cam": lambda m: CAM(m, "conv4"),
    "guidance": lambda m: Guidance(m, ["conv3", "conv4"]),
}


def call(w, x, y):
    """One use of any wrapper: CAM takes images, Guidance boxes too (every image: its top left)."""
    if isinstance(w, CAM):
        return w(x)
    if isinstance(w, Guidance):
        return w(x, y, torch.tensor([[0, 0, x.shape[2] // 2, x.shape[3] // 2]] * len(x)).float())
    return w(x, y)


def test_ggam_remove_gives_the_old_model_back():
    m, (x, y) = model(), data()
    with torch.no_grad():
        before = m(x)
        g = GGAM(m, "conv4")
        wrapped = m(x)
        assert (wrapped - before).abs().max() > 1e-3   # guard: the module does change the output
        g.remove()
        assert torch.equal(m(x), before)
    assert hooks(m) == 0 and not g.attached
    with pytest.raises(RuntimeError, match="GGAM was removed from its model"):
        g(x, y)
    g.remove()                                          # twice is fine


@pytest.mark.parametrize("make", sorted(WRAPPERS))
def test_with_block_removes_every_hook(make):
    m, (x, y) = model(), data()
    with torch.no_grad():
        before = m(x)
    with WRAPPERS[make](m) as w:
        assert hooks(m) >= 1 and w.attached
        call(w, x, y)
    assert hooks(m) == 0
    with torch.no_grad():
        assert torch.equal(m(x), before)


@pytest.mark.parametrize("make,error", [
    (lambda m: GGAM(m, "conv4", channels=32), "channels=32 but layer 'conv4' outputs 64"),
    (lambda m: GGAM(m, "conv4", guide="softmax"), "guide must be"),
    (lambda m: SharpenFocus(m, "conv3", "conv9"), "no layer named 'conv9'"),
    (lambda m: SharpenFocus(m, "conv3", "conv4", head="conv4"), "must be an nn.Linear"),
    (lambda m: CAM(m, ["conv3", "conv9"]), "no layer named 'conv9'"),
    (lambda m: Guidance(m, ["conv3", "conv9"]), "no layer named 'conv9'"),
    (lambda m: Guidance(m, "conv3", loss="bce"), "loss must be one of"),
])
def test_failed_construction_attaches_nothing(make, error):
    m, (x, _) = model(), data()
    with torch.no_grad():
        before = m(x)
    with pytest.raises(ValueError, match=error):
        make(m)
    assert hooks(m) == 0
    with torch.no_grad():
        assert torch.equal(m(x), before)
    GGAM(m, "conv4").remove()   # the layer is free: no claim was left behind


def test_ggam_channels_from_the_layer():
    m = model()
    assert layer_channels(m.conv4) == 64 and layer_channels(m.relu4) is None
    assert layer_channels(nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())) == 8
    with GGAM(m, "conv4") as g:
        assert g.attention.fc1.in_features == 64
    with pytest.raises(ValueError, match="cannot read the channel count of layer 'relu4'.*"
                                         "pass channels="):
        GGAM(m, "relu4")
    assert hooks(m) == 0


def test_ggam_wrong_channels_found_at_first_call_removes_itself():
    """A layer whose structure does not say its channels: the given value is checked against
    the output on the first call, and the failed wrapper leaves the model as it was."""
    m, (x, y) = model(), data()
    with torch.no_grad():
        before = m(x)
    g = GGAM(m, "relu4", channels=32)
    with pytest.raises(ValueError, match="'relu4' outputs 64 channels, not channels=32; the "
                                         "wrapper has removed itself"):
        g(x, y)
    assert hooks(m) == 0 and not g.attached
    with torch.no_grad():
        assert torch.equal(m(x), before)
    with GGAM(m, "relu4", channels=64) as ok:
        assert torch.isfinite(ok(x, y).loss)


def test_second_ggam_on_a_layer_is_refused():
    m, (x, y) = model(), data()
    first = GGAM(m, "conv4")
    with pytest.raises(ValueError, match="layer 'conv4' is already wrapped by a live GGAM.*"
                                         r"\.remove\(\)"):
        GGAM(m, "conv4")
    assert hooks(m) == 1
    with SharpenFocus(m, "conv3", "conv4") as sf, CAM(m, "conv4") as cam:  # readers may share
        sf(x, y), cam(x)
    first.remove()
    GGAM(m, "conv4").remove()


def test_ggam_state_dict_round_trips(tmp_path):
    """Save the wrapped model, load into a fresh model under a fresh GGAM: equal logits."""
    m, (x, y) = model(0), data()
    g = GGAM(m, "conv4")
    with torch.no_grad():
        for p in g.attention.parameters():   # a module unlike a fresh one's
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
        want = g(x)
    torch.save(g.state_dict(), tmp_path / "ggam.pt")
    fresh = GGAM(model(1), "conv4")
    with torch.no_grad():
        assert (fresh(x) - want).abs().max() > 1e-3    # guard: another model before loading
        fresh.load_state_dict(torch.load(tmp_path / "ggam.pt", weights_only=True))
        assert torch.equal(fresh(x), want)
    assert any(k.startswith("attention.") for k in g.state_dict())


class TupleLayer(nn.Module):
    """A layer returning (features, features)."""

    def forward(self, x):
        return x, x


class TupleNet(FourLayer):
    def __init__(self):
        super().__init__()
        self.pair = TupleLayer()

    def forward(self, x):
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.fc(self.pair(self.conv4(x))[0].mean(dim=(2, 3)))


@pytest.mark.parametrize("make,layer,gave", [
    (lambda m: SharpenFocus(m, "conv3", "fc"), "fc", "Linear\\) outputs a torch.float32 tensor of "
                                                     "shape \\(4, 10\\)"),
    (lambda m: SharpenFocus(m, "pair", "conv4"), "pair", "TupleLayer\\) outputs a tuple of 2"),
    (lambda m: CAM(m, "fc"), "fc", "Linear\\) outputs a torch.float32 tensor of shape "
                                   "\\(4, 10\\)"),
    (lambda m: GGAM(m, "pair", channels=64), "pair", "TupleLayer\\) outputs a tuple of 2"),
    (lambda m: Guidance(m, "fc"), "fc", "Linear\\) outputs a torch.float32 tensor of shape "
                                       "\\(4, 10\\)"),
])
def test_layer_that_is_not_a_feature_map_is_named(make, layer, gave):
    torch.manual_seed(0)
    m, (x, y) = TupleNet().eval(), data()
    w = make(m)
    with pytest.raises(ValueError, match=f"layer '{layer}' \\({gave}, but an N x K x H x W "
                                         "feature map is needed there"):
        call(w, x, y)


def test_sharpen_focus_default_weight_is_the_recommended_one():
    """0.1 (README, docs/METHOD.md), not Eq. 9's 1: loss = CE + 0.1 * attention term."""
    assert inspect.signature(SharpenFocus).parameters["weight"].default == 0.1
    m, (x, y) = model(), data()
    with SharpenFocus(m, "conv3", "conv4") as sf:
        step = sf(x, y)
    want = step.classification_loss + 0.1 * step.attention_loss
    torch.testing.assert_close(step.loss, want, rtol=0, atol=1e-6)
    assert step.attention_loss > 0.05            # guard: the weight matters here
