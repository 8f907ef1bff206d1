"""N = 0, non-finite input, float64 gradcheck of every op on the CPU backend."""
import pytest
import torch

import attnfast
from helpers import BACKENDS, DEVICE, require
from op_samples import call_every_op

B = BACKENDS + ["torch"]


def _all_ops(n, dtype=torch.float32, fill=None):
    return call_every_op(n, dtype, fill, device=DEVICE)


@pytest.mark.parametrize("backend", B)
def test_empty_batch(backend):
    require(backend)
    with attnfast.use_backend(backend):
        outs, ins = _all_ops(0)
        assert all(o.shape[0] == 0 for o in outs)
        sum(o.sum() for o in outs).backward()
    assert all(x.grad is None or x.grad.shape == x.shape for x in ins)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("backend", B)
def test_non_finite_input_does_not_crash(backend, value):
    require(backend)
    with attnfast.use_backend(backend):
        outs, ins = _all_ops(2, fill=value)
        sum(o.float().sum() for o in outs).backward()
    assert all(o.shape[0] == 2 for o in outs)


@pytest.mark.parametrize("backend", [b for b in B if b in ("cpu", "torch")])
def test_finite_input_gives_finite_output(backend):
    require(backend)
    with attnfast.use_backend(backend):
        outs, ins = _all_ops(3, fill=0.0)  # zero maps, zero weights: the division-by-eps cases
        sum(o.sum() for o in outs).backward()
    assert all(torch.isfinite(o).all() for o in outs)
    assert all(torch.isfinite(x.grad).all() for x in ins if x.grad is not None)


GRADCHECK = {
    "channel_weights": (lambda g: attnfast.channel_weights(g, positive=True), [(2, 3, 4, 5)]),
    "gradcam_weights": (lambda g: attnfast.channel_weights(g, positive=False), [(2, 3, 4, 5)]),
    "weighted_attention": (attnfast.weighted_attention, [(2, 3, 4, 5), (2, 3)]),
    "pixel_attention": (attnfast.pixel_attention, [(2, 3, 4, 5), (2, 3, 4, 5)]),
    "normalize_attention": (attnfast.normalize_attention, [(2, 4, 5)]),
    "soft_mask": (lambda a: attnfast.soft_mask(a.abs(), omega=10.0, size=(7, 3)), [(2, 4, 5)]),
    "soft_iou": (lambda a, b, m: attnfast.soft_iou(a.abs(), b.abs(), m), [(2, 4, 5)] * 3),
    "attention_consistency": (lambda a, m: attnfast.attention_consistency(a.abs(), m),
                              [(2, 4, 5)] * 2),
    "sharpen_focus_loss": (lambda *t: attnfast.sharpen_focus_loss(
        *t, omega=10.0, mask_grad=True, reduction="none")[1:],
        [(2, 3, 6, 6), (2, 3, 6, 6), (2, 3, 6, 6), (2, 4, 3, 3), (2, 4, 3, 3), (2, 4)]),
    "sharpen_focus_loss_channel": (lambda *t: attnfast.sharpen_focus_loss(
        *t, attention="channel", omega=10.0, mask_grad=True, reduction="none")[1:],
        [(2, 3, 6, 6), (2, 3, 6, 6), (2, 3, 6, 6), (2, 4, 3, 3), (2, 4, 3, 3), (2, 4, 3, 3)]),
    "channel_spatial_attention": (lambda a, s: attnfast.channel_spatial_attention(a.abs(), s.abs()),
                                  [(2, 3, 4, 5), (2, 3)]),
    "ggam_loss": (lambda s, b: attnfast.ggam_loss(s.abs() + 0.01, b), [(2, 5), (2, 5)]),
}


@pytest.mark.parametrize("name", list(GRADCHECK))
def test_gradcheck_float64(name):
    """torch.autograd.gradcheck of the hand-written backward of the C++ CPU kernels."""
    require("cpu")
    fn, shapes = GRADCHECK[name]
    xs = [torch.randn(s, dtype=torch.float64).requires_grad_() for s in shapes]
    with attnfast.use_backend("cpu"):
        assert torch.autograd.gradcheck(fn, xs, eps=1e-6, atol=1e-5)
