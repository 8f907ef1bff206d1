"""Bad input gets a ValueError/TypeError that names the argument; backend errors say how to fix."""
import pytest
import torch

import attnfast

F = torch.randn(2, 3, 4, 5)


def sf(*xs, **kw):
    return attnfast.sharpen_focus_loss(*xs, **kw)


LAST = [torch.randn(2, 6, 2, 2)] * 3
BAD = [
    (lambda: attnfast.pixel_attention(F[0], F[0]), ValueError, "features must be 4-D"),
    (lambda: attnfast.pixel_attention(F, F[:, :2]), ValueError, "grads has shape"),
    (lambda: attnfast.pixel_attention(F, F.half()), TypeError, "grads has dtype"),
    (lambda: attnfast.pixel_attention(F, F.meta if hasattr(F, "meta") else F.to("meta")),
     ValueError, "grads is on meta"),
    (lambda: attnfast.pixel_attention(F.long(), F.long()), TypeError, "features must be a floating"),
    (lambda: attnfast.pixel_attention(F.numpy(), F), TypeError, "features must be a torch.Tensor"),
    (lambda: attnfast.channel_weights(F.int()), TypeError, "grads must be a floating"),
    (lambda: attnfast.weighted_attention(F, torch.randn(2, 4)), ValueError, "weights must be N x K"),
    (lambda: attnfast.soft_iou(F[:, 0], F[:, 0], torch.rand(2, 3, 3)), ValueError, "mask has shape"),
    (lambda: attnfast.soft_iou(F[:, 0], F[0, 0]), ValueError, "attn_b must be 3-D"),
    (lambda: attnfast.attention_consistency(F[:, 0], torch.rand(2, 4, 4)), ValueError, "mask has shape"),
    (lambda: attnfast.soft_mask(F[:, 0], sigma=1.5), ValueError, "sigma must be in"),
    (lambda: attnfast.soft_mask(F[:, 0], omega=0), ValueError, "omega must be"),
    (lambda: attnfast.soft_mask(F[:, 0], size=(0, 3)), ValueError, "size must be"),
    (lambda: attnfast.normalize_attention(F[:, 0], eps=-1e-6), ValueError, "eps must be"),
    (lambda: attnfast.soft_iou(F[:, 0], F[:, 0], eps=float("nan")), ValueError, "eps must be"),
    (lambda: sf(F, F, F, *LAST, attention="spatial"), ValueError, "attention must be one of"),
    (lambda: sf(F, F, F, *LAST, reduction="max"), ValueError, "reduction must be"),
    (lambda: sf(F, F, F[:, :, :3], *LAST), ValueError, "inner_grads_confuser has shape"),
    (lambda: sf(F, F, F, LAST[0], LAST[0], torch.randn(2, 5)), ValueError,
     "last_grads_confuser given per channel must be N x K"),
    (lambda: sf(F, F, F, torch.randn(3, 6, 2, 2), *[torch.randn(3, 6, 2, 2)] * 2), ValueError,
     "has N = 2 but last_features has N = 3"),
    (lambda: sf(F, F, F, *[t.double() for t in LAST]), TypeError, "last_features has dtype"),
    (lambda: attnfast.channel_spatial_attention(F, torch.rand(2, 4)), ValueError,
     "channel_weights must be N x C"),
    (lambda: attnfast.ggam_loss(torch.rand(2, 3), torch.rand(2, 4)), ValueError,
     "gradcam_weights has shape"),
    (lambda: attnfast.set_backend("fast"), ValueError, "unknown backend 'fast'"),
]


@pytest.mark.parametrize("fn,exc,msg", BAD, ids=[m for _, _, m in BAD])
def test_bad_input(fn, exc, msg):
    with pytest.raises(exc, match=msg.replace("(", r"\(")):
        fn()


def test_unavailable_backend_says_how_to_get_it():
    with attnfast.use_backend("cuda"), pytest.raises(RuntimeError, match="to get it:.*CUDA"):
        attnfast.pixel_attention(F, F)


def test_use_backend_restores_on_error():
    before = attnfast.get_backend()
    with pytest.raises(RuntimeError), attnfast.use_backend("cuda"):
        attnfast.pixel_attention(F, F)
    assert attnfast.get_backend() == before


def test_float64_only_where_a_backend_takes_it():
    from helpers import require
    require("triton")
    with attnfast.use_backend("triton"), pytest.raises(
            TypeError, match="float64 is accepted on the 'cpu' and 'torch' backends only"):
        attnfast.pixel_attention(F.double(), F.double())


def test_missing_extension_falls_back_loudly():
    """Without the C++ extension "auto" uses the eager reference and warns once, saying how to
    fix it; asking for "cpu" explicitly is an error that says how to get it."""
    import os
    import subprocess
    import sys
    code = """
import warnings, torch, attnfast
assert attnfast.available_backends() == ["torch"], attnfast.available_backends()
x = torch.rand(2, 3, 4, 5)
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    a = attnfast.pixel_attention(x, x)
    attnfast.pixel_attention(x, x)
msgs = [str(w.message) for w in seen if "attnfast" in str(w.message)]
assert len(msgs) == 1 and "disabled by ATTNFAST_NO_EXTENSION" in msgs[0] \\
    and "to fix: build the C++ extension" in msgs[0], msgs
assert torch.equal(a, attnfast.reference.pixel_attention(x, x))
try:
    with attnfast.use_backend("cpu"):
        attnfast.pixel_attention(x, x)
except RuntimeError as e:
    assert "to get it: build the C++ extension" in str(e), e
else:
    raise AssertionError("no error for a missing cpu backend")
"""
    env = dict(os.environ, ATTNFAST_NO_EXTENSION="1", TRITON_INTERPRET="0")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
