"""Registration: every backend's namespace implements the kernel interface (attnfast._schema),
the backward contract is the same on every backend, opcheck (schema, fake kernels, autograd
registration), torch.compile(fullgraph=True), autocast, the private-API shims of attnfast._compat."""
import inspect

import pytest
import torch

import attnfast
from attnfast import _compat
from attnfast._schema import OPS, SCHEMAS
from attnfast.backend import namespace
from helpers import BACKENDS, DEVICE, big, require
from op_samples import check_backward_contract, sample

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
        want = _compat.parse_schema(f"{ns}::{name}{schema}")
        assert [(a.name, str(a.type)) for a in got.arguments] == \
            [(a.name, str(a.type)) for a in want.arguments], f"{ns}::{name} arguments"
        assert [str(r.type) for r in got.returns] == [str(r.type) for r in want.returns], \
            f"{ns}::{name} returns"


def test_torch_backend_has_the_interface():
    """The eager adapter has every op and backward of the interface, arguments named as there."""
    ns = namespace("torch")
    for name, schema in SCHEMAS.items():
        want = [a.name for a in _compat.parse_schema(f"x::{name}{schema}").arguments]
        params = inspect.signature(getattr(ns, name)).parameters
        if any(p.kind == p.VAR_POSITIONAL for p in params.values()):  # generated backward
            assert name.endswith("_backward"), name
            continue
        assert list(params)[:len(want)] == want, f"torch backend {name}"
        assert all(p.default is not p.empty for p in list(params.values())[len(want):]), name


def test_op_records_agree_with_their_schemas():
    """Tensor inputs and outputs as the parsed schema sees them; saved outputs exist."""
    for name, op in OPS.items():
        fwd = _compat.parse_schema(f"x::{name}{op.schema}")
        assert [a.name for a in fwd.arguments if _compat.is_tensor_arg(a)] == op.tensor_inputs
        assert len(fwd.returns) == len(op.outputs)
        bwd = _compat.parse_schema(f"x::{name}_backward{op.backward_schema}")
        assert len(bwd.returns) == len(op.differentiable)
        assert set(op.saved) <= set(op.outputs)


def test_compat_shims():
    require("cpu")
    assert _compat.has_kernel("attnfast::pixel_attention", "CPU")
    assert not _compat.has_kernel("attnfast::pixel_attention", "Lazy")
    assert not _compat.is_fake(torch.zeros(1))
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        assert _compat.is_fake(torch.zeros(1))
    from torch._library import triton as torch_triton
    before = torch_triton.infer_schema

    def f(x: torch.Tensor, n: int) -> torch.Tensor:
        return x
    with _compat.int_schema_for_triton_op():
        assert torch_triton.infer_schema(f, mutates_args=()) == "(Tensor x, int n) -> Tensor"
    assert torch_triton.infer_schema is before
    import torch._functorch.config as functorch_config
    with _compat.donated_buffer_disabled():
        assert functorch_config.donated_buffer is False


def _samples():
    """op name -> forward arguments (tests/op_samples.py, the one source)."""
    return {name: sample(name, device=DEVICE) for name in OPS}


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, name):
    require(backend)
    args = _samples()[name]
    diff = OPS[name].differentiable
    args = tuple(x.requires_grad_() if isinstance(x, torch.Tensor) and n in diff else x
                 for x, (_, n) in zip(args, OPS[name].arguments))
    op = getattr(getattr(torch.ops, NAMESPACES[backend]), name)
    utils = "ALL"
    if backend == "triton" and DEVICE == "cpu":
        # wrap_triton cannot launch the interpreter on traced (AOTDispatcher) tensors, so the
        # aot_dispatch checks run for Triton on a GPU only
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(op, args, test_utils=utils)


@pytest.mark.parametrize("fmt", ["channels_last", "mixed"])
@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_contract(backend, name, fmt):
    """``<op>_backward`` of every backend gives what the eager backend's gives
    (op_samples.check_backward_contract)."""
    require(backend)
    check_backward_contract(backend, name, fmt, device=DEVICE)


def test_torch_backend_is_autograd_of_the_reference():
    """The eager backend's forward is the reference itself: its backward is plain autograd
    (no custom op in the graph)."""
    f, g = torch.randn(2, 3, 4, 5, requires_grad=True), torch.randn(2, 3, 4, 5)
    with attnfast.use_backend("torch"):
        a = attnfast.pixel_attention(f, g)
    assert type(a.grad_fn).__name__ == "ReluBackward0"


def _step(f, g, gc, fl, wl, wc, s, beta):
    out = attnfast.sharpen_focus_loss(f, g, gc, fl, wl, wc, attention="channel")
    d, t = attnfast.channel_spatial_attention(fl, s)
    return (out.loss + attnfast.ggam_loss(s, beta).mean() + d.float().mean() + t.mean()
            + attnfast.pixel_attention(f, g).mean())


def test_compile_fullgraph_matches_eager():
    require("cpu")
    torch.compiler.reset()
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
    from attnfast._layout import big as to_kernel
    x = big((2, 8, 5, 6), torch.float32, "channels_last")
    assert to_kernel(x) is x and to_kernel(x.contiguous()) is not None
    y = big((2, 8, 5, 6), torch.float32, "strided")
    assert to_kernel(y) is not y and to_kernel(y).is_contiguous()


def test_backend_api():
    assert "torch" in attnfast.available_backends()
    with attnfast.use_backend("torch"):
        assert attnfast.get_backend() == "torch"
    assert attnfast.get_backend() == "auto"


def test_auto_picks_the_compiled_backend():
    """"auto" means the C++ CPU kernels for CPU tensors here (CUDA, then Triton, on a GPU)."""
    from attnfast.backend import resolve
    require(BACKENDS[0])
    assert resolve(torch.device(DEVICE)) == BACKENDS[0]
