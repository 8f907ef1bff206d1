"""What the wrappers capture as class-score gradients in train mode, and the exact per-sample mode
(``per_sample_grads=True``: BatchNorm statistics held fixed in the gradient pass).

Float64 tiny ResNets on the ``torch`` backend. The per-sample reference is computed here,
independently of the wrappers: the model in eval mode with each BatchNorm's running statistics
set to the statistics of the batch (recorded by this file's own hooks), one sample at a time.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as nnf

import attnfast
from attnfast import GGAM, SharpenFocus, reference
from helpers import forward_with, image_batch, tiny_resnet

N, C, SIZE = 6, 5, (12, 16)  # non-square images: an H/W mix-up cannot pass
INNER, LAST = "layer2", "layer3"  # resnet8: BatchNorm layers in layer3 come after INNER


pytestmark = pytest.mark.usefixtures("torch_backend")  # conftest


def tiny(seed=0):
    return tiny_resnet(C, seed=seed)


def batch(seed=1):
    return image_batch(N, SIZE, C, seed=seed)


def norms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def freeze_to_batch_statistics(model, x):
    """Eval mode with every BatchNorm's running mean / variance set to the mean / biased variance
    its input has in a train-mode forward of the whole batch x."""
    stats = {}

    def pre(m, args):
        a = args[0].detach()
        stats[m] = (a.mean((0, 2, 3)), a.var((0, 2, 3), correction=0))
    hs = [m.register_forward_pre_hook(pre) for m in norms(model)]
    model.train()
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    for m, (mu, var) in stats.items():
        m.running_mean.copy_(mu)
        m.running_var.copy_(var)
    return model.eval()


def per_sample(model, x, classes, layers, prepend=False):
    """dY[n, c_n]/dF[n] at ``layers``, from forwards of one sample at a time."""
    out = []
    for n in range(len(x)):
        logits, feats = forward_with(model, layers, x[n:n + 1], prepend)
        out.append(torch.autograd.grad(logits[0, classes[n]], feats))
    return [torch.cat([g[i] for g in out]) for i in range(len(layers))]


def test_train_mode_captures_the_coupled_gradient_and_exact_mode_the_per_sample_one():
    model, (x, y) = tiny(), batch()
    ref = freeze_to_batch_statistics(copy.deepcopy(model), x)
    coupled = SharpenFocus(copy.deepcopy(model).train(), INNER, LAST, head=None)
    exact = SharpenFocus(copy.deepcopy(model).train(), INNER, LAST, head=None,
                         per_sample_grads=True)
    gc, ge = coupled._gradients(x, y, False), exact._gradients(x, y, False)
    assert torch.equal(gc.confusers, ge.confusers)
    for cls, (ci, cl), (ei, el) in (
            (y, (gc.inner_target, gc.last_target), (ge.inner_target, ge.last_target)),
            (gc.confusers, (gc.inner_confuser, gc.last_confuser),
             (ge.inner_confuser, ge.last_confuser))):
        ri, rl = per_sample(ref, x, cls, (INNER, LAST))
        torch.testing.assert_close(ei, ri, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(el, rl, rtol=1e-9, atol=1e-12)
        # the last layer feeds GAP + fc only: no sample mixing there, exact in both modes
        torch.testing.assert_close(cl, rl, rtol=1e-9, atol=1e-12)
        # the inner layer's coupled gradient is far from the per-sample one ...
        assert rel(ci, ri) > 0.05, rel(ci, ri)
        # ... it is d(sum_n Y[n, c_n])/dF of the train-mode batch, cross-sample terms included
        m = copy.deepcopy(model).train()
        logits, (fi,) = forward_with(m, (INNER,), x)
        want, = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), fi)
        torch.testing.assert_close(ci, want, rtol=1e-9, atol=1e-12)


def test_eval_mode_both_modes_give_the_per_sample_gradient():
    model, (x, y) = tiny(), batch()
    freeze_to_batch_statistics(model, x)  # any running statistics; eval mode
    ri, rl = per_sample(model, x, y, (INNER, LAST))
    for flag in (False, True):
        g = SharpenFocus(copy.deepcopy(model), INNER, LAST, head=None,
                         per_sample_grads=flag)._gradients(x, y, False)
        torch.testing.assert_close(g.inner_target, ri, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g.last_target, rl, rtol=1e-9, atol=1e-12)


def test_exact_mode_keeps_values_running_statistics_and_classification_gradients():
    """Only the class-score gradient pass changes: logits, BatchNorm running statistics and the
    gradients of the classification loss are those of the default mode."""
    model, (x, y) = tiny(), batch()
    steps, grads, bns = [], [], []
    for flag in (False, True):
        m = copy.deepcopy(model).train()
        step = SharpenFocus(m, INNER, LAST, per_sample_grads=flag)(x, y)
        steps.append(step)
        grads.append(torch.autograd.grad(step.classification_loss, list(m.parameters()),
                                         retain_graph=True))
        bns.append([(b.running_mean, b.running_var, b.num_batches_tracked) for b in norms(m)])
    torch.testing.assert_close(steps[1].logits, steps[0].logits, rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for a, b in zip(*bns):
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    assert abs(steps[1].attention_loss - steps[0].attention_loss) > 1e-6, \
        "the attention loss should see the different gradients"


def eager_exact_step(model, x, y, weight):
    """CE + weight * Sharpen Focus with per-sample (fixed-statistics) inner gradients, by hand:
    forward 1 records every BatchNorm's batch statistics (with their graph); forward 2 reruns the
    model with the inner features replaced by F2 = F * 1 and each BatchNorm computing
    (x - mu) rstd w + b from forward 1's statistics, so dY2/dF2 is the gradient at fixed
    statistics and, built with create_graph, still depends on the statistics' values."""
    stats, dims = {}, (0, 2, 3)

    def pre(m, args):
        a = args[0]
        stats[m] = (a.mean(dims, keepdim=True),
                    torch.rsqrt(a.var(dims, correction=0, keepdim=True) + m.eps))
    hs = [m.register_forward_pre_hook(pre) for m in norms(model)]
    logits, (fi, fl) = forward_with(model, (INNER, LAST), x)
    for h in hs:
        h.remove()
    f2 = fi * 1

    def bn(m, args, out):
        mu, r = stats[m]
        return (args[0] - mu) * r * m.weight.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)
    mods = dict(model.named_modules())
    hs = [m.register_forward_hook(bn) for m in norms(model)]
    hs.append(mods[INNER].register_forward_hook(lambda m, a, o: f2))
    logits2 = model(x)
    for h in hs:
        h.remove()
    masked = logits.detach().clone()
    masked[torch.arange(len(y)), y] = float("-inf")
    conf = masked.argmax(1)

    def grads(cls):
        gi, = torch.autograd.grad(logits2.gather(1, cls[:, None]).sum(), f2, create_graph=True)
        gl, = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), fl, create_graph=True)
        return gi, gl
    (it, lt), (ic, lc) = grads(y), grads(conf)
    attn = reference.sharpen_focus_loss(fi, it, ic, fl, lt, lc)[0]
    return nnf.cross_entropy(logits, y) + weight * attn


def test_exact_mode_second_order_parameter_gradients_match_eager_composition():
    model, (x, y) = tiny(), batch()
    eager = copy.deepcopy(model).train()
    want = eager_exact_step(eager, x, y, 0.7)
    ref = torch.autograd.grad(want, list(eager.parameters()))
    m = copy.deepcopy(model).train()
    step = SharpenFocus(m, INNER, LAST, head=None, per_sample_grads=True, weight=0.7)(x, y)
    torch.testing.assert_close(step.loss, want, rtol=1e-10, atol=0)
    got = torch.autograd.grad(step.loss, list(m.parameters()))
    coupled = SharpenFocus(copy.deepcopy(model).train(), INNER, LAST, head=None, weight=0.7)
    other = torch.autograd.grad(coupled(x, y).loss, list(coupled.model.parameters()))
    for (name, _), a, b, c in zip(m.named_parameters(), got, ref, other):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11, msg=name)
    assert max(rel(a, c) for a, c in zip(got, other)) > 1e-3, "the modes should differ"


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_ggam_beta_per_sample(train):
    """GGAM before BatchNorm layers (at the inner stage): beta from the per-sample gradient
    w.r.t. the module input with per_sample_grads (and in eval mode), the coupled one otherwise."""
    model, (x, y) = tiny(), batch()
    ref_model = copy.deepcopy(model)
    nets = [GGAM(copy.deepcopy(model), INNER, channels=32, reduction=4, target="label",
                 per_sample_grads=flag).double() for flag in (False, True)]
    ref_net = GGAM(ref_model, INNER, channels=32, reduction=4, target="label").double()
    for net in nets:
        net.attention.load_state_dict(ref_net.attention.state_dict())
    if not train:  # the same (arbitrary) running statistics everywhere
        freeze_to_batch_statistics(ref_model, x[:3])
        for net in nets:
            net.model.load_state_dict(ref_model.state_dict())
            net.eval()
    betas = [net(x, y).gradcam_weights for net in nets]
    if train:
        freeze_to_batch_statistics(ref_model, x)  # the statistics the train-mode batch used
    ga, = per_sample(ref_model, x, y, (INNER,), prepend=True)  # A, before the module
    want = ga.mean(dim=(2, 3))
    torch.testing.assert_close(betas[1], want, rtol=1e-9, atol=1e-13)
    if train:
        assert rel(betas[0], want) > 0.05, rel(betas[0], want)
    else:
        torch.testing.assert_close(betas[0], want, rtol=1e-9, atol=1e-13)


def test_exact_mode_float32_channels_last():
    model, (x, y) = tiny(), batch()
    model, x = model.float().to(memory_format=torch.channels_last), x.float()
    ref = freeze_to_batch_statistics(copy.deepcopy(model), x)
    m = copy.deepcopy(model).train()
    g = SharpenFocus(m, INNER, LAST, per_sample_grads=True)._gradients(
        x.contiguous(memory_format=torch.channels_last), y, False)
    ri, = per_sample(ref, x, y, (INNER,))
    torch.testing.assert_close(g.inner_target, ri, rtol=1e-4, atol=1e-6)


def test_fixed_statistics_removed_with_the_tap():
    model = tiny()
    sf = SharpenFocus(model, INNER, LAST, per_sample_grads=True)
    assert all(len(m._forward_hooks) == 1 for m in norms(model))
    sf.remove()
    assert all(len(m._forward_hooks) == 0 for m in norms(model))


def test_exact_mode_under_autocast_bf16():
    """Under bf16 autocast the exact mode still gives the per-sample gradient (to bf16 accuracy:
    the float32 coupled gradient is about 50 % away here, the bf16 exact one about 10 %)."""
    model, (x, y) = tiny(), batch()
    model, x = model.float(), x.float()
    sf = SharpenFocus(copy.deepcopy(model).train(), INNER, LAST, per_sample_grads=True)
    exact = sf._gradients(x, y, False).inner_target
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = sf(x, y)
        low = sf._gradients(x, y, False).inner_target
    step.loss.backward()
    assert low.dtype == torch.bfloat16 and torch.isfinite(step.loss)
    assert rel(low.float(), exact) < 0.2, rel(low.float(), exact)


def test_only_batchnorm_layers_after_the_captured_features_are_recorded():
    """BatchNorm layers that run before the first captured layer keep their own backward (they
    cannot depend on the features); those after it get the fixed-statistics one."""
    model, (x, y) = tiny(), batch()
    sf = SharpenFocus(model.train(), INNER, LAST, per_sample_grads=True)
    seen, bns = {}, norms(model)
    def hook(name):
        return lambda m, a, o: seen.__setitem__(name, type(o.grad_fn).__name__)
    hs = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if m in bns]
    sf(x, y)
    for h in hs:
        h.remove()
    after = {n: v for n, v in seen.items() if n.startswith(LAST)}
    before = {n: v for n, v in seen.items() if not n.startswith(LAST)}
    assert after and all(v == "_FixedStatisticsBackward" for v in after.values()), after
    assert before and all(v != "_FixedStatisticsBackward" for v in before.values()), before
