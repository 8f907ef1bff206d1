"""The one helper module of the tests: which backends run here, input makers, the one tolerance
rule (``close``) and the kernel-vs-reference check, tiny models and image batches.

Every compiled backend is compared with the eager reference run in float64 on the same (upcast)
inputs: forward outputs, then input gradients from the same random upstream gradient.

Without a GPU the Triton kernels run on CPU tensors under the Triton interpreter, which must be
switched on before Triton is imported: done here (and in conftest, which imports this first).
``ATTNFAST_REQUIRE=cpu,triton`` (set by CI) turns a missing backend into a failure instead of a
skip. Test modules import from here (and from the data modules ``op_samples``, ``shapes`` and
``boundaries``), never from each other or from conftest; fixtures live in conftest.
"""
import math
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
    from attnfast.backend import BACKENDS as known
    msg = f"backend {backend!r} not available here: {known[backend].error()}"
    if backend in REQUIRED:
        pytest.fail(msg)
    pytest.skip(msg)


def use_small_shapes(backend):
    """Interpreted Triton is slow: such tests use only the small shapes."""
    return backend == "triton" and INTERPRETED


def backend_params(shapes, small_shapes, *, all_dtypes=True):
    """pytest params (backend, dtype, shape): every backend x its dtypes x shapes."""
    out = []
    for b in BACKENDS:
        for dt in (dtypes(b) if all_dtypes else dtypes(b)[:1]):
            for s in (small_shapes if use_small_shapes(b) else shapes):
                out.append(pytest.param(b, dt, s, id=f"{b}-{str(dt)[6:]}-{_sid(s)}"))
    return out


def _sid(s):
    return "x".join(map(str, s)) if isinstance(s, tuple) and all(isinstance(v, int) for v in s) \
        else str(s).replace(" ", "")


def big(shape, dtype, fmt="nchw", scale=1.0):
    """Random N x K x H x W tensor in a memory format: 'nchw', 'channels_last', 'strided' (a
    non-contiguous view that is neither), or one of the first two at a storage offset of one
    element, 'offset_nchw' / 'offset_channels_last' (``offset_view``)."""
    if fmt == "strided":
        n, k, h, w = shape
        return (torch.randn(n, k, w, 2 * h, device=DEVICE) * scale).to(dtype).transpose(2, 3)[:, :, ::2]
    return in_format((torch.randn(shape, device=DEVICE) * scale).to(dtype), fmt)


def in_format(t, fmt):
    """The contiguous N x K x H x W tensor ``t`` in memory format ``fmt``: 'nchw', 'channels_last',
    'offset_nchw' or 'offset_channels_last'."""
    base = fmt.removeprefix("offset_")
    assert base in ("nchw", "channels_last"), fmt
    t = t.contiguous(memory_format=torch.channels_last) if base == "channels_last" else t
    return offset_view(t) if fmt != base else t


def offset_view(t):
    """A copy of ``t`` (same strides) that starts one element into its storage: a legal input
    whose data pointer is not 16-byte aligned, so a kernel may not load it in 16-byte vectors
    (the CUDA tile engine must see that; the emulator aborts on a misaligned vector access)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].as_strided(t.shape, t.stride())
    assert out.numel() == 0 or out.data_ptr() % 16 != 0
    return out.copy_(t)


def leaf(t):
    return t.detach().requires_grad_(True)


def tol(dtype):
    """Relative tolerance of a result computed from inputs of ``dtype``."""
    return {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3,
            torch.bfloat16: 1.6e-2}[dtype]


def close(actual, expected, name, rtol, atol=0.0, slack=0.0):
    """THE tolerance rule of the tests, element by element:

        |a - e| <= rtol * |e| + atol + slack        (or a == e, or both NaN)

    never scaled by the tensor's largest element (a tensor mixing 1/eps and O(1) values would
    hide every O(1) error). ``slack`` is what the reference itself gets wrong at the inputs'
    precision: a number (``reference_error``: 16x the float32 reference's largest error against
    float64) or a tensor of per-element errors. Prints the worst mismatches.
    """
    assert actual.shape == expected.shape, \
        f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if torch.is_tensor(slack):
        slack = slack.detach().double().cpu()
    assert not torch.isnan(a).any() or torch.isnan(e).any(), f"{name}: NaN in result"
    ok = ((a - e).abs() <= rtol * e.abs() + atol + slack + 1e-12) | (a == e)
    bad = ~ok & ~(torch.isnan(a) & torch.isnan(e))
    if bad.any():
        scale = e[torch.isfinite(e)].abs().max().item() if torch.isfinite(e).any() else 0.0
        idx = bad.nonzero()[:6]
        rows = "\n".join(f"  at {tuple(i.tolist())}: got {a[tuple(i)].item():.8g}, "
                         f"expected {e[tuple(i)].item():.8g}" for i in idx)
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.numel()} elements differ "
                             f"(rtol {rtol:g}, atol {atol:g}, max|expected| = {scale:.4g}):\n{rows}")


def reference_error(native, exact, factor=16.0):
    """``factor`` x the largest error of the reference run at the inputs' own precision: the
    ``slack`` of ``close`` for values that cancel (1 - eps/u at 1 x 1 maps, say)."""
    if native is None or native.numel() == 0:
        return 0.0
    d = (native.detach().double() - exact.detach().double()).abs()
    return factor * float(d[torch.isfinite(d)].max()) if torch.isfinite(d).any() else 0.0


def kink_free(make, pre, tries=50):
    """Draw inputs with ``make()`` until no pre-activation ``pre(*float64 inputs)`` lies within
    1e-6 of its std of a ReLU kink: there float32 and float64 rounding may legitimately pick
    different sides (the exact-kink rules are tested with exact inputs in tests/boundaries.py)."""
    for _ in range(tries):
        xs = make()
        z = pre(*(x.double() for x in xs))
        if z.numel() < 2 or (z.abs() > 1e-6 * z.std()).all():
            return xs
    raise RuntimeError("could not draw kink-free inputs")


def check(fn, inputs, backend, *, grad=True, out_tol=None, grad_atol=0.0):
    """Run ``fn(*inputs)`` on ``backend``, on the reference at the inputs' precision and on the
    float64 reference; compare outputs and the gradients of every floating input for the same
    random upstream gradient. Returns the backend outputs (a tuple) for further checks.
    ``grad_atol``: an absolute term for gradients that cancel to ~eps (say so where used).
    """
    require(backend)
    runs = {}
    for key, be, cast in (("kernel", backend, None), ("native", "torch", None),
                          ("exact", "torch", torch.float64)):
        xs = [leaf(x.to(cast) if cast else x) if grad and x.is_floating_point() else x
              for x in inputs]
        with attnfast.use_backend(be):
            runs[key] = xs, as_tuple(fn(*xs))
    (xs, outs), (ns, nat), (rs, refs) = runs["kernel"], runs["native"], runs["exact"]
    for i, (o, n, r) in enumerate(zip(outs, nat, refs)):
        close(o, r, f"output {i}", out_tol or tol(o.dtype), slack=reference_error(n, r))
    if not grad:
        return outs
    ups = [torch.randn(o.shape, device=o.device).to(o.dtype) for o in outs]
    for (ins, res), cast in ((runs["kernel"], None), (runs["native"], None),
                             (runs["exact"], torch.float64)):
        pairs = [(o, u.to(cast) if cast else u) for o, u in zip(res, ups) if o.requires_grad]
        assert pairs, "no differentiable output"
        torch.autograd.backward(*zip(*pairs))
    for j, (x, n, rx) in enumerate(zip(xs, ns, rs)):
        if not isinstance(x, torch.Tensor) or not x.requires_grad:
            continue
        assert x.grad is not None, f"input {j}: no gradient"
        assert x.grad.dtype == x.dtype, f"input {j}: grad dtype {x.grad.dtype} != {x.dtype}"
        exact = rx.grad.to(x.dtype)  # the best representable answer (inf past the dtype's range)
        close(x.grad, exact, f"grad of input {j}", tol(x.dtype), atol=grad_atol,
              slack=reference_error(n.grad, rx.grad))
    return outs


def as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def pre_activation(kind, f, g):
    """The map of ``kind`` before its ReLU, N x H x W (g may be N x K per channel)."""
    if g.dim() == 2:
        g = g[:, :, None, None].expand_as(f)
    if kind == "pixel":
        return (f * g).mean(1)
    w = (torch.relu(g) if kind == "channel" else g).mean((2, 3))
    return torch.einsum("nkhw,nk->nhw", f, w)


# ------------------------------------------------------------------ tiny models and images
def tiny_resnet(classes, *, dtype=torch.float64, seed=0, eval_mode=False):
    """The seeded tiny ResNet (resnet8, 3 input channels) of the wrapper tests."""
    from attnfast.train import models
    torch.manual_seed(seed)
    model = models.create("resnet8", classes, in_channels=3).to(dtype)
    return model.eval() if eval_mode else model


def image_batch(n, size, classes, *, dtype=torch.float64, seed=1):
    """Seeded (images N x 3 x H x W, labels N); ``size`` is H or (H, W): the wrapper tests use
    non-square images, so that an H/W mix-up cannot pass."""
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, h, w, generator=g, dtype=dtype),
            torch.randint(0, classes, (n,), generator=g))


def forward_with(model, names, x, prepend=False):
    """Logits of ``model(x)`` and the outputs of the named layers (by hooks of the test's own)."""
    mods = dict(model.named_modules())
    got, hooks = {}, []
    for name in names:
        def hook(mod, inp, out, name=name):
            got[name] = out
        hooks.append(mods[name].register_forward_hook(hook, prepend=prepend))
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, [got[n] for n in names]


def cam_model(classes=10, seed=0):
    """CIFAR ResNet-8 (stages layer1..layer3, input/1, /2, /4), eval mode, running statistics
    made non-trivial so that BatchNorm is not the identity."""
    from attnfast.train import models
    torch.manual_seed(seed)
    m = models.create("resnet8", num_classes=classes)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def cam_images(size, seed=1, n=3):
    """Seeded uniform images N x 3 x H x W; ``size`` is H or (H, W)."""
    h, w = (size, size) if isinstance(size, int) else size
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ trainer command lines
TRAIN_TINY = ["--data", "synthetic", "--train-size", "32", "--test-size", "16", "--image-size",
              "16", "--model", "resnet8", "--batch-size", "16", "--epochs", "1", "--pictures",
              "0", "--no-progress", "--seeds", "1", "--eval-every", "1"]
LOCATED_DATA = ["--data", "located-digits", "--image-size", "32", "--train-size", "48",
                "--test-size", "24"]


# ------------------------------------------------------------------ the NaN rule (decision 15)
def _run_with_grads(backend, fn, inputs):
    """Outputs and input gradients (zeros where unused) of ``fn`` on ``backend`` for a seeded
    random upstream gradient."""
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    with attnfast.use_backend(backend):
        outs = fn(*xs)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    g = torch.Generator().manual_seed(99)
    ups = [torch.randn(o.shape, generator=g).to(o) for o in outs]
    pairs = [(o, u) for o, u in zip(outs, ups) if o.requires_grad]
    grads = torch.autograd.grad([o for o, _ in pairs], xs, [u for _, u in pairs],
                                allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for gr, x in zip(grads, xs)]
    return [o.detach() for o in outs], grads


def same_function(name, got, want, rtol=2e-4, atol=2e-5):
    """Same NaN / +Inf / -Inf positions; finite entries |got - want| <= atol + rtol |want|."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    classes = {"NaN": torch.isnan, "+Inf": lambda x: x == math.inf, "-Inf": lambda x: x == -math.inf}
    for what, test in classes.items():
        diff = test(g) != test(w)
        if diff.any():
            at = [tuple(i) for i in diff.nonzero()[:6].tolist()]
            raise AssertionError(f"{name}: {what} positions differ at {at}: got "
                                 f"{[g[i].item() for i in at]}, eager {[w[i].item() for i in at]}")
    fin = torch.isfinite(w)
    bad = fin & ~((g - w).abs() <= atol + rtol * w.abs())
    if bad.any():
        at = [tuple(i) for i in bad.nonzero()[:6].tolist()]
        raise AssertionError(f"{name}: finite values differ at {at}: got "
                             f"{[g[i].item() for i in at]}, eager {[w[i].item() for i in at]}")


def check_rule(backend, fn, inputs):
    """docs/SPEC.md decision 15: ``fn`` on ``backend`` is the function eager autograd computes,
    NaN / Inf positions included, outputs and input gradients."""
    require(backend)
    outs, grads = _run_with_grads(backend, fn, inputs)
    want_outs, want_grads = _run_with_grads("torch", fn, inputs)
    for i, (o, w) in enumerate(zip(outs, want_outs)):
        same_function(f"{backend} output {i}", o, w)
    for i, (gr, w) in enumerate(zip(grads, want_grads)):
        same_function(f"{backend} gradient of input {i}", gr, w)


# ------------------------------------------------------------------ the torchvision lane
def torchvision_error():
    """None when torchvision imports here, else why not (ImportError, or a torch / torchvision
    mismatch raising at import): the file-based data tests run in CI lane 2 only."""
    try:
        import torchvision  # noqa: F401  (imported to see whether it can be)
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return None


def needs_torchvision():
    """The ``pytestmark`` of a module that needs torchvision: a skip that says why."""
    error = torchvision_error()
    return pytest.mark.skipif(error is not None, reason=f"torchvision unavailable ({error})")


COLOURS = [(220, 30, 30), (30, 200, 40), (40, 50, 230), (230, 220, 40)]


def jpeg(path, colour, seed, size=(40, 30)):
    """A JPEG of ``size`` (W, H) in ``colour`` with a little seeded noise."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour)[None, None] + rng.integers(-8, 9, (size[1], size[0], 3)),
                     0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)

