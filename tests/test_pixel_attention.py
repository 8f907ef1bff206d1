"""pixel_attention (Sharpen Focus Eq. 5) vs the reference, every backend, dtype and layout."""
import pytest
import torch

import attnfast
from helpers import big, backend_params, check, kink_free, pre_activation
from shapes import BIG, BIG_SMALL, FORMATS


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backend,dtype,shape", backend_params(BIG, BIG_SMALL))
def test_pixel_attention(backend, dtype, shape, fmt):
    f, g = kink_free(lambda: (big(shape, dtype, fmt), big(shape, dtype, "nchw")),  # mixed layouts
                     lambda f, g: pre_activation("pixel", f, g))
    (a,) = check(attnfast.pixel_attention, [f, g], backend)
    assert a.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_gradients_keep_layout(backend):
    """Big-tensor gradients come back in the input's memory format (no hidden copy to NCHW)."""
    from helpers import BACKENDS, require
    if backend not in BACKENDS:
        pytest.skip(f"{backend} is not tested on this device")
    require(backend)
    f = big((2, 8, 5, 6), torch.float32, "channels_last").requires_grad_()
    g = big((2, 8, 5, 6), torch.float32, "nchw").requires_grad_()
    with attnfast.use_backend(backend):
        attnfast.pixel_attention(f, g).sum().backward()
    assert f.grad.is_contiguous(memory_format=torch.channels_last)
    assert g.grad.is_contiguous()
