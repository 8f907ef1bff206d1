"""float16 and bfloat16 on the Triton backend, also under the interpreter (issue #10).

The interpreter stores bfloat16 as raw uint16 bits (numpy has no bfloat16): a kernel that
compared or multiplied a loaded bfloat16 value without converting it first computed on the bits
(channel_weights' backward saw every negative G as positive and ignored its ReLU gate). On a GPU
Triton promotes the comparison to float32, so the kernel was right there; the kernels now convert
every loaded half value to float32 before using it, and these tests run every op that takes big
(half-precision) tensors, forward and backward, in both half types, against the float64
reference with conftest's element-wise tolerance. The per-sample map ops get float32 maps (the
ops layer converts maps to the accumulation dtype), so they need no half variant here.
"""
import pytest
import torch

import attnfast
from helpers import BACKENDS, big, check, kink_free, pre_activation

SHAPE = (2, 5, 3, 4)
HALF = [torch.float16, torch.bfloat16]
pytestmark = pytest.mark.skipif("triton" not in BACKENDS, reason="triton is not tested here")


def _pair(dtype, kind):
    return kink_free(lambda: (big(SHAPE, dtype, "channels_last"), big(SHAPE, dtype)),
                     lambda f, g: pre_activation(kind, f, g))


@pytest.mark.parametrize("positive", [True, False])
@pytest.mark.parametrize("dtype", HALF)
def test_channel_weights(dtype, positive):
    g = big(SHAPE, dtype)
    g.view(-1)[::3] = -g.view(-1)[::3].abs()   # negative entries: the ReLU gate must act
    check(lambda x: attnfast.channel_weights(x, positive=positive), [g], "triton")


@pytest.mark.parametrize("dtype", HALF)
def test_pixel_attention(dtype):
    check(attnfast.pixel_attention, list(_pair(dtype, "pixel")), "triton")


@pytest.mark.parametrize("positive", [True, False])
@pytest.mark.parametrize("dtype", HALF)
def test_channel_attention(dtype, positive):
    f, g = _pair(dtype, "channel" if positive else "gradcam")
    check(lambda a, b: attnfast.channel_attention(a, b, positive=positive), [f, g], "triton")


@pytest.mark.parametrize("dtype", HALF)
def test_channel_spatial_attention(dtype):
    a = big(SHAPE, dtype).abs()
    s = torch.softmax(torch.randn(SHAPE[:2]), 1).to(a.device)
    check(attnfast.channel_spatial_attention, [a, s], "triton")


@pytest.mark.parametrize("kind", ["pixel", "channel"])
@pytest.mark.parametrize("dtype", HALF)
def test_sharpen_focus_loss(dtype, kind):
    inner = _pair(dtype, kind)
    last = [big((2, 5, 2, 3), dtype) for _ in range(2)]
    xs = [inner[0], inner[1], -inner[1], last[0], last[1], -last[1]]
    check(lambda *t: attnfast.sharpen_focus_loss(*t, attention=kind, reduction="none"), xs,
          "triton", out_tol=2e-3 if dtype == torch.float16 else 1.6e-2)
