"""Shared test machinery: which backends run here, input makers, and the kernel-vs-reference check.

Every compiled backend is compared with the eager reference run in float64 on the same (upcast)
inputs: forward outputs, then input gradients from the same random upstream gradient.

Without a GPU the Triton kernels run on CPU tensors under the Triton interpreter, which must be
switched on before Triton is imported: done here. ``ATTNFAST_REQUIRE=cpu,triton`` (set by CI)
turns a missing backend into a failure instead of a skip.
"""
import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import attnfast  # noqa: E402  (after TRITON_INTERPRET)

INTERPRETED = DEVICE == "cpu"
BACKENDS = ["cuda", "triton"] if DEVICE == "cuda" else ["cpu", "triton"]
REQUIRED = [b for b in os.environ.get("ATTNFAST_REQUIRE", "").split(",") if b]
LOW = (torch.float16, torch.bfloat16)


def dtypes(backend):
    """Input dtypes a backend is tested with (the interpreter cannot do half types)."""
    if backend == "triton" and INTERPRETED:
        return [torch.float32]
    if backend in ("cpu", "torch"):
        return [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    return [torch.float32, torch.float16, torch.bfloat16]


def require(backend):
    """Skip (saying why) or, when the backend is in ATTNFAST_REQUIRE, fail if it is missing."""
    if backend in attnfast.available_backends():
        return
    from attnfast import _build, backend as be
    why = {"cpu": _build.error(), "cuda": _build.error() or "no CUDA kernels in this build",
           "triton": be._triton.get("error", "")}.get(backend, "")
    msg = f"backend {backend!r} not available here: {why}"
    if backend in REQUIRED:
        pytest.fail(msg)
    pytest.skip(msg)


def small(backend):
    """Interpreted Triton is slow: such tests use only the small shapes."""
    return backend == "triton" and INTERPRETED


def cases(shapes, small_shapes, *, all_dtypes=True):
    """pytest params (backend, dtype, shape): every backend x its dtypes x shapes."""
    out = []
    for b in BACKENDS:
        for dt in (dtypes(b) if all_dtypes else dtypes(b)[:1]):
            for s in (small_shapes if small(b) else shapes):
                out.append(pytest.param(b, dt, s, id=f"{b}-{str(dt)[6:]}-{_sid(s)}"))
    return out


def _sid(s):
    return "x".join(map(str, s)) if isinstance(s, tuple) and all(isinstance(v, int) for v in s) \
        else str(s).replace(" ", "")


def big(shape, dtype, fmt="nchw", scale=1.0):
    """Random N x K x H x W tensor in a memory format: 'nchw', 'channels_last', or 'strided'
    (a non-contiguous view that is neither)."""
    if fmt == "strided":
        n, k, h, w = shape
        return (torch.randn(n, k, w, 2 * h, device=DEVICE) * scale).to(dtype).transpose(2, 3)[:, :, ::2]
    t = (torch.randn(shape, device=DEVICE) * scale).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else t


def leaf(t):
    return t.detach().requires_grad_(True)


def _tol(dtype):
    return {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3,
            torch.bfloat16: 1.6e-2}[dtype]


def close(actual, expected, name, tol):
    """Elementwise |a - e| <= tol * (|e| + max|e|) ; prints the worst mismatching elements."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert not torch.isnan(a).any() or torch.isnan(e).any(), f"{name}: NaN in result"
    scale = e.abs().max().item() if e.numel() else 0.0
    bad = ~((a - e).abs() <= tol * (e.abs() + scale) + 1e-12) & ~(torch.isnan(a) & torch.isnan(e))
    if bad.any():
        idx = bad.nonzero()[:6]
        rows = "\n".join(f"  at {tuple(i.tolist())}: got {a[tuple(i)].item():.8g}, "
                         f"expected {e[tuple(i)].item():.8g}" for i in idx)
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.numel()} elements differ "
                             f"(tol {tol:g} relative, max|expected| = {scale:.4g}):\n{rows}")


def check(fn, inputs, backend, *, grad=True, out_tol=None):
    """Run ``fn(*inputs)`` on ``backend`` and on the float64 reference; compare the outputs and
    the gradients of every floating input for the same random upstream gradient.

    Returns the backend outputs (a tuple) for further checks.
    """
    require(backend)
    xs = [leaf(x) if grad and x.is_floating_point() else x for x in inputs]
    rs = [leaf(x.double()) if grad and x.is_floating_point() else x for x in inputs]
    with attnfast.use_backend(backend):
        outs = _tuple(fn(*xs))
    with attnfast.use_backend("torch"):
        refs = _tuple(fn(*rs))
    for i, (o, r) in enumerate(zip(outs, refs)):
        close(o, r, f"output {i}", out_tol or _tol(o.dtype))
    if not grad:
        return outs
    pairs = [(o, r, torch.randn(o.shape, device=o.device).to(o.dtype))
             for o, r in zip(outs, refs) if o.requires_grad]
    assert pairs, "no differentiable output"
    torch.autograd.backward([o for o, _, _ in pairs], [u for _, _, u in pairs])
    torch.autograd.backward([r for _, r, _ in pairs], [u.double() for _, _, u in pairs])
    for j, (x, rx) in enumerate(zip(xs, rs)):
        if not isinstance(x, torch.Tensor) or not x.requires_grad:
            continue
        assert x.grad is not None, f"input {j}: no gradient"
        assert x.grad.dtype == x.dtype, f"input {j}: grad dtype {x.grad.dtype} != {x.dtype}"
        tol = _tol(x.dtype)
        close(x.grad, rx.grad, f"grad of input {j}", tol)
    return outs


def _tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)
