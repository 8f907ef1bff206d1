"""GGAM: channel_spatial_attention (Eq. 1-3) and the symmetric-KL ggam_loss (Eq. 5)."""
import pytest
import torch

import attnfast
from conftest import BACKENDS, DEVICE, big, cases, check, require
from shapes import BIG, BIG_SMALL, FORMATS


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backend,dtype,shape", cases(BIG, BIG_SMALL))
def test_channel_spatial_attention(backend, dtype, shape, fmt):
    a = big(shape, dtype, fmt).abs()  # post-ReLU features, as in a CNN
    s = torch.rand(shape[:2], device=DEVICE)  # SE sigmoid output
    d, t = check(attnfast.channel_spatial_attention, [a, s], backend)
    assert d.dtype == dtype and t.shape == (shape[0], *shape[2:])
    if fmt != "strided":
        assert d.stride() == a.stride(), "D must come back in the input's layout"


@pytest.mark.parametrize("backend,dtype,shape", cases([(1, 1), (5, 3), (64, 273), (8, 2048)],
                                                      [(1, 1), (3, 17)]))
def test_ggam_loss(backend, dtype, shape):
    s = torch.rand(shape, device=DEVICE).to(dtype) * 0.98 + 0.01
    beta = torch.randn(shape, device=DEVICE).to(dtype)
    (loss,) = check(attnfast.ggam_loss, [s, beta], backend)
    assert loss.shape == shape[:1]


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_ggam_loss_zero_at_match_and_clamped(backend):
    """L = 0 when S equals the normalized sigmoid(beta); S = 0 entries are clamped (finite)."""
    require(backend)
    beta = torch.randn(4, 7, device=DEVICE)
    q = torch.sigmoid(beta) / torch.sigmoid(beta).sum(1, keepdim=True)
    s = torch.zeros(4, 7, device=DEVICE).requires_grad_()
    with attnfast.use_backend(backend):
        torch.testing.assert_close(attnfast.ggam_loss(q, beta), torch.zeros(4, device=DEVICE),
                                   atol=1e-6, rtol=0)
        loss = attnfast.ggam_loss(s, beta).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
