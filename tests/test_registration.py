"""Registration: schemas of both compiled namespaces match the kernel interface, opcheck
(schema, fake kernels, autograd registration), torch.compile(fullgraph=True), autocast."""
import pytest
import torch

import attnfast
from attnfast._schema import SCHEMAS
from conftest import BACKENDS, DEVICE, big, require

NAMESPACES = {"cpu": "attnfast", "cuda": "attnfast", "triton": "attnfast_triton"}


def test_cpu_extension_is_built():
    """A missing C++ build fails loudly here (with the compiler's reason), never skips."""
    from attnfast import _build
    assert "cpu" in attnfast.available_backends(), f"C++ extension failed: {_build.error()}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_schemas_match_interface(backend):
    require(backend)
    ns = NAMESPACES[backend]
    for name, schema in SCHEMAS.items():
        got = getattr(getattr(torch.ops, ns), name).default._schema
        want = torch._C.parse_schema(f"{ns}::{name}{schema}")
        assert [(a.name, str(a.type)) for a in got.arguments] == \
            [(a.name, str(a.type)) for a in want.arguments], f"{ns}::{name} arguments"
        assert [str(r.type) for r in got.returns] == [str(r.type) for r in want.returns], \
            f"{ns}::{name} returns"


def _samples():
    f, g, g2 = (torch.randn(2, 3, 4, 5, device=DEVICE) for _ in range(3))
    fl, gl = torch.randn(2, 4, 2, 3, device=DEVICE), torch.randn(2, 4, 2, 3, device=DEVICE)
    a, b, m = (torch.rand(2, 4, 5, device=DEVICE) for _ in range(3))
    w, s = torch.randn(2, 3, device=DEVICE), torch.rand(2, 3, device=DEVICE)
    return {
        "channel_weights": (g, True), "weighted_attention": (f, w), "pixel_attention": (f, g),
        "normalize_attention": (a, 1e-6), "soft_mask": (a, 0.55, 100.0, 7, 3, 1e-6),
        "soft_iou": (a, b, m, 1e-6), "attention_consistency": (a, m, 1.0, 1e-6),
        "sharpen_focus_loss": (f, g, g2, fl, gl, torch.randn(2, 4, device=DEVICE), 1, 0.55,
                               100.0, 1.0, True, True, 1e-6),
        "channel_spatial_attention": (f.abs(), s, 1e-6), "ggam_loss": (s, w, 1e-6),
    }


@pytest.mark.parametrize("name", list(_samples()))
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, name):
    require(backend)
    args = _samples()[name]
    args = tuple(x.requires_grad_() if isinstance(x, torch.Tensor) else x for x in args)
    op = getattr(getattr(torch.ops, NAMESPACES[backend]), name)
    utils = "ALL"
    if backend == "triton" and DEVICE == "cpu":
        # wrap_triton cannot launch the interpreter on traced (AOTDispatcher) tensors, so the
        # aot_dispatch checks run for Triton on a GPU only
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(op, args, test_utils=utils)


def _step(f, g, gc, fl, wl, wc, s, beta):
    out = attnfast.sharpen_focus_loss(f, g, gc, fl, wl, wc, attention="channel")
    d, t = attnfast.channel_spatial_attention(fl, s)
    return (out.loss + attnfast.ggam_loss(s, beta).mean() + d.float().mean() + t.mean()
            + attnfast.pixel_attention(f, g).mean())


def test_compile_fullgraph_matches_eager():
    require("cpu")
    torch._dynamo.reset()
    xs = [torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6),
          torch.randn(2, 4, 3, 3), torch.randn(2, 4), torch.randn(2, 4),
          torch.rand(2, 4), torch.randn(2, 4)]
    xs = [x.requires_grad_() for x in xs]
    with attnfast.use_backend("cpu"):
        eager = _step(*xs)
        ge = torch.autograd.grad(eager, xs)
        compiled = torch.compile(_step, fullgraph=True, backend="inductor")(*xs)
        gc = torch.autograd.grad(compiled, xs)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast(backend):
    """Under autocast the features/gradients arrive in low precision; the ops take them as is."""
    require(backend)
    if backend == "triton" and DEVICE == "cpu":
        pytest.skip("the Triton interpreter cannot run bfloat16")
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).to(DEVICE)
    x = torch.randn(2, 3, 8, 8, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16), attnfast.use_backend(backend):
        f = conv(x)
        g = torch.autograd.grad(f.float().square().sum(), f, create_graph=True)[0]
        a = attnfast.pixel_attention(f, g)
        loss = attnfast.soft_iou(a, attnfast.channel_attention(f, g)).mean()
    assert f.dtype == torch.bfloat16 and a.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all()


def test_layout_is_kept_without_copy():
    from attnfast.ops import _big
    x = big((2, 8, 5, 6), torch.float32, "channels_last")
    assert _big(x) is x and _big(x.contiguous()) is not None
    y = big((2, 8, 5, 6), torch.float32, "strided")
    assert _big(y) is not y and _big(y).is_contiguous()


def test_backend_api():
    assert "torch" in attnfast.available_backends()
    with attnfast.use_backend("torch"):
        assert attnfast.get_backend() == "torch"
    assert attnfast.get_backend() == "auto"
