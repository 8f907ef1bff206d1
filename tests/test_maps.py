"""The map ops: normalize_attention, soft_mask (Eq. 7), soft_iou (Eq. 6), attention_consistency
(Eq. 8) vs the reference, with their subgradient rules (ties, all-zero maps)."""
import pytest
import torch

import attnfast
from helpers import DEVICE, BACKENDS, backend_params, check, require
from shapes import MAPS, MAPS_SMALL



def amap(shape, dtype):
    return torch.relu(torch.randn(shape, device=DEVICE)).to(dtype)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("backend,dtype,shape", backend_params(MAPS, MAPS_SMALL))
def test_normalize_attention(backend, dtype, shape, signed):
    a = torch.randn(shape, device=DEVICE).to(dtype) if signed else amap(shape, dtype)
    (y,) = check(attnfast.normalize_attention, [a], backend)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("size", [None, (14, 14), (4, 9)])
@pytest.mark.parametrize("backend,dtype,shape", backend_params(MAPS, MAPS_SMALL))
def test_soft_mask(backend, dtype, shape, size):
    a = amap(shape, dtype)
    (m,) = check(lambda a: attnfast.soft_mask(a, sigma=0.55, omega=100.0, size=size), [a],
                 backend, out_tol=1e-4)
    assert m.shape == (shape[0], *(size or shape[1:]))


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("backend,dtype,shape", backend_params(MAPS, MAPS_SMALL))
def test_soft_iou(backend, dtype, shape, masked):
    a, b = amap(shape, dtype), amap(shape, dtype)
    m = torch.rand(shape, device=DEVICE)
    if masked:
        check(lambda a, b, m: attnfast.soft_iou(a, b, m), [a, b, m], backend)
    else:
        check(attnfast.soft_iou, [a, b], backend)


@pytest.mark.parametrize("backend,dtype,shape", backend_params(MAPS, MAPS_SMALL))
def test_attention_consistency(backend, dtype, shape):
    a, m = amap(shape, dtype), torch.rand(shape, device=DEVICE)
    check(lambda a, m: attnfast.attention_consistency(a, m, alpha=0.7), [a, m], backend)


def _grads(backend, fn, *xs):
    require(backend)
    xs = [x.clone().requires_grad_() for x in xs]
    with attnfast.use_backend(backend):
        fn(*xs).sum().backward()
    return [x.grad for x in xs]


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_min_ties_split_half(backend):
    """min(a, b) at a == b sends half the gradient to each side (docs/SPEC.md decision 6)."""
    a = torch.tensor([[[1.0, 2.0], [3.0, 0.5]]], device=DEVICE)
    b = torch.tensor([[[1.0, 1.0], [4.0, 0.5]]], device=DEVICE)
    ga, gb = _grads(backend, lambda a, b: attnfast.soft_iou(a, b), a, b)
    den = (a + b).sum() + 1e-6
    iou = 2 * torch.minimum(a, b).sum() / den
    share = torch.tensor([[[0.5, 0.0], [1.0, 0.5]]], device=DEVICE)
    torch.testing.assert_close(ga, 2 * share / den - iou / den)
    torch.testing.assert_close(gb, 2 * (1 - share) / den - iou / den)


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_max_ties_split_evenly(backend):
    """Ties at the max share the max's gradient evenly, as torch.amax (docs/SPEC.md decision 6)."""
    a = torch.tensor([[[2.0, 1.0], [2.0, 0.0]]], device=DEVICE)
    (g,) = _grads(backend, attnfast.normalize_attention, a)
    d = 2.0 + 1e-6
    through_max = -(a.sum() / d**2) / 2  # d/dm of sum_p a_p / (m + eps), split over 2 ties
    expected = torch.full_like(a, 1 / d)
    expected[0, 0, 0] += through_max
    expected[0, 1, 0] += through_max
    torch.testing.assert_close(g, expected)


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_all_zero_maps(backend):
    """An all-zero map stays zero, nothing is NaN or Inf, forward or backward (decision 7)."""
    z = torch.zeros(3, 5, 4, device=DEVICE)
    ga, gb = _grads(backend, lambda a, b: attnfast.soft_iou(attnfast.normalize_attention(a),
                                                             attnfast.normalize_attention(b)), z, z)
    require(backend)
    with attnfast.use_backend(backend):
        assert (attnfast.normalize_attention(z) == 0).all()
        m = attnfast.soft_mask(z)
        c = attnfast.attention_consistency(z, m)
    assert torch.isfinite(m).all() and torch.isfinite(c).all()
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
