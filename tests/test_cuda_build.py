"""The CUDA build of the extension, checked without a GPU (CI lane 2: .ci/cuda_lane.sh,
docs/BUILDING_CUDA.md).

With the CUDA build of torch and attnfast compiled with nvcc, the library loads here although no
GPU is present; then:

* every op of the kernel interface (``attnfast._schema.SCHEMAS``, forwards and backwards) has a
  CUDA kernel, a CPU kernel and a Meta (fake) kernel, every forward an autograd rule;
* the fake kernels describe what the real kernels return: for CUDA-device FakeTensors (NCHW and
  channels_last; float32, float16, bfloat16) each output has the device of the inputs and the
  shape, strides and dtype of the CPU kernel's real output for the same inputs;
* ``torch.compile(fullgraph=True)`` traces a function calling every op on fake CUDA tensors:
  the graph holds each ``attnfast::`` op, and ``aot_eager`` traces it through the fake kernels;
* the extension reports the architectures nvcc compiled it for (``_build.cuda_arch_list``),
  equal to ``ATTNFAST_CUDA_ARCHS`` (``TORCH_CUDA_ARCH_LIST`` syntax) when that is set.

Each test skips, saying why, when torch is a CPU build or the extension has no CUDA kernels;
``cuda-build`` in ``ATTNFAST_REQUIRE`` (set by the CI lane) turns those skips into failures.
"""
import os

import pytest
import torch

import attnfast
from attnfast import _build, _compat
from attnfast._schema import FORWARD_OPS, SCHEMAS
from op_samples import backward_args, op_sample_calls

REQUIRED = "cuda-build" in os.environ.get("ATTNFAST_REQUIRE", "").split(",")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["nchw", "channels_last"]


def _why_not():
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build (the CUDA build of torch is needed)"
    if not _build.load():
        return f"the extension did not load: {_build.error()}"
    if not _build.has_cuda_kernels():
        return "the extension was built without CUDA kernels (no nvcc / CUDA_HOME at build time)"
    return None


@pytest.fixture(autouse=True)
def cuda_build():
    why = _why_not()
    if why is not None:
        (pytest.fail if REQUIRED else pytest.skip)(why)


def test_every_op_has_cuda_cpu_and_fake_kernels():
    missing = [f"attnfast::{name} ({key})" for name in SCHEMAS for key in ("CUDA", "CPU", "Meta")
               if not _compat.has_kernel(f"attnfast::{name}", key)]
    missing += [f"attnfast::{name} (Autograd)" for name in FORWARD_OPS
                if not _compat.has_kernel(f"attnfast::{name}", "Autograd")]
    assert not missing, "no kernel for: " + ", ".join(missing)


def _fake_cuda(x):
    """A CUDA FakeTensor like ``x`` (same shape, strides, dtype); anything else as it is."""
    if not isinstance(x, torch.Tensor):
        return x
    return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="cuda")


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _meta(t):
    return tuple(t.shape), t.stride(), t.dtype


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fake_kernels_match_the_real_ones_on_cuda_tensors(dtype, layout):
    ops = torch.ops.attnfast
    checked, wrong = set(), []
    for name, args in op_sample_calls(dtype, layout):
        real = getattr(ops, name)(*args)
        bargs = backward_args(name, args, real)
        pairs = [(name, args, real), (f"{name}_backward", bargs,
                                      getattr(ops, f"{name}_backward")(*bargs))]
        for op_name, op_args, want in pairs:
            with _compat.fake_tensor_mode():
                got = getattr(ops, op_name)(*[_fake_cuda(x) for x in op_args])
            checked.add(op_name)
            for i, (g, w) in enumerate(zip(_tuple(got), _tuple(want))):
                if g.device.type != "cuda" or not _compat.is_fake(g) or _meta(g) != _meta(w):
                    wrong.append(f"{op_name} output {i}: fake {g.device} {_meta(g)}, "
                                 f"real {_meta(w)}")
            assert len(_tuple(got)) == len(_tuple(want)), op_name
    assert checked == set(SCHEMAS), f"ops not exercised: {set(SCHEMAS) - checked}"
    assert not wrong, "\n".join(wrong)


def _every_op(f, g, g2, fl, gl, gl2, w, s, a, b, m):
    """Calls every forward op once (through torch.ops.attnfast); a scalar of all outputs."""
    ops, eps = torch.ops.attnfast, 1e-6
    attn = ops.pixel_attention(f, g) + ops.weighted_attention(f, ops.channel_weights(g, True))
    norm = ops.normalize_attention(attn, eps)
    mask = ops.soft_mask(norm, 0.55, 100.0, a.shape[1], a.shape[2], eps)
    iou, iou_l, cons, *_saved = ops.sharpen_focus_loss(f, g, g2, fl, gl, gl2, 1, 0.55, 100.0, 1.0,
                                                       True, True, eps)
    out, spatial = ops.channel_spatial_attention(f, s, eps)
    n, _, h, wd = f.shape
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 3.0]]], device=f.device).expand(n, 1, 4).contiguous()
    none = f.new_empty((0,), dtype=torch.float32)
    guide, *_saved = ops.guidance_loss(f, g, boxes, torch.arange(n, device=f.device), none, none,
                                       2, 0, 4.0 * h, 4.0 * wd, eps)
    return (ops.soft_iou(a, b, mask, eps).sum() + ops.attention_consistency(norm, m, 1.0, eps).sum()
            + (iou + iou_l + cons).sum() + out.float().sum() + spatial.sum()
            + ops.ggam_loss(s, w, eps).sum() + guide.sum())


def _fake_inputs(dtype, layout):
    big = [x for x in op_sample_calls(dtype, layout) if x[0] == "sharpen_focus_loss"][0][1][:6]
    a, b, m = (torch.rand(2, 4, 5) for _ in range(3))
    return [_fake_cuda(x) for x in (*big, torch.randn(2, 3), torch.rand(2, 3) + 0.1, a, b, m)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compile_traces_every_op_on_fake_cuda_tensors(layout):
    """Dynamo's graph holds every op; AOTAutograd (``aot_eager``) traces it through the fake
    kernels. Forward only: without a GPU the autograd engine cannot run a backward over CUDA
    tensors, even fake ones (it asks the driver for the device's primary context), so the
    compiled backward is traced on CPU tensors (tests/test_registration.py) and the backward
    ops' fake kernels are called directly on CUDA tensors above."""
    torch.compiler.reset()
    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    with _compat.fake_tensor_mode():
        xs = _fake_inputs(torch.float16, layout)
        torch.compile(_every_op, backend=recording, fullgraph=True)(*xs)
        traced = {str(n.target).removesuffix(".default") for gm in graphs
                  for n in gm.graph.nodes if n.op == "call_function"}
        missing = [op for op in FORWARD_OPS if f"attnfast.{op}" not in traced]
        assert len(graphs) == 1 and not missing, f"not in the graph: {missing}"

        torch.compiler.reset()
        loss = torch.compile(_every_op, backend="aot_eager", fullgraph=True)(*xs)
    assert _compat.is_fake(loss) and loss.device.type == "cuda" and loss.shape == ()
    assert loss.dtype == torch.float32


def _expected_archs(text):
    """``TORCH_CUDA_ARCH_LIST`` syntax ("8.0;9.0+PTX", "9.0 8.6") -> ["sm_80", "sm_90"]."""
    archs = text.replace(";", " ").replace(",", " ").split()
    return sorted({"sm_" + a.split("+")[0].replace(".", "") for a in archs})


def test_extension_reports_its_arch_list():
    archs = _build.cuda_arch_list()
    assert archs and all(a.startswith("sm_") and a[3:].isdigit() for a in archs), archs
    want = os.environ.get("ATTNFAST_CUDA_ARCHS")
    if want:
        assert sorted(archs) == _expected_archs(want), f"built for {archs}, expected {want}"
    print("attnfast CUDA kernels compiled for", archs, "- attnfast", attnfast.__file__)
