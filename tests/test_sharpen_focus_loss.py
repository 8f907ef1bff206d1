"""The fused sharpen_focus_loss vs the reference composition: all kinds, mask_grad, normalize,
inner/last resolution pairs, N x K last-layer gradients, every dtype and layout."""
import pytest
import torch

import attnfast
from attnfast._schema import ATTENTION_KINDS, KIND_CODES, OPS
from attnfast.backend import namespace
from attnfast.reference import EPS
from helpers import BACKENDS, DEVICE, big, check, dtypes, kink_free, pre_activation, require, use_small_shapes
from op_samples import check_mask_grad_contract, check_per_channel_equals_broadcast, sf_inputs
from shapes import PAIRS, PAIRS_SMALL

KINDS = list(ATTENTION_KINDS)


def _cases():
    out = []
    for b in BACKENDS:
        n, (ki, kl), pairs = (2, (5, 3), PAIRS_SMALL) if use_small_shapes(b) else (5, (32, 64), PAIRS)
        for dt in dtypes(b):
            for pair in pairs:
                out.append(pytest.param(b, dt, n, ki, kl, pair, id=f"{b}-{str(dt)[6:]}-{pair}"))
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend,dtype,n,ki,kl,pair", _cases())
def test_sharpen_focus_loss(backend, dtype, n, ki, kl, pair, kind):
    xs = sf_inputs(dtype, n, ki, kl, *pair, kind=kind)
    out = check(lambda *t: attnfast.sharpen_focus_loss(*t, attention=kind), xs, backend, out_tol=1e-4)
    loss, inner, last, cons = out
    torch.testing.assert_close(loss, (inner + last + cons).mean())


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("mask_grad", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_options(backend, kind, per_channel, mask_grad, normalize):
    dt, n, ki, kl, pair = ((torch.float32, 2, 5, 3, PAIRS_SMALL[1]) if use_small_shapes(backend)
                           else (dtypes(backend)[1], 4, 16, 24, PAIRS[1]))
    xs = sf_inputs(dt, n, ki, kl, *pair, fmt="channels_last", per_channel=per_channel, kind=kind)
    check(lambda *t: attnfast.sharpen_focus_loss(*t, attention=kind, mask_grad=mask_grad,
                                                 normalize=normalize, reduction="sum",
                                                 sigma=0.4, omega=30.0, alpha=0.5),
          xs, backend, out_tol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
@pytest.mark.parametrize("kind", KINDS)
def test_per_channel_grads_equal_broadcast(backend, kind):
    require(backend)
    check_per_channel_equals_broadcast(backend, kind)


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_mask_grad_contract(backend):
    require(backend)
    check_mask_grad_contract(backend)


def test_reductions():
    xs = sf_inputs(torch.float32, 3, 4, 6, *PAIRS_SMALL[0])
    outs = {r: attnfast.sharpen_focus_loss(*xs, reduction=r) for r in ("none", "sum", "mean")}
    torch.testing.assert_close(outs["none"].loss.sum(), outs["sum"].loss)
    torch.testing.assert_close(outs["none"].loss.mean(), outs["mean"].loss)
    assert outs["none"].loss.shape == (3,)
    assert all(p.dtype == torch.float32 and p.shape == (3,) for p in outs["mean"][1:])


def _public_maps_and_weights(f, grads, kind):
    """Per class (target, confuser) the raw map of the public map op and its channel weights
    (empty for the pixel kind); N x K grads stand for the same value at every pixel."""
    maps, weights = [], []
    for g in grads:
        g = g[:, :, None, None].expand(-1, -1, *f.shape[2:]) if g.dim() == 2 else g
        if kind == "pixel":
            maps.append(attnfast.pixel_attention(f, g))
            weights.append(f.new_empty((f.shape[0], 0)))
        else:
            maps.append(attnfast.channel_attention(f, g, positive=kind == "channel"))
            weights.append(attnfast.channel_weights(g, positive=kind == "channel"))
    return torch.stack(maps), torch.stack(weights)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_hidden_outputs_are_the_maps(backend, kind, per_channel):
    """The forward's hidden outputs (what its backward takes again, attnfast._schema) are the
    raw maps of the public map ops, target [0] and confuser [1], and the channel weights of the
    channel kinds; they carry no gradient, and the public function returns only its four
    fields."""
    require(backend)
    n, ki, kl, (hi, wi), (hl, wl) = 3, 4, 6, *PAIRS_SMALL[0]
    xs = sf_inputs(torch.float32, n, ki, kl, (hi, wi), (hl, wl), fmt="channels_last",
                 per_channel=per_channel, kind=kind)
    xs = [x.requires_grad_() for x in xs]
    outs = namespace(backend).sharpen_focus_loss(*xs, KIND_CODES[kind], 0.55, 100.0, 1.0, True,
                                                 False, EPS)
    op = OPS["sharpen_focus_loss"]
    assert len(outs) == len(op.outputs) and len(op.visible) == 3
    hidden = dict(zip(op.hidden, outs[3:]))
    with attnfast.use_backend(backend), torch.no_grad():
        want = [_public_maps_and_weights(xs[0], xs[1:3], kind),
                _public_maps_and_weights(xs[3], xs[4:6], kind)]
    for layer, (maps, weights) in zip(("inner", "last"), want):
        got_maps, got_weights = hidden[f"{layer}_maps"], hidden[f"{layer}_weights"]
        assert got_maps.shape == maps.shape and got_weights.shape == weights.shape, layer
        assert got_maps.dtype == got_weights.dtype == torch.float32, layer
        torch.testing.assert_close(got_maps, maps, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_weights, weights, rtol=1e-5, atol=1e-6)
    assert not any(t.requires_grad for t in outs[3:]), "hidden outputs must carry no gradient"
    assert all(t.requires_grad for t in outs[:3])
    with attnfast.use_backend(backend):
        public = attnfast.sharpen_focus_loss(*xs, attention=kind)
    assert type(public) is attnfast.SharpenFocusOutput and len(public) == 4
    for got, want_part in zip(public[1:], outs[:3]):
        torch.testing.assert_close(got, want_part, rtol=0, atol=0)
