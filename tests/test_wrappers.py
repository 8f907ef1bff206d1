"""SharpenFocus / GGAM / Baseline wrappers against eager compositions written out here.

Float64 tiny ResNets (the ``torch`` backend, so these tests check the wrappers, not the kernels;
``test_auto_backend_matches`` runs the default backend once). The eager compositions capture
features with their own hooks and take gradients with ``torch.autograd.grad`` of a summed score,
independently of the wrapper code.
"""
import copy
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as nnf

import attnfast
from attnfast import GGAM, SharpenFocus, reference
from attnfast.baseline import Baseline
from helpers import close, forward_with, image_batch, tiny_resnet

N, C, SIZE = 6, 5, (12, 16)  # non-square images: an H/W mix-up cannot pass
INNER, LAST = "layer2", "layer3"


pytestmark = pytest.mark.usefixtures("torch_backend")  # conftest


def tiny(dtype=torch.float64, seed=0, classes=C):
    return tiny_resnet(classes, dtype=dtype, seed=seed)


def batch(dtype=torch.float64, seed=1, n=N, classes=C):
    return image_batch(n, SIZE, classes, dtype=dtype, seed=seed)


def assert_close(a, b, tol=1e-9, what=""):
    """helpers.close with rtol = atol = tol, element by element."""
    close(a, b, what, rtol=tol, atol=tol)


def params(model):
    return [p for p in model.parameters() if p.requires_grad]


# ------------------------------------------------------------------------- captured gradients

def per_sample_grads(model, x, classes):
    """dY[n, c_n]/dF[n] from a forward of sample n alone (eval mode: samples independent)."""
    out = []
    for n in range(len(x)):
        logits, feats = forward_with(model, (INNER, LAST), x[n:n + 1])
        score = logits[0, classes[n]] if classes.dim() == 1 else (logits[0] * classes[n]).sum()
        out.append(torch.autograd.grad(score, feats))
    return [torch.cat([g[i] for g in out]) for i in range(2)]


def test_captured_gradients_are_each_samples_own_class_gradient():
    model = tiny().eval()
    x, y = batch()
    sf = SharpenFocus(model, INNER, LAST, head=None)
    g = sf._gradients(x, y, False)
    masked = g.logits.detach().clone()
    masked[torch.arange(N), y] = float("-inf")
    assert torch.equal(g.confusers, masked.argmax(1))
    for classes, (gi, gl) in ((y, (g.inner_target, g.last_target)),
                              (g.confusers, (g.inner_confuser, g.last_confuser))):
        ri, rl = per_sample_grads(model, x, classes)
        assert_close(gi, ri, what="inner")
        assert_close(gl, rl, what="last")
    # the published mistake -- backward(gradient=<the summed score itself>) -- scales every
    # gradient by that sum; the comparison above must reject it
    logits, (fi,) = forward_with(model, (INNER,), x)
    s = logits.gather(1, y[:, None]).sum()
    bug, = torch.autograd.grad(s, fi, grad_outputs=s)
    assert abs(s.item() - 1) > 1e-3
    with pytest.raises(AssertionError):
        assert_close(bug, per_sample_grads(model, x, y)[0], what="the bug")


def test_analytic_head_equals_autograd_last_layer_gradients():
    model = tiny().eval()
    x, y = batch()
    auto = SharpenFocus(model, INNER, LAST)
    ga = auto._gradients(x, y, False)
    assert auto.analytic_head and auto.head_status == "analytic (fc)"
    gg = SharpenFocus(model, INNER, LAST, head=None)._gradients(x, y, False)
    assert ga.last_target.shape == (N, 64)
    for a, b in ((ga.last_target, gg.last_target), (ga.last_confuser, gg.last_confuser)):
        assert_close(a[:, :, None, None].expand_as(b), b, what="analytic vs autograd")
    h, w = gg.last_target.shape[-2:]
    assert_close(ga.last_target, model.fc.weight[y] / (h * w), what="W[c] / (H W)")


# ------------------------------------------------------------------------- parameter gradients

def eager_sharpen_focus(model, x, y, *, second_order, attention="pixel", weight=1.0):
    """CE + weight * Sharpen Focus loss, composed by hand from hooks, autograd.grad and the
    reference loss; returns (loss, parameter gradients)."""
    logits, (fi, fl) = forward_with(model, (INNER, LAST), x)
    masked = logits.detach().clone()
    masked[torch.arange(len(y)), y] = float("-inf")
    conf = masked.argmax(1)

    def grads(cls):
        s = logits.gather(1, cls[:, None]).sum()
        return torch.autograd.grad(s, (fi, fl), create_graph=second_order, retain_graph=True)

    (it, lt), (ic, lc) = grads(y), grads(conf)
    attn = reference.sharpen_focus_loss(fi, it, ic, fl, lt, lc, attention=attention)[0]
    loss = nnf.cross_entropy(logits, y) + weight * attn
    return loss, torch.autograd.grad(loss, params(model))


@pytest.mark.parametrize("second_order", [True, False], ids=["second", "first"])
@pytest.mark.parametrize("head", ["auto", None], ids=["analytic", "autograd"])
@pytest.mark.parametrize("attention", ["pixel", "channel", "gradcam"])
def test_parameter_gradients_match_eager_composition(second_order, head, attention):
    model = tiny()
    x, y = batch()
    ref_loss, ref = eager_sharpen_focus(copy.deepcopy(model), x, y, second_order=second_order,
                                        attention=attention, weight=0.7)
    sf = SharpenFocus(model, INNER, LAST, head=head, attention=attention,
                      second_order=second_order, weight=0.7)
    step = sf(x, y)
    assert all(p.grad is None for p in model.parameters()), "the step touched .grad"
    assert_close(step.loss, ref_loss, what="loss")
    got = torch.autograd.grad(step.loss, params(model))
    for (name, _), a, b in zip(model.named_parameters(), got, ref):
        assert_close(a, b, 1e-8, what=name)


def test_second_order_differs_from_first_order():
    """Guard: the two orders must really differ, else the test above proves little."""
    x, y = batch()
    _, first = eager_sharpen_focus(tiny(), x, y, second_order=False)
    _, second = eager_sharpen_focus(tiny(), x, y, second_order=True)
    assert max((a - b).abs().max().item() for a, b in zip(first, second)) > 1e-6


def test_auto_backend_matches():
    """The default backend (C++ CPU when built) through the wrapper, float32."""
    model = tiny(torch.float32)
    x, y = batch(torch.float32)
    with attnfast.use_backend("auto"):
        step = SharpenFocus(model, INNER, LAST, weight=1.0)(x, y)
        got = torch.autograd.grad(step.loss, params(model))
    ref_loss, ref = eager_sharpen_focus(model, x, y, second_order=True)
    assert_close(step.loss, ref_loss, 1e-4, "loss")
    for a, b in zip(got, ref):
        assert_close(a, b, 1e-3, "grad")


def test_inference_and_no_grad_call():
    model = tiny()
    x, y = batch()
    sf = SharpenFocus(model, INNER, LAST)
    assert torch.equal(sf(x), model(x))
    with torch.no_grad():
        step = sf(x, y)
    assert not step.loss.requires_grad and not step.parts.inner_iou.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_attention_maps():
    model = tiny().eval()
    x, y = batch()
    sf = SharpenFocus(model, INNER, LAST, attention="channel")
    maps = sf.attention_maps(x, y)
    assert set(maps) == {"inner_target", "inner_confuser", "last_target", "last_confuser"}
    assert maps["inner_target"].shape == (N, 6, 8) and maps["last_target"].shape == (N, 3, 4)
    assert all(m.dtype == torch.float32 or m.dtype == torch.float64 for m in maps.values())
    ri, rl = per_sample_grads(model, x, y)
    _, (fi, fl) = forward_with(model, (INNER, LAST), x)
    assert_close(maps["inner_target"], reference.channel_attention(fi, ri))
    assert_close(maps["last_target"], reference.channel_attention(fl, rl))


# ------------------------------------------------------------------------- multi-label

def test_multilabel_targets_confusers_and_loss():
    model = tiny().eval()
    x, _ = batch()
    t = (torch.rand(N, C, generator=torch.Generator().manual_seed(3)) < 0.4).double()
    t[:, 0] = 1.0
    t[:, 1] = 0.0
    sf = SharpenFocus(model, INNER, LAST, multilabel=True)
    g = sf._gradients(x, t, False)
    masked = g.logits.detach().masked_fill(t > 0, float("-inf"))
    assert torch.equal(g.confusers, masked.argmax(1))
    ri, rl = per_sample_grads(model, x, t)
    assert_close(g.inner_target, ri, what="inner, sum of positive scores")
    h, w = rl.shape[-2:]
    assert_close(g.last_target[:, :, None, None].expand_as(rl), rl, what="analytic multi-hot")
    step = sf(x, t)
    want = nn.MultiLabelSoftMarginLoss()(g.logits.float(), t.float())
    assert_close(step.classification_loss, want, 1e-6, "MultiLabelSoftMarginLoss")


# ------------------------------------------------------------------------- GGAM

@pytest.mark.parametrize("target", ["predicted", "label"])
def test_ggam_matches_eager_composition(target):
    model = tiny()
    x, y = batch()
    gg = GGAM(model, LAST, channels=64, reduction=4, weight=0.5, target=target).double()
    step = gg(x, y)
    assert all(p.grad is None for p in gg.parameters())
    got = torch.autograd.grad(step.loss, params(gg))
    # eager: capture the module input A before the GGAM hook rescales it
    logits, (a,) = forward_with(model, (LAST,), x, prepend=True)
    assert_close(logits, step.logits, what="logits")
    cls = y if target == "label" else logits.detach().argmax(1)
    g, = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), a, retain_graph=True)
    beta = g.mean(dim=(2, 3))
    assert_close(step.gradcam_weights, beta, what="Grad-CAM weights")
    m = gg.attention
    s = torch.softmax(m.fc2(torch.relu(m.fc1(a.mean(dim=(2, 3))))), 1)  # Eq. 1
    assert_close(step.channel_weights, s, what="S")
    loss = nnf.cross_entropy(logits, y) + 0.5 * reference.ggam_loss(s, beta.detach()).mean()
    assert_close(step.loss, loss, what="loss")
    for (name, _), u, v in zip(gg.named_parameters(), got,
                               torch.autograd.grad(loss, params(gg))):
        assert_close(u, v, 1e-8, what=name)
    assert got[-1].abs().sum() > 0, "the attention module gets no gradient"


def test_sharpen_focus_on_a_ggam_model_sees_the_rescaled_features():
    """Hooks run in registration order: SharpenFocus made after GGAM captures D = A * T, which
    GAP feeds to fc, so the analytic head is accepted."""
    model = tiny()
    x, y = batch()
    gg = GGAM(model, LAST, channels=64, reduction=4).double()
    sf = SharpenFocus(model, INNER, LAST)
    sf(x, y)
    assert sf.analytic_head
    _, (d,) = forward_with(model, (LAST,), x)
    assert_close(sf._gradients(x, y, False).last, d, what="captured D")
    assert gg.attention.fc1.weight.grad is None


def test_baseline_step():
    model = tiny()
    x, y = batch()
    step = Baseline(model)(x, y)
    assert_close(step.loss, nnf.cross_entropy(model(x), y))
    assert step.attention_loss.item() == 0


# ------------------------------------------------------------------------- compile and autocast

@pytest.mark.parametrize("wrapper,compiled", [("sharpen-focus", "model"),
                                              ("sharpen-focus", "wrapper"), ("ggam", "model")])
def test_compiled_gives_the_same_step(wrapper, compiled):
    """model.compile() under a first-order wrapper, or torch.compile of the whole (second-order)
    wrapper: same loss and parameter gradients as eager."""
    torch._dynamo.reset()
    x, y = batch(torch.float32)

    def make(compile_it):
        model = tiny(torch.float32)
        if compile_it and compiled == "model":
            model.compile(backend="aot_eager")
        if wrapper == "ggam":
            torch.manual_seed(5)
            net = GGAM(model, LAST, channels=64, reduction=4)
        else:
            net = SharpenFocus(model, INNER, LAST, second_order=compiled == "wrapper")
        run = torch.compile(net, backend="aot_eager") if compile_it and compiled == "wrapper" \
            else net
        return net, run(x, y)

    (we, se), (wc, sc) = make(False), make(True)
    assert_close(sc.loss, se.loss, 1e-5, "loss")
    for a, b in zip(torch.autograd.grad(sc.loss, params(wc)),
                    torch.autograd.grad(se.loss, params(we))):
        assert_close(a, b, 1e-4, "grad")


def test_compiled_model_refuses_second_order():
    model = tiny(torch.float32)
    model.compile(backend="aot_eager")
    with pytest.raises(ValueError, match="double backward.*second_order=False"):
        SharpenFocus(model, INNER, LAST)


@pytest.mark.parametrize("wrapper", ["sharpen-focus", "ggam"])
def test_compiled_model_leaves_donated_buffers_on(wrapper):
    """With AOTAutograd's donated buffers on (PyTorch's default), a compiled model under a
    first-order wrapper still trains (the wrapper's retain_graph passes need them off, and get
    them off only around its own calls), and the global flag is the same after the step."""
    import torch._functorch.config as functorch_config
    torch._dynamo.reset()
    x, y = batch(torch.float32)
    with functorch_config.patch(donated_buffer=True):
        model = tiny(torch.float32)
        model.compile(backend="aot_eager")
        net = (GGAM(model, LAST, channels=64, reduction=4) if wrapper == "ggam"
               else SharpenFocus(model, INNER, LAST, second_order=False))
        assert functorch_config.donated_buffer is True
        step = net(x, y)
        assert functorch_config.donated_buffer is True
        step.loss.backward()
        net(x)
        assert functorch_config.donated_buffer is True
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("wrapper", ["sharpen-focus", "ggam"])
def test_autocast_bf16_step(wrapper):
    model = tiny(torch.float32)
    x, y = batch(torch.float32)
    net = (GGAM(model, LAST, channels=64, reduction=4) if wrapper == "ggam"
           else SharpenFocus(model, INNER, LAST))
    ref = net(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = net(x, y)
    assert step.logits.dtype == torch.bfloat16
    assert torch.isfinite(step.loss) and step.attention_loss.dtype == torch.float32
    assert abs(step.loss.item() - ref.loss.item()) < 0.1 * abs(ref.loss.item())
    step.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


# ------------------------------------------------------------------------- errors

def test_unknown_layer_lists_available_names():
    with pytest.raises(ValueError, match=r"no layer named 'layer9'.*available: .*layer1.*layer3"):
        SharpenFocus(tiny(), "layer9", LAST)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        GGAM(tiny(), "nope", channels=64)


class PoolNet(nn.Module):
    """conv stages + fc, pooled by max (or avg) and optionally rescaled after fc."""

    def __init__(self, pool="max", scale=1.0):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, C)
        self.pool, self.scale = pool, scale

    def forward(self, x):
        f = self.layer2(self.layer1(x))
        f = f.amax(dim=(2, 3)) if self.pool == "max" else f.mean(dim=(2, 3))
        return self.scale * self.fc(f)


@pytest.mark.parametrize("pool,scale,why", [("max", 1.0, "not head(GAP(features))"),
                                            ("avg", 2.0, "not head(GAP(features))")])
def test_head_not_fed_by_gap_is_refused(pool, scale, why):
    x, y = batch(torch.float32)
    torch.manual_seed(0)
    model = PoolNet(pool, scale)
    with pytest.raises(ValueError, match=f"head 'fc' is not the linear layer fed by global "
                                         f"average pooling of 'layer2'.*{re.escape(why)}"):
        SharpenFocus(model, "layer1", "layer2", head="fc")(x, y)
    auto = SharpenFocus(model, "layer1", "layer2")
    step = auto(x, y)
    assert not auto.analytic_head and why in auto.head_status
    g = auto._gradients(x, y, False)
    assert g.last_target.dim() == 4 and torch.isfinite(step.loss)
    ok = SharpenFocus(PoolNet("avg"), "layer1", "layer2", head="fc")
    ok(x, y)
    assert ok.analytic_head


def test_head_must_be_linear():
    with pytest.raises(ValueError, match="must be an nn.Linear"):
        SharpenFocus(tiny(), INNER, LAST, head="layer3")


@pytest.mark.parametrize("make", ["sf", "ggam", "baseline"])
def test_bad_targets(make):
    model = tiny()
    net = {"sf": lambda: SharpenFocus(model, INNER, LAST),
           "ggam": lambda: GGAM(model, LAST, channels=64).double(),
           "baseline": lambda: Baseline(model)}[make]()
    x, y = batch()
    with pytest.raises(ValueError, match=r"labels out of range: the model has 5 classes.*0\.\.5"):
        net(x, torch.tensor([0, 1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="labels out of range"):
        net(x, -torch.ones(N, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must have shape \(N,\) = \(6,\)"):
        net(x, y[:4])
    with pytest.raises(TypeError, match="multi-hot targets need multilabel=True"):
        net(x, nnf.one_hot(y, C).double())


def test_bad_multilabel_targets():
    model = tiny()
    sf = SharpenFocus(model, INNER, LAST, multilabel=True)
    x, y = batch()
    with pytest.raises(ValueError, match="multi-label targets must be N x C = 6 x 5"):
        sf(x, y)
    with pytest.raises(ValueError, match="only 0 and 1"):
        sf(x, torch.full((N, C), 2.0))


def test_bad_options():
    with pytest.raises(ValueError, match="attention must be"):
        SharpenFocus(tiny(), INNER, LAST, attention="cam")
    with pytest.raises(ValueError, match="target must be"):
        GGAM(tiny(), LAST, channels=64, target="x")
    with pytest.raises(ValueError, match="channels=32 but layer 'layer3' outputs 64 channels"):
        GGAM(tiny(), LAST, channels=32)


def test_confuser_is_the_runner_up_when_the_label_wins():
    """Pinned logits where the label has the highest score: the confuser must be the second
    class, not the label (random models seldom predict the label, so the test above may never
    reach this case); multi-label: the best negative class, however high the positives."""
    from attnfast.capture import confusers
    logits = torch.tensor([[5.0, 3.0, 1.0, 4.0], [0.0, 2.0, 9.0, 2.5], [1.0, 1.5, 0.5, -1.0]])
    y = torch.tensor([0, 2, 1])                 # the argmax of every row
    assert torch.equal(confusers(logits, y), torch.tensor([3, 3, 0]))
    multi = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]])
    assert torch.equal(confusers(logits, multi), torch.tensor([1, 3, 2]))
    # the wrapper on a model whose prediction is the label: confuser = runner-up
    model = tiny().eval()
    x, _ = batch()
    with torch.no_grad():
        labels = model(x).argmax(1)
    g = SharpenFocus(model, INNER, LAST, head=None)._gradients(x, labels, False)
    assert torch.equal(g.logits.detach().argmax(1), labels)
    assert torch.equal(g.confusers, g.logits.detach().topk(2, dim=1).indices[:, 1])
