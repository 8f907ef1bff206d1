"""attnfast.cam: class activation maps against Captum's LayerGradCam, hand-computed maps and
pinned values; targets (top-k, several per image); AMP, channels_last, torch.compile, backends;
the differentiable option; how many backward calls a batch costs."""
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as nnf

import attnfast
from attnfast.cam import CAM, CAM_KINDS, save_overlay
from helpers import cam_images, cam_model, require

N, CLASSES, SIZE = 3, 10, (16, 24)  # non-square: an H/W mix-up cannot pass


def _model(seed=0):
    return cam_model(CLASSES, seed)


def _images(seed=1, n=N):
    return cam_images(SIZE, seed, n)


def _features_and_grads(model, layer, images, classes):
    """F and, per column of ``classes``, G = dY[n, c]/dF by plain autograd (one pass each)."""
    store = {}
    h = dict(model.named_modules())[layer].register_forward_hook(
        lambda mod, a, out: store.__setitem__("f", out))
    try:
        y = model(images)
    finally:
        h.remove()
    f = store["f"]
    grads = [torch.autograd.grad(y.gather(1, classes[:, t:t + 1]).sum(), f, retain_graph=True)[0]
             for t in range(classes.shape[1])]
    return f.detach(), grads


def _by_hand(kind, f, g):
    """The four kinds written out in plain torch."""
    if kind == "gradcam":
        return torch.relu((g.mean((2, 3), keepdim=True) * f).sum(1))
    if kind == "channel":
        return torch.relu((torch.relu(g).mean((2, 3), keepdim=True) * f).sum(1))
    if kind == "hirescam":
        return torch.relu((g * f).sum(1))
    return torch.relu((g * f).mean(1))


# ------------------------------------------------------------------------------ Captum
@pytest.mark.parametrize("layer", ["layer2", "layer3"])  # inner (autograd), last (analytic head)
def test_gradcam_equals_captum_layer_gradcam(layer):
    captum_attr = pytest.importorskip(
        "captum.attr", reason="captum not installed (pip install captum: compares LayerGradCam)")
    model, x = _model(), _images()
    cam = CAM(model, layer, "gradcam", size=None, normalize=False)
    out = cam(x, topk=3)
    assert cam.analytic_layers == ([layer] if layer == "layer3" else [])
    lgc = captum_attr.LayerGradCam(model, dict(model.named_modules())[layer])
    full = CAM(model, layer, "gradcam")(x, out.classes)
    for t in range(3):
        ref = lgc.attribute(x, target=out.classes[:, t], relu_attributions=True)[:, 0]
        torch.testing.assert_close(out.maps[:, t], ref, atol=1e-6, rtol=1e-4)
        # resized to the input (Captum's interpolate, bilinear) and divided by the max + 1e-6
        up = captum_attr.LayerAttribution.interpolate(ref[:, None], SIZE, "bilinear")
        up = up[:, 0] / (up.amax((1, 2, 3) if up.dim() == 4 else (1, 2))[:, None, None] + 1e-6)
        torch.testing.assert_close(full.maps[:, t], up, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------ by hand
@pytest.mark.parametrize("kind", CAM_KINDS)
@pytest.mark.parametrize("layer", ["layer2", "layer3"])
def test_kinds_against_hand_computed(kind, layer):
    model, x = _model(), _images()
    classes = torch.tensor([[1, 4], [0, 9], [7, 7]])
    f, grads = _features_and_grads(model, layer, x, classes)
    for head in ("auto", None):
        out = CAM(model, layer, kind, head=head, size=None, normalize=False)(x, classes)
        for t in range(2):
            torch.testing.assert_close(out.maps[:, t], _by_hand(kind, f, grads[t]),
                                       atol=1e-6, rtol=1e-4)


class _Tiny(nn.Module):
    """x -> pre (1x1 conv, weight I) -> body (1x1 conv, weight 2 I) -> GAP -> fc (W, no bias)."""

    def __init__(self):
        super().__init__()
        self.pre = nn.Conv2d(2, 2, 1, bias=False)
        self.body = nn.Conv2d(2, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.pre.weight.copy_(torch.eye(2)[:, :, None, None])
            self.body.weight.copy_(2 * torch.eye(2)[:, :, None, None])
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.5]]))

    def forward(self, x):
        return self.fc(self.body(self.pre(x)).mean((2, 3)))


X_TINY = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 3.0], [2.0, 1.0]]]])


@pytest.mark.parametrize("head", ["auto", None])
def test_pinned_values(head):
    """body: F = 2x, dY^c/dF = W[c] / 4, so gradcam = hirescam = ReLU(sum_k W[c,k] x_k / 2):
    class 0 [[0, 0], [1, 3]] / 2, class 1 everywhere 5/2 * 1/2 ... written out below."""
    model = _Tiny()
    raw = dict(size=None, normalize=False)
    c0 = torch.tensor([[0.0, 0.0], [0.5, 1.5]])          # ReLU((2x0 - 2x1) / 4)
    c1 = torch.full((2, 2), 1.25)                         # (2x0 + 2x1) / 8 = 10 / 8
    for kind, scale in (("gradcam", 1.0), ("hirescam", 1.0), ("pixel", 0.5)):
        out = CAM(model, "body", kind, head=head, **raw)(X_TINY, [[0, 1]])
        torch.testing.assert_close(out.maps[0], scale * torch.stack([c0, c1]))
    # channel: ReLU(W[0]) = (1, 0): ReLU(2 x0 / 4)
    out = CAM(model, "body", "channel", head=head, **raw)(X_TINY, 0)
    torch.testing.assert_close(out.maps[0, 0], torch.tensor([[0.5, 1.0], [1.5, 2.0]]))
    # pre: G = 2 W[c] / 4 (through body), F = x: the same maps as body's
    out = CAM(model, "pre", "gradcam", head=head, **raw)(X_TINY, [[0, 1]])
    torch.testing.assert_close(out.maps[0], torch.stack([c0, c1]))
    # normalized: divided by max + 1e-6
    out = CAM(model, "body", "gradcam", head=head, size=None)(X_TINY, [[0, 1]])
    torch.testing.assert_close(out.maps[0, 0], c0 / (1.5 + 1e-6))
    torch.testing.assert_close(out.maps[0, 1], c1 / (1.25 + 1e-6))


class _Flat(nn.Module):
    """x (N x 2 x 1 x 2) -> body (1x1 conv, weight I) -> flatten -> fc (W, 2 x 4, no bias):
    dY^c/dF[k, p] = W[c, 2k + p] differs from pixel to pixel, so Grad-CAM and HiResCAM differ."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(2, 2, 1, bias=False)
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.body.weight.copy_(torch.eye(2)[:, :, None, None])
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0, 0.5, 0.5], [0.0, 1.0, 1.0, 0.0]]))

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


X_ROW = torch.tensor([[[[1.0, 2.0]], [[2.0, 1.0]]]])   # F: channel 0 [1, 2], channel 1 [2, 1]


def test_gradcam_and_hirescam_pinned_and_resized_without_aligned_corners():
    """Class 0, G = W[0] = [[1, -1], [0.5, 0.5]]: Grad-CAM w = mean_p G = (0, 1/2), map
    ReLU(0 F0 + F1 / 2) = [1, 1/2]; HiResCAM ReLU(G0 F0 + G1 F1) = ReLU([1 + 1, -2 + 1/2]) =
    [2, 0]. Resized 1 x 2 -> 1 x 4 bilinearly with align_corners=False (source x of output j is
    j / 2 - 1/4, clamped): weights [1, 0], [3/4, 1/4], [1/4, 3/4], [0, 1] (align_corners=True
    would give thirds)."""
    model = _Flat()
    raw = dict(head=None, normalize=False)
    got = {k: CAM(model, "body", k, size=None, **raw)(X_ROW, 0).maps[0, 0]
           for k in ("gradcam", "hirescam")}
    torch.testing.assert_close(got["gradcam"], torch.tensor([[1.0, 0.5]]), rtol=0, atol=1e-7)
    torch.testing.assert_close(got["hirescam"], torch.tensor([[2.0, 0.0]]), rtol=0, atol=1e-7)
    up = {k: CAM(model, "body", k, size=(1, 4), **raw)(X_ROW, 0).maps[0, 0]
          for k in ("gradcam", "hirescam")}
    torch.testing.assert_close(up["gradcam"], torch.tensor([[1.0, 0.875, 0.625, 0.5]]),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(up["hirescam"], torch.tensor([[2.0, 1.5, 0.5, 0.0]]),
                               rtol=0, atol=1e-6)


def test_all_zero_map_stays_zero():
    model = _Tiny()
    x = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    out = CAM(model, "body", "gradcam")(x, 0)     # ReLU((x0 - x1) / 2) = 0 everywhere
    assert out.maps.shape == (1, 1, 2, 2)
    assert torch.equal(out.maps, torch.zeros_like(out.maps))


# ------------------------------------------------------------------------------ targets
def test_topk_targets():
    model, x = _model(), _images()
    cam = CAM(model, ["layer2", "layer3"], "gradcam")
    out = cam(x, topk=5)
    assert out.maps.shape == (N, 5, *SIZE) and out.classes.shape == (N, 5)
    assert torch.equal(out.classes, model(x).topk(5, 1).indices)
    torch.testing.assert_close(out.logits, model(x).detach())
    again = cam(x, out.classes)
    torch.testing.assert_close(again.maps, out.maps, atol=0, rtol=0)
    assert torch.equal(cam(x).classes, out.classes[:, :1])   # default: the top-1 class


@pytest.mark.parametrize("layer", ["layer2", "layer3"])
def test_several_targets_per_image_equal_single_calls(layer):
    model, x = _model(), _images()
    targets = torch.tensor([[3, 1, 3], [0, 9, 2], [5, 6, 7]])
    cam = CAM(model, layer, "hirescam")
    out = cam(x, targets)
    assert torch.equal(out.classes, targets)
    for t in range(3):
        one = cam(x, targets[:, t])
        torch.testing.assert_close(out.maps[:, t], one.maps[:, 0], atol=1e-6, rtol=1e-5)
    same = cam(x, 4)
    torch.testing.assert_close(same.maps[:, 0], cam(x, [4] * N).maps[:, 0], atol=0, rtol=0)


def test_multiple_layers_combine_as_normalized_mean():
    model, x = _model(), _images()
    out = CAM(model, ["layer2", "layer3"], "gradcam")(x, topk=2)
    mean = (out.layer_maps["layer2"] + out.layer_maps["layer3"]) / 2
    expect = mean / (mean.amax((2, 3), keepdim=True) + 1e-6)
    torch.testing.assert_close(out.maps, expect, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------ backward count
class _CountBackward(nn.Module):
    """The model, with a hook on its logits counting the backward passes that reach them."""

    def __init__(self, model):
        super().__init__()
        self.net, self.calls = model, 0

    def forward(self, x):
        y = self.net(x)
        if y.requires_grad:
            y.register_hook(self._count)
        return y

    def _count(self, g):
        self.calls += 1


@pytest.mark.parametrize("layers, batch_classes, expected", [
    (["net.layer3"], "vmap", 0),                 # analytic GAP + linear head: no backward
    (["net.layer2"], "vmap", 1),                 # one batched backward for 5 classes
    (["net.layer1", "net.layer2", "net.layer3"], "vmap", 1),
    (["net.layer2"], "loop", 5),                 # one per class rank
])
def test_backward_calls_per_batch(layers, batch_classes, expected):
    counted = _CountBackward(_model())
    head = "net.fc" if layers[-1] == "net.layer3" else "auto"   # a named head must fit a layer
    cam = CAM(counted, layers, "gradcam", head=head, batch_classes=batch_classes)
    for _ in range(2):
        counted.calls = 0
        out = cam(_images(), topk=5)
        assert out.maps.shape == (N, 5, *SIZE)
        assert counted.calls == expected and cam.grad_calls == expected
    assert cam.vmap_error is None


# ------------------------------------------------------------------------------ precision, layout
@pytest.mark.parametrize("layer", ["layer2", "layer3"])
def test_bf16_autocast_close_to_float32(layer):
    model, x = _model(), _images()
    targets = torch.tensor([[1, 2], [3, 4], [5, 6]])
    cam = CAM(model, layer, "gradcam")
    ref = cam(x, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = cam(x, targets)
    assert low.maps.dtype == torch.float32 and low.maps.shape == ref.maps.shape
    # normalized maps (peak 1): bf16 features and gradients, 8 bits of mantissa through the net
    assert (low.maps - ref.maps).abs().max() < 0.1
    assert torch.isfinite(low.maps).all()


@pytest.mark.parametrize("kind", ["gradcam", "pixel"])
def test_channels_last_equals_contiguous(kind):
    model, x = _model(), _images()
    ref = CAM(model, ["layer2", "layer3"], kind)(x, topk=3)
    model_cl = model.to(memory_format=torch.channels_last)
    cam = CAM(model_cl, ["layer2", "layer3"], kind)
    out = cam(x.to(memory_format=torch.channels_last), topk=3)
    torch.testing.assert_close(out.maps, ref.maps, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_backends_agree(backend):
    require(backend)
    model, x = _model(), _images()
    ref = CAM(model, ["layer2", "layer3"], "pixel", normalize=False)(x, topk=2)
    with attnfast.use_backend(backend):
        out = CAM(model, ["layer2", "layer3"], "pixel", normalize=False)(x, topk=2)
    torch.testing.assert_close(out.maps, ref.maps, atol=1e-6, rtol=1e-5)


def test_compiled_model_first_order():
    model, x = _model(), _images()
    ref = CAM(model, ["layer2", "layer3"], "gradcam")(x, topk=3)
    compiled = torch.compile(model, backend="aot_eager")
    cam = CAM(compiled, ["layer2", "layer3"], "gradcam")
    out = cam(x, topk=3)
    torch.testing.assert_close(out.maps, ref.maps, atol=1e-5, rtol=1e-4)
    assert torch.equal(out.classes, ref.classes)
    with pytest.raises(ValueError, match="double backward"):
        CAM(compiled, "layer2", create_graph=True)


# ------------------------------------------------------------------------------ differentiable
@pytest.mark.parametrize("layer", ["layer2", "layer3"])
def test_create_graph_gives_gradients(layer):
    model, x = _model(), _images().requires_grad_(True)
    out = CAM(model, layer, "gradcam", create_graph=True)(x, topk=2)
    assert out.maps.requires_grad
    loss = (out.maps * torch.linspace(0, 1, SIZE[1])).sum()
    gx, gw = torch.autograd.grad(loss, (x, model.fc.weight))
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0
    assert torch.isfinite(gw).all() and gw.abs().sum() > 0
    # and it is the gradient of the maps: a finite difference along a random direction
    model64 = _model().double()
    x64 = x.detach().double().requires_grad_(True)
    cam64 = CAM(model64, layer, "gradcam", create_graph=True)
    classes = out.classes
    v = torch.randn_like(x64)

    def value(inp):
        return (cam64(inp, classes).maps * torch.linspace(0, 1, SIZE[1], dtype=torch.float64)).sum()
    g, = torch.autograd.grad(value(x64), x64)
    h = 1e-6
    fd = ((value(x64.detach() + h * v) - value(x64.detach() - h * v)) / (2 * h)).detach()
    assert abs(float(fd) - float((g * v).sum())) <= 1e-4 * (1 + abs(float(fd)))


def test_not_differentiable_by_default():
    x = _images().requires_grad_(True)
    out = CAM(_model(), "layer2")(x, topk=2)
    assert not out.maps.requires_grad and not out.logits.requires_grad


# ------------------------------------------------------------------------------ errors, import
def test_errors():
    model, x = _model(), _images()
    with pytest.raises(ValueError, match="kind"):
        CAM(model, "layer3", "gradcam++")
    with pytest.raises(ValueError, match="no layer named"):
        CAM(model, "layer9")
    cam = CAM(model, "layer3")
    with pytest.raises(ValueError, match="out of range"):
        cam(x, CLASSES)
    with pytest.raises(ValueError, match="not both"):
        cam(x, 1, topk=2)
    with pytest.raises(TypeError, match="integer"):
        cam(x, torch.zeros(N))
    with pytest.raises(ValueError, match="topk"):
        cam(x, topk=CLASSES + 1)
    with pytest.raises(ValueError, match="global average pooling"):
        CAM(model, "layer2", head="fc")(x)       # layer2 does not feed fc through GAP
    frozen = _Tiny().requires_grad_(False)
    with pytest.raises(ValueError, match="does not require grad"):
        CAM(frozen, "pre", head=None)(X_TINY)


def test_head_auto_refuses_a_head_not_fed_by_gap():
    """A model that changes the logits after fc: auto detection falls back to autograd."""
    class Scaled(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m
            self.fc = m.fc

        def forward(self, x):
            return 3 * self.m(x)
    model, x = Scaled(_model()), _images()
    cam = CAM(model, "m.layer3", "gradcam", size=None, normalize=False)
    out = cam(x, topk=2)
    assert cam.analytic_layers == []
    f, grads = _features_and_grads(model, "m.layer3", x, out.classes)
    torch.testing.assert_close(out.maps[:, 1], _by_hand("gradcam", f, grads[1]),
                               atol=1e-6, rtol=1e-4)


def test_import_attnfast_does_not_import_cam():
    code = ("import sys, attnfast; assert 'attnfast.cam' not in sys.modules; "
            "assert 'matplotlib' not in sys.modules; assert attnfast.cam.CAM")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def test_save_overlay(tmp_path):
    pytest.importorskip("matplotlib", reason="save_overlay draws with matplotlib")
    model, x = _model(), _images()
    out = CAM(model, ["layer2", "layer3"], "gradcam")(x, topk=3)
    path = save_overlay(tmp_path / "maps.png", x, out, [f"c{i}" for i in range(CLASSES)],
                        targets=torch.tensor([1, 2, 3]), title="test")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save_overlay(tmp_path / "plain.png", x, out).exists()


def test_train_mode_warns_eval_does_not():
    """A model whose BatchNorm is in train mode mixes the batch into each map: warned."""
    model, x = _model(), _images()
    with CAM(model, "layer3") as cam:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cam(x)                                 # eval mode: silent
        model.train()
        with pytest.warns(UserWarning, match="CAM of a model in train mode.*model.eval()"):
            cam(x)


def test_overlay_images_denormalized():
    """viz.displayable: mean/std (or a callable) bring normalized images back to [0, 1],
    values still outside are clipped with a warning naming the span."""
    from attnfast.viz import displayable
    img = torch.tensor([0.0, 0.25, 0.5, 1.0]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.5, 0.2)
    x = (img - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(displayable(x, mean, std), img, rtol=0, atol=1e-6)
        torch.testing.assert_close(displayable(x, denormalize=lambda t: img), img, rtol=0,
                                   atol=0)
    # lowest (0 - 0.5) / 0.25 = -2 (channel 0), highest (1 - 0.3) / 0.2 = 3.5 (channel 2)
    with pytest.warns(UserWarning, match=r"image values span \[-2, 3.5\], outside \[0, 1\]"):
        shown = displayable(x)
    assert float(shown.min()) == 0 and float(shown.max()) == 1
    with pytest.raises(ValueError, match="not both"):
        displayable(x, mean, std, denormalize=lambda t: t)


def test_save_overlay_with_mean_std(tmp_path):
    pytest.importorskip("matplotlib", reason="save_overlay draws with matplotlib")
    model, x = _model(), _images()
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    normalized = (x - 0.5) / 0.25
    out = CAM(model, "layer3")(normalized, topk=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert save_overlay(tmp_path / "ok.png", normalized, out, mean=mean, std=std).exists()
    with pytest.warns(UserWarning, match="outside \\[0, 1\\]"):
        save_overlay(tmp_path / "clipped.png", normalized, out)
