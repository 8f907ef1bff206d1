"""channel_weights and the CAM-form weighted_attention / channel_attention vs the reference."""
import pytest
import torch

import attnfast
from helpers import DEVICE, big, backend_params, check, kink_free, pre_activation
from shapes import BIG, BIG_SMALL, FORMATS


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("positive", [True, False])
@pytest.mark.parametrize("backend,dtype,shape", backend_params(BIG, BIG_SMALL))
def test_channel_weights(backend, dtype, shape, fmt, positive):
    g = big(shape, dtype, fmt)
    (w,) = check(lambda g: attnfast.channel_weights(g, positive=positive), [g], backend)
    assert w.shape == shape[:2] and w.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backend,dtype,shape", backend_params(BIG, BIG_SMALL))
def test_weighted_attention(backend, dtype, shape, fmt):
    f, w = kink_free(lambda: (big(shape, dtype, fmt), torch.randn(shape[:2], device=DEVICE)),
                     lambda f, w: torch.einsum("nkhw,nk->nhw", f, w))
    check(attnfast.weighted_attention, [f, w], backend)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("positive", [True, False])
@pytest.mark.parametrize("backend,dtype,shape", backend_params(BIG, BIG_SMALL))
def test_channel_attention(backend, dtype, shape, fmt, positive):
    kind = "channel" if positive else "gradcam"
    f, g = kink_free(lambda: (big(shape, dtype, fmt), big(shape, dtype, fmt)),
                     lambda f, g: pre_activation(kind, f, g))
    (a,) = check(lambda f, g: attnfast.channel_attention(f, g, positive=positive), [f, g], backend)
    assert a.shape == (shape[0], *shape[2:])
