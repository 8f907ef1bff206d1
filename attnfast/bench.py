"""Benchmarks: attnfast kernels and training steps against eager PyTorch, torch.compile and the
hooks approach. ``python -m attnfast.bench --help`` (console script ``attnfast-bench``); the
pytest-benchmark suite in ``benchmarks/`` runs the same cases.

What is measured, side by side in one run (speed is a ratio, never an absolute time):

* Kernel cases: every op and the fused loss at real network shapes (``kernel_cases``).
  Providers: ``eager`` (``attnfast.reference`` with autograd), ``compile`` (``torch.compile`` of
  it), and each attnfast backend usable on the device (``cpu``; ``cuda``, ``triton``) through
  ``with attnfast.use_backend(name):``. Modes: ``fwd`` (every input requires grad, so the graph
  is built as in training), ``bwd`` (the forward runs untimed, then only
  ``torch.autograd.grad(outputs, inputs, g)`` is timed, g a fixed random upstream gradient),
  ``fwd+bwd``.
* Time: median and IQR (q3 - q1) of ``repeats`` calls after ``warmup``, on random data; inputs
  rotate over several buffer sets holding more than ``rotate_bytes`` (2 x L2 on a GPU, 64 MiB
  on a CPU) and a buffer of that size is written before every timed call (after the untimed
  forward of a backward-only call), so no call finds its inputs in cache. CUDA events on a
  GPU, ``time.perf_counter`` on a CPU. The
  providers of a case (and the variants of a training case) take turns call by call, so a
  change of machine load hits them alike and the ratios stay fair.
* Bytes: the minimum a call must move -- fwd: every input read once, every output written once;
  bwd: the upstream gradients and the inputs read once, every input gradient written once;
  fwd+bwd: the union. GB/s = bytes / median; "% copy" = that over the bandwidth of
  ``y.copy_(x)`` on a large buffer (2 x its size moved), measured in the same run.
* Peak extra memory of one call: on CUDA ``max_memory_allocated`` minus ``memory_allocated``
  before it; on CPU the peak of the running sum of the CPU allocator's allocations and frees
  recorded by ``torch.profiler`` (``profile_memory=True``) over the call -- an exact count of
  torch's allocations, not ``tracemalloc`` (which cannot see them).
* Training cases (``train_variants``): one SGD step on synthetic data -- baseline
  cross-entropy, Sharpen Focus first/second order with attnfast ops (backend auto) and with
  eager ops (``use_backend("torch")``), and the hooks approach (``HooksSharpenFocus``); step time
  and peak memory (resident + peak extra) as ratios to the baseline step.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fnmatch
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as nnf
from torch import nn

from . import reference

MODES = ("fwd", "bwd", "fwd+bwd")
MB = 2.0 ** 20


# ================================================================================== settings
@dataclass
class Config:
    """What one run measures; ``for_run`` fills the device-dependent defaults."""
    device: str = "cpu"
    dtype: str = "float32"
    channels_last: bool = False
    quick: bool = False
    cases: list = field(default_factory=list)        # glob patterns; empty = all
    providers: list = field(default_factory=list)    # names; empty = default set
    warmup: int = 5
    repeats: int = 50
    rotate_bytes: int = 64 << 20
    train_warmup: int = 2
    train_repeats: int = 10

    @classmethod
    def for_run(cls, **kw) -> "Config":
        cfg = cls(**kw)
        if cfg.device == "cuda":
            if not torch.cuda.is_available():
                raise SystemExit("attnfast.bench: --device cuda but no CUDA device is visible")
            l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
            cfg.rotate_bytes = 2 * l2
        if cfg.quick:
            cfg.warmup, cfg.repeats, cfg.train_warmup, cfg.train_repeats = 2, 7, 1, 3
        return cfg

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def selected(self, *names: str) -> bool:
        return not self.cases or any(fnmatch.fnmatch(n, p) for p in self.cases for n in names)


# ===================================================================================== cases
@dataclass(frozen=True)
class Net:
    """Batch and the (K, H, W) of the inner and last supervised layers of a network."""
    n: int
    inner: tuple
    last: tuple


# Foundation issue (CPU): CIFAR ResNet-110 (N = 128; its last two stages) and ResNet-18 at 224
# (N = 32; layer3, layer4). GPU: ResNet-18/50 layer3/layer4 at 224 and 448, plus odd sizes.
NETS = {
    "cpu": {"cifar_r110": Net(128, (32, 16, 16), (64, 8, 8)),
            "r18_224": Net(32, (256, 14, 14), (512, 7, 7))},
    "cuda": {"cifar_r110": Net(128, (32, 16, 16), (64, 8, 8)),
             "r18_224": Net(256, (256, 14, 14), (512, 7, 7)),
             "r50_224": Net(128, (1024, 14, 14), (2048, 7, 7)),
             "r50_448": Net(32, (1024, 28, 28), (2048, 14, 14)),
             "odd": Net(48, (273, 13, 17), (546, 7, 9))},
}


@dataclass(frozen=True)
class Arg:
    """One tensor argument: ``big`` ones (N x K x H x W) take --dtype and --channels-last,
    small ones (maps, N x K weights) are float32 as the ops produce them. ``dist``: "unif"
    U[0, 1) (features after ReLU, maps, masks, sigmoid outputs) or "normal" N(0, 1)."""
    shape: tuple
    big: bool = False
    dist: str = "unif"


@dataclass(frozen=True)
class Case:
    """An op on a shape: ``op`` is the public name (``attnfast.<op>`` / ``reference.<op>``),
    ``n_grad_out`` the leading outputs that receive an upstream gradient (None: all)."""
    name: str
    op: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    n_grad_out: int | None = None

    @property
    def net(self) -> str:
        return self.name.split("/")[1].split(".")[0]

    def make(self, cfg: Config, seed: int) -> list:
        """Random inputs (one rotating set), each requiring grad."""
        gen = torch.Generator().manual_seed(seed)
        out = []
        for a in self.args:
            draw = torch.rand if a.dist == "unif" else torch.randn
            t = draw(a.shape, generator=gen)
            if a.big:
                t = t.to(cfg.torch_dtype)
                if cfg.channels_last:
                    t = t.to(memory_format=torch.channels_last)
            out.append(t.to(cfg.torch_device).requires_grad_(True))
        return out


def kernel_cases(device: str = "cpu") -> list:
    """Every op at the inner/last layers of each network of ``NETS[device]``; map ops on the
    inner layer's maps (soft_mask resizes the last map to the inner size, as the loss does);
    GGAM ops on the last layer; the fused loss with pixel maps and with the "channel" kind fed
    N x K last-layer weights (the GAP + linear head the training wrappers use)."""
    cases = []
    for net, s in NETS[device].items():
        n, (ki, hi, wi), (kl, hl, wl) = s.n, s.inner, s.last
        for layer, (k, h, w) in (("inner", s.inner), ("last", s.last)):
            feat, grad = Arg((n, k, h, w), True), Arg((n, k, h, w), True, "normal")
            tag = f"{net}.{layer}"
            cases += [Case(f"channel_weights/{tag}", "channel_weights", (grad,)),
                      Case(f"weighted_attention/{tag}", "weighted_attention",
                           (feat, Arg((n, k), dist="normal"))),
                      Case(f"channel_attention/{tag}", "channel_attention", (feat, grad)),
                      Case(f"pixel_attention/{tag}", "pixel_attention", (feat, grad))]
        imap, lmap = Arg((n, hi, wi)), Arg((n, hl, wl))
        fi, gi = Arg((n, ki, hi, wi), True), Arg((n, ki, hi, wi), True, "normal")
        fl, gl = Arg((n, kl, hl, wl), True), Arg((n, kl, hl, wl), True, "normal")
        head = Arg((n, kl), dist="normal")
        cases += [
            Case(f"normalize_attention/{net}.inner", "normalize_attention", (imap,)),
            Case(f"soft_mask/{net}.last->inner", "soft_mask", (lmap,), {"size": (hi, wi)}),
            Case(f"soft_iou/{net}.inner", "soft_iou", (imap, imap, imap)),
            Case(f"attention_consistency/{net}.inner", "attention_consistency", (imap, imap)),
            Case(f"channel_spatial_attention/{net}.last", "channel_spatial_attention",
                 (fl, Arg((n, kl)))),
            Case(f"ggam_loss/{net}.last", "ggam_loss", (Arg((n, kl)), Arg((n, kl), dist="normal"))),
            Case(f"sharpen_focus_loss/{net}", "sharpen_focus_loss", (fi, gi, gi, fl, gl, gl),
                 {"attention": "pixel"}, n_grad_out=1),
            Case(f"sharpen_focus_loss.head/{net}", "sharpen_focus_loss",
                 (fi, gi, gi, fl, head, head), {"attention": "channel"}, n_grad_out=1),
        ]
    return cases


# ================================================================================= providers
@dataclass
class Provider:
    """``fn(op)`` gives the callable for a public op name; ``context()`` wraps every call
    (forward and backward) made through it."""
    name: str
    fn: object
    context: object = contextlib.nullcontext


def _compiled(op: str):
    torch._dynamo.reset()     # each case compiles afresh: no recompile limits across shapes
    return torch.compile(getattr(reference, op), dynamic=False)


def _backend(name: str) -> Provider:
    import attnfast
    return Provider(name, lambda op: getattr(attnfast, op), lambda: attnfast.use_backend(name))


def device_backends(device: str) -> list:
    """attnfast backends that run on ``device`` here ("torch" is the eager provider already;
    Triton on CPU is its interpreter, far too slow to time)."""
    from .backend import available_backends
    wanted = ("cuda", "triton") if device == "cuda" else ("cpu",)
    return [b for b in wanted if b in available_backends()]


def providers(cfg: Config) -> list:
    """The providers of this run: eager, compile (left out by --quick unless asked), backends."""
    names = ["eager", "compile"] + device_backends(cfg.device)
    if cfg.providers:
        unknown = set(cfg.providers) - set(names)
        if unknown:
            raise SystemExit(f"attnfast.bench: provider(s) {sorted(unknown)} not available on "
                             f"{cfg.device}; available: {names}")
        names = [n for n in names if n in cfg.providers]
    elif cfg.quick:
        names.remove("compile")
    table = {"eager": lambda: Provider("eager", lambda op: getattr(reference, op)),
             "compile": lambda: Provider("compile", _compiled)}
    return [table[n]() if n in table else _backend(n) for n in names]


# ==================================================================================== timing
@dataclass
class Timed:
    """One contender of ``time_interleaved``: ``run(prepare(i))`` inside ``context()``, only
    ``run`` timed; ``samples`` (seconds) or ``error`` once timed."""
    name: str
    prepare: object
    run: object
    context: object = contextlib.nullcontext
    samples: list = field(default_factory=list)
    error: str | None = None


def time_interleaved(entries: list, n_sets: int, warmup: int, repeats: int, device,
                     flush=None) -> list:
    """Time each entry's calls with the entries taking turns call by call, so that a change of
    machine load hits them all alike (ratios stay fair on a shared machine). Successive calls,
    whichever entry makes them, take successive rotating sets (index modulo ``n_sets``), and
    ``flush()`` (untimed, after ``prepare``: after the forward of a backward-only call too)
    evicts the caches. The first ``warmup`` calls of each entry are not kept. CUDA events on a
    GPU, ``time.perf_counter`` on a CPU. An entry that raises keeps its error and drops out."""
    device = torch.device(device)
    cuda, events, calls = device.type == "cuda", {id(e): [] for e in entries}, itertools.count()
    for _ in range(warmup + repeats):
        for e in entries:
            if e.error is not None:
                continue
            try:
                with e.context():
                    state = e.prepare(next(calls) % n_sets)
                    if flush is not None:
                        flush()
                    if cuda:
                        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                        start.record()
                        e.run(state)
                        end.record()
                        events[id(e)].append((start, end))
                    else:
                        t0 = time.perf_counter()
                        e.run(state)
                        e.samples.append(time.perf_counter() - t0)
                    del state
            except Exception as exc:  # noqa: BLE001  -- reported in the row, the others go on
                e.error = describe(exc)
    if cuda:
        torch.cuda.synchronize(device)
        for e in entries:
            e.samples = [s.elapsed_time(t) / 1e3 for s, t in events[id(e)]]
    for e in entries:
        e.samples = e.samples[warmup:]
    return entries


def cache_flusher(cfg: Config):
    """A callable that writes a ``rotate_bytes`` buffer (2 x L2 on a GPU), evicting the inputs
    and intermediates a previous call left in cache."""
    buf = torch.empty(cfg.rotate_bytes // 4, dtype=torch.int32, device=cfg.torch_device)
    return buf.zero_


def wall_clock_pair(prepare, run, n_sets: int, device, flush=None):
    """(setup, target) for timers that read a wall clock around ``target`` (pytest-benchmark's
    ``pedantic``): ``setup()`` prepares the next rotating set and flushes the caches, untimed,
    and returns
    ``((state,), {})``; ``target(state)`` runs and synchronizes the device, so the time covers
    the work and not only its launch."""
    device, count = torch.device(device), itertools.count()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def setup():
        state = prepare(next(count) % n_sets)
        if flush is not None:
            flush()
        sync()
        return (state,), {}

    def target(state):
        run(state)
        sync()
    return setup, target


def _quantile(xs: list, q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples: list) -> dict:
    """median, q1, q3 (ms) and the count."""
    return {"median_ms": 1e3 * _quantile(samples, 0.5), "q1_ms": 1e3 * _quantile(samples, 0.25),
            "q3_ms": 1e3 * _quantile(samples, 0.75), "n": len(samples)}


def _profiler_peak(prof) -> int:
    """Peak of the running sum of CPU allocator events (bytes) recorded by ``prof``."""
    evs = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
           and e.device_type() == torch.autograd.DeviceType.CPU]
    total = peak = 0
    for e in sorted(evs, key=lambda e: e.start_ns()):
        total += e.nbytes()
        peak = max(peak, total)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (kineto logs a line at every profiler start and stop)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def peak_extra(prepare, run, device) -> int:
    """Bytes allocated at the peak of one ``run(prepare(0))`` beyond what existed before it
    (outputs kept alive until the end count). See the module docstring for the CPU method."""
    device = torch.device(device)
    state = prepare(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = run(state)
        torch.cuda.synchronize(device)
        extra = torch.cuda.max_memory_allocated(device) - base
    else:
        from torch.profiler import ProfilerActivity, profile
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU],
                                      profile_memory=True) as prof:
            out = run(state)
        extra = _profiler_peak(prof)
    del out, state
    return extra


def _nbytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def copy_bandwidth(cfg: Config) -> dict:
    """GB/s of ``y.copy_(x)`` on a buffer of 4 x rotate_bytes (2 x its bytes moved)."""
    n = max(cfg.rotate_bytes, 16 << 20) // 4 * (1 if cfg.quick else 4)
    x = torch.rand(n, device=cfg.torch_device)
    y = torch.empty_like(x)
    (copy,) = time_interleaved([Timed("copy", lambda i: None, lambda _: y.copy_(x))], 1,
                               cfg.warmup, cfg.repeats, cfg.device)
    s = summarize(copy.samples)
    return {**s, "bytes": 2 * x.numel() * 4, "gbps": 2 * x.numel() * 4 / s["median_ms"] / 1e6}


# ============================================================================ kernel benchmark
def _outputs(out) -> list:
    return list(out) if isinstance(out, tuple) else [out]


class KernelWorkload:
    """The rotating input sets of one case (shared by every provider) and its fixed random
    upstream gradients, with the prepare/run closures of each mode."""

    def __init__(self, case: Case, cfg: Config):
        self.case, self.cfg = case, cfg
        one = _nbytes(case.make(cfg, 0))
        self.n_sets = max(2, min(32, -(-cfg.rotate_bytes // max(one, 1)) + 1))
        self.sets = [case.make(cfg, seed) for seed in range(self.n_sets)]
        outs = _outputs(getattr(reference, case.op)(*self.sets[0], **case.kwargs))
        gen = torch.Generator().manual_seed(1234)
        self.grads = [torch.empty_like(o, requires_grad=False).copy_(torch.randn(o.shape,
                                                                                 generator=gen))
                      for o in self._diff(outs)]    # in the output's dtype and memory layout
        n_in, n_out, n_g = _nbytes(self.sets[0]), _nbytes(outs), _nbytes(self.grads)
        self.bytes = {"fwd": n_in + n_out, "bwd": n_g + 2 * n_in, "fwd+bwd": 2 * n_in + n_out + n_g}

    def _diff(self, outs):
        return outs[: self.case.n_grad_out] if self.case.n_grad_out else outs

    def closures(self, fn, mode: str):
        """(prepare, run) for ``mode``; run returns what it produced so memory counts it."""
        case, sets = self.case, self.sets

        def forward(xs):
            return self._diff(_outputs(fn(*xs, **case.kwargs)))

        def backward(outs, xs):
            return torch.autograd.grad(outs, xs, self.grads)

        if mode == "fwd":
            return (lambda i: sets[i]), forward
        if mode == "bwd":
            return (lambda i: (forward(sets[i]), sets[i])), (lambda s: backward(*s))
        return (lambda i: sets[i]), (lambda xs: backward(forward(xs), xs))


def selected_kernel_cases(cfg: Config) -> list:
    """``kernel_cases`` of the device, filtered by --cases."""
    return [c for c in kernel_cases(cfg.device) if cfg.selected(c.name, c.op, c.net)]


def run_kernels(cfg: Config, copy: dict, log=print) -> list:
    """One row per (case, mode, provider), the providers taking turns call by call; a provider
    that fails leaves its error in its rows and the others go on."""
    rows, provs, flush = [], providers(cfg), cache_flusher(cfg)
    for case in selected_kernel_cases(cfg):
        work, fns = KernelWorkload(case, cfg), {}
        for prov in provs:
            try:
                fns[prov.name] = prov.fn(case.op)
            except Exception as exc:  # noqa: BLE001
                fns[prov.name] = describe(exc)
        for mode in MODES:
            entries = [Timed(p.name, *work.closures(fns[p.name], mode), p.context)
                       for p in provs if not isinstance(fns[p.name], str)]
            time_interleaved(entries, work.n_sets, cfg.warmup, cfg.repeats, cfg.device, flush)
            for p in provs:
                e = next((e for e in entries if e.name == p.name), None)
                error = fns[p.name] if e is None else e.error
                if error is None:
                    try:
                        with p.context():
                            mem = peak_extra(e.prepare, e.run, cfg.device)
                    except Exception as exc:  # noqa: BLE001
                        error = describe(exc)
                if error is not None:
                    rows.append({"case": case.name, "op": case.op, "mode": mode,
                                 "provider": p.name, "error": error})
                    log(f"  {case.name} {mode} {p.name}: {error}")
                    continue
                s = summarize(e.samples)
                gbps = work.bytes[mode] / s["median_ms"] / 1e6
                rows.append({"case": case.name, "op": case.op, "mode": mode, "provider": p.name,
                             **s, "bytes": work.bytes[mode], "gbps": gbps,
                             "pct_copy": 100.0 * gbps / copy["gbps"], "peak_extra_mb": mem / MB})
        log(f"  done {case.name}")
        del work, fns
    for base in ("eager", "compile"):
        _add_ratios(rows, ("case", "mode"), "provider", base, f"vs_{base}")
    return rows


def describe(exc: Exception) -> str:
    """One line naming the error. Only this is kept: a kept exception would hold its traceback's
    frames, and with them the tensors of the failed call (after a CUDA OOM, gigabytes)."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def _add_ratios(rows, group, who, base, name, key="median_ms", speedup=True):
    """Within each group of rows (same values of the ``group`` keys), ``row[name]`` compares
    ``row[key]`` with that of the row whose ``who`` is ``base``: base / row when ``speedup``
    (> 1: the row is faster), else row / base. None where either is missing."""
    ref = {tuple(r[k] for k in group): r[key] for r in rows if r.get(who) == base and key in r}
    for r in rows:
        b = ref.get(tuple(r[k] for k in group))
        r[name] = None if not b or key not in r else (b / r[key] if speedup else r[key] / b)


# ========================================================================== training steps
@dataclass(frozen=True)
class TrainNet:
    """A training case: ``attnfast.models`` name (``cifar_stem``: its 7x7/2 stem and max-pool
    replaced by a 3x3/1 conv, the usual ResNet-18 for 32 x 32 inputs), input size, classes, N."""
    model: str
    size: int
    classes: int
    n: int
    cifar_stem: bool = False

    def build(self) -> nn.Module:
        from . import models
        model = models.create(self.model, num_classes=self.classes)
        if self.cifar_stem:
            model.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                       nn.ReLU())
        return model


TRAIN_NETS = {
    "cuda": {"r18_cifar": TrainNet("resnet18", 32, 100, 128, cifar_stem=True),
             "r50_224": TrainNet("resnet50", 224, 1000, 256)},
    "cpu": {"r18_cifar": TrainNet("resnet18", 32, 100, 32, cifar_stem=True),
            "r50_224": TrainNet("resnet50", 224, 1000, 4)},
    "quick": {"r18_cifar": TrainNet("resnet18", 32, 100, 8, cifar_stem=True)},
}


class HooksSharpenFocus:
    """The approach of public Sharpen Focus code, written here from its description: a forward
    with forward hooks keeping the inner and last features; a full ``.backward()`` of the target
    score and another of the confuser score (gradient of ones, SPEC decision 9), each captured
    at the two layers by a module full-backward hook, the parameter gradients cleared after
    each; then the eager attention loss on the captured (detached, first-order) gradients and
    the loss backward."""

    def __init__(self, model, inner="layer3", last="layer4", weight=1.0):
        self.model, self.layers, self.weight = model, (inner, last), weight
        self.feats, self.grads = {}, {}
        modules = dict(model.named_modules())
        for name in self.layers:
            modules[name].register_forward_hook(self._keep_feature(name))
            modules[name].register_full_backward_hook(self._keep_grad(name))

    def _keep_feature(self, name):
        def hook(module, inputs, output):
            self.feats[name] = output
        return hook

    def _keep_grad(self, name):
        def hook(module, grad_input, grad_output):
            self.grads[name] = grad_output[0].detach()
        return hook

    def loss(self, images, targets):
        logits = self.model(images)
        confusers = logits.detach().scatter(1, targets[:, None], float("-inf")).argmax(1)
        captured = []
        for cls in (targets, confusers):
            logits.gather(1, cls[:, None]).sum().backward(retain_graph=True)
            captured.append([self.grads[n] for n in self.layers])
            self.model.zero_grad(set_to_none=True)
        (gi_t, gl_t), (gi_c, gl_c) = captured
        inner, last = (self.feats[n] for n in self.layers)
        attn = reference.sharpen_focus_loss(inner, gi_t, gi_c, last, gl_t, gl_c)[0]
        return nnf.cross_entropy(logits, targets) + self.weight * attn


def train_variants() -> dict:
    """name -> (make(model) giving loss(images, targets) of one step, attnfast backend or None).
    The caller runs the backward and the optimizer step."""
    def baseline(model):
        return lambda x, y: nnf.cross_entropy(model(x), y)

    def sharpen(second_order, backend):
        def make(model):
            import attnfast
            from .wrappers import SharpenFocus
            sf = SharpenFocus(model, inner_layer="layer3", last_layer="layer4", head="fc",
                              second_order=second_order)

            def loss(x, y):
                with attnfast.use_backend(backend):
                    return sf(x, y).loss
            return loss
        return make, backend

    return {"baseline": (baseline, None),
            "sf1_attnfast": sharpen(False, "auto"), "sf2_attnfast": sharpen(True, "auto"),
            "sf1_eager": sharpen(False, "torch"), "sf2_eager": sharpen(True, "torch"),
            "sf1_hooks": (lambda model: HooksSharpenFocus(model).loss, None)}


class TrainStep:
    """One training variant on a fixed synthetic batch: the model (seed 0), SGD with momentum,
    and ``step()`` = loss (under autocast when --dtype is half), backward, optimizer step.
    One step is taken at construction so the momentum buffers exist before any measurement."""

    def __init__(self, cfg: Config, net: TrainNet, variant: str):
        dev = cfg.torch_device
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(net.n, 3, net.size, net.size, generator=gen).to(dev,
                                                                            memory_format=fmt)
        self.y = torch.randint(0, net.classes, (net.n,), generator=gen).to(dev)
        torch.manual_seed(0)
        self.model = net.build().to(dev, memory_format=fmt)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        make, backend = train_variants()[variant]
        self.loss_fn = make(self.model)
        self.ops = _resolve_backend(backend, dev) if backend else (
            "torch" if variant == "sf1_hooks" else "-")
        self.amp = cfg.torch_dtype in (torch.float16, torch.bfloat16)
        self.dtype = cfg.torch_dtype
        self.step()

    def step(self, _=None):
        with torch.autocast(self.x.device.type, self.dtype, enabled=self.amp):
            loss = self.loss_fn(self.x, self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def resident_bytes(self) -> int:
        """Bytes held across steps: parameters, buffers, optimizer state and the batch."""
        state = [t for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t)]
        return _nbytes([*self.model.parameters(), *self.model.buffers(), *state, self.x, self.y])


def _resolve_backend(name: str, device: torch.device) -> str:
    """The concrete backend ``name`` ("auto", ...) means for tensors on ``device``."""
    import attnfast
    from .backend import resolve
    with attnfast.use_backend(name):
        return resolve(device)


def train_cases(cfg: Config) -> list:
    """(case name, TrainNet) of this run: ``TRAIN_NETS`` of the device (CPU --quick: "quick"),
    filtered by --cases."""
    nets = TRAIN_NETS["quick" if cfg.quick and cfg.device == "cpu" else cfg.device]
    return [(f"train/{k}", v) for k, v in nets.items() if cfg.selected(f"train/{k}", k)]


def run_training(cfg: Config, log=print) -> list:
    """One row per (net, variant): step time and peak memory, with ratios to the baseline step
    (``time_x_baseline``, ``mem_x_baseline``) and the speed-up over the hooks approach."""
    rows = []
    for case, net in train_cases(cfg):
        steps, entries = {}, []
        for name in train_variants():
            try:
                steps[name] = TrainStep(cfg, net, name)
                entries.append(Timed(name, lambda i: None, steps[name].step))
            except Exception as exc:  # noqa: BLE001  -- keep going, report it
                steps[name] = describe(exc)
        time_interleaved(entries, 1, cfg.train_warmup, cfg.train_repeats, cfg.device)
        for name, t in steps.items():
            e = next((e for e in entries if e.name == name), None)
            error = t if e is None else e.error
            if error is None:
                try:
                    extra = peak_extra(lambda i: None, t.step, cfg.device)
                except Exception as exc:  # noqa: BLE001
                    error = describe(exc)
            if error is not None:
                rows.append({"case": case, "variant": name, "error": error})
                log(f"  {case} {name}: {error}")
                continue
            rows.append({"case": case, "variant": name, "batch": net.n, "ops": t.ops,
                         **summarize(e.samples), "peak_extra_mb": extra / MB,
                         "peak_mb": (t.resident_bytes() + extra) / MB})
        log(f"  done {case}")
        del steps, entries
    _add_ratios(rows, ("case",), "variant", "baseline", "time_x_baseline", speedup=False)
    _add_ratios(rows, ("case",), "variant", "baseline", "mem_x_baseline", key="peak_mb",
                speedup=False)
    _add_ratios(rows, ("case",), "variant", "sf1_hooks", "speedup_vs_hooks")
    return rows


# ==================================================================================== report
KERNEL_COLUMNS = (("case", "case", "{}"), ("mode", "mode", "{}"), ("provider", "provider", "{}"),
                  ("median ms", "median_ms", "{:.3f}"), ("IQR ms", "iqr_ms", "{:.3f}"),
                  ("x eager", "vs_eager", "{:.2f}"), ("x compile", "vs_compile", "{:.2f}"),
                  ("GB/s", "gbps", "{:.1f}"), ("% copy", "pct_copy", "{:.0f}"),
                  ("peak extra MB", "peak_extra_mb", "{:.1f}"))
TRAIN_COLUMNS = (("case", "case", "{}"), ("variant", "variant", "{}"), ("ops", "ops", "{}"),
                 ("N", "batch", "{}"),
                 ("step ms", "median_ms", "{:.1f}"), ("IQR ms", "iqr_ms", "{:.1f}"),
                 ("time x baseline", "time_x_baseline", "{:.2f}"),
                 ("peak MB", "peak_mb", "{:.0f}"), ("mem x baseline", "mem_x_baseline", "{:.2f}"),
                 ("x faster than hooks", "speedup_vs_hooks", "{:.2f}"))


def format_table(rows, columns, labels, markdown=False) -> str:
    """A plain-text (aligned) or Markdown table; the first ``labels`` columns name the row, and
    a failed row shows its error after them."""
    def cell(r, key, fmt):
        if key == "iqr_ms" and "q3_ms" in r:
            return fmt.format(r["q3_ms"] - r["q1_ms"])
        v = r.get(key)
        return "-" if v is None else fmt.format(v)

    head = [h for h, _, _ in columns]
    body = [[cell(r, k, f) for _, k, f in columns] if "error" not in r else
            [cell(r, k, f) for _, k, f in columns[:labels]] + [f"error: {r['error']}"]
            for r in rows]
    if markdown:
        return "\n".join("| " + " | ".join(c.replace("|", "/") for c in line) + " |"
                         for line in [head, ["---"] * len(head), *body])
    full = [line for line in [head, *body] if len(line) == len(head)]
    width = [max(len(line[i]) for line in full) for i in range(len(head))]

    def fmt_line(cells):
        return "  ".join(c.ljust(w) if i < labels else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, width))).rstrip()
    return "\n".join([fmt_line(head), "  ".join("-" * w for w in width), *map(fmt_line, body)])


def target_lines(kernels, training) -> list:
    """The issue's targets, each with the measured value and PASS/MISS."""
    out = []

    def check(label, value, ok):
        if value is not None:
            out.append(f"{'PASS' if ok(value) else 'MISS'}  {label}: {value:.2f}")

    for r in kernels:
        if (r["op"] == "sharpen_focus_loss" and r["mode"] == "fwd+bwd"
                and r["provider"] not in ("eager", "compile")):
            check(f"{r['case']} {r['provider']} fwd+bwd x eager (target >= 2)",
                  r.get("vs_eager"), lambda v: v >= 2.0)
    for r in training:
        if r["variant"] == "sf1_attnfast":
            check(f"{r['case']} first-order step x baseline (target <= 1.10)",
                  r.get("time_x_baseline"), lambda v: v <= 1.10)
            check(f"{r['case']} first-order x faster than hooks (target >= 2.2)",
                  r.get("speedup_vs_hooks"), lambda v: v >= 2.2)
            check(f"{r['case']} first-order peak memory x baseline (target <= 1.10)",
                  r.get("mem_x_baseline"), lambda v: v <= 1.10)
        if r["variant"] == "sf2_attnfast":
            check(f"{r['case']} second-order step x baseline (target <= 1.5)",
                  r.get("time_x_baseline"), lambda v: v <= 1.5)
    return out


def _git(*args) -> str:
    try:
        return subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), *args],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(cfg: Config) -> dict:
    """Device, library versions, commit and date of this run."""
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = None
    try:
        import attnfast
        version = getattr(attnfast, "__version__", None)
    except Exception:  # noqa: BLE001
        version = None
    return {"device": _device_name(cfg.device), "device_type": cfg.device,
            "cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
            "attnfast": version, "backends": device_backends(cfg.device),
            "commit": _git("rev-parse", "HEAD") or None,
            "dirty": bool(_git("status", "--porcelain")),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "loadavg": _loadavg(), "platform": platform.platform(), "argv": sys.argv[1:]}


def _loadavg():
    """1-minute load average (a busy machine makes every number noisier), None if unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def plot(result: dict, path: Path) -> None:
    """PNG: fwd+bwd speed-up over eager per kernel case and provider (log scale), and the
    training steps' time and peak memory over the baseline step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kern = [r for r in result["kernels"] if r["mode"] == "fwd+bwd" and r.get("vs_eager")]
    train = [r for r in result["training"] if r.get("time_x_baseline")]
    panels = [p for p in (kern, train) if p]
    if not panels:
        return
    cases = list(dict.fromkeys(r["case"] for r in kern))
    provs = [p for p in dict.fromkeys(r["provider"] for r in kern) if p != "eager"]
    tcases = list(dict.fromkeys(f"{r['case']} {r['variant']}" for r in train))
    heights = [max(2.5, 0.28 * len(cases) * max(1, len(provs) / 2)) if kern else 0,
               max(2.5, 0.3 * len(tcases)) if train else 0]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.2 + sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": [h for h in heights if h]})
    meta = result["meta"]
    cfg = result["config"]
    fig.suptitle(f"attnfast on {meta['device']} ({cfg['dtype']}{', quick' if cfg['quick'] else ''}"
                 f", {meta['cpu_threads']} threads, load {meta.get('loadavg')}, "
                 f"{meta['date'][:10]}, {(meta['commit'] or '?')[:8]})", fontsize=10)
    ax_i = 0
    if kern:
        ax, bar = axes[ax_i][0], 0.8 / max(1, len(provs))
        for j, p in enumerate(provs):
            val = {r["case"]: r["vs_eager"] for r in kern if r["provider"] == p}
            ax.barh([i + j * bar for i in range(len(cases))], [val.get(c, 0) for c in cases],
                    height=bar, label=p)
        ax.set_yticks([i + 0.4 - bar / 2 for i in range(len(cases))], cases, fontsize=7)
        ax.set_xscale("log")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.invert_yaxis()
        ax.set_xlabel("fwd+bwd speed-up over eager (x, log)")
        if provs:
            ax.legend(fontsize=8)
        ax_i += 1
    if train:
        ax = axes[ax_i][0]
        pos = range(len(tcases))
        ax.barh([i - 0.2 for i in pos], [r["time_x_baseline"] for r in train], 0.4,
                label="step time")
        ax.barh([i + 0.2 for i in pos], [r.get("mem_x_baseline") or 0 for r in train], 0.4,
                label="peak memory")
        ax.set_yticks(list(pos), tcases, fontsize=8)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.invert_yaxis()
        ax.set_xlabel("x baseline cross-entropy step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(result: dict, out: Path) -> Path:
    """<out>/<device>-<dtype>[-cl]-<date>.{json,md,png}; returns the stem."""
    cfg, meta = result["config"], result["meta"]
    tag = meta["device_type"] if meta["device_type"] == "cpu" else "".join(
        c if c.isalnum() else "_" for c in meta["device"].lower()).strip("_")
    stamp = meta["date"][:19].replace(":", "").replace("-", "")
    stem = out / f"{tag}-{cfg['dtype']}{'-cl' if cfg['channels_last'] else ''}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = [f"# attnfast benchmarks: {meta['device']}", "",
          f"{meta['date']}, torch {meta['torch']}, triton {meta['triton']}, commit "
          f"{meta['commit']}{' (dirty)' if meta['dirty'] else ''}, {cfg['dtype']}"
          f"{', channels_last' if cfg['channels_last'] else ''}"
          f"{', --quick' if cfg['quick'] else ''}, {meta['cpu_threads']} CPU threads, load "
          f"average {meta.get('loadavg')} -> {meta.get('loadavg_end')}; device copy "
          f"{result['copy']['gbps']:.1f} GB/s", ""]
    both = [r for r in result["kernels"] if r["mode"] == "fwd+bwd"]
    for title, rows, columns in (("Training steps", result["training"], TRAIN_COLUMNS),
                                 ("Kernels, forward + backward", both, KERNEL_COLUMNS),
                                 ("Kernels, all modes", result["kernels"], KERNEL_COLUMNS)):
        if rows:
            md += [f"## {title}", "", format_table(rows, columns, 3, True), ""]
    if result["targets"]:
        md += ["## Targets", "", *[f"- {t}" for t in result["targets"]], ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    plot(result, stem.with_suffix(".png"))
    return stem


def run(cfg: Config, kernels=True, training=True, log=print) -> dict:
    """Everything one invocation measures, as the dict written to JSON."""
    log(f"attnfast.bench: {cfg.device} {cfg.dtype}, providers "
        f"{[p.name for p in providers(cfg)]}, {cfg.repeats} repeats")
    meta = environment(cfg)
    copy = copy_bandwidth(cfg)
    log(f"  device copy: {copy['gbps']:.1f} GB/s")
    krows = run_kernels(cfg, copy, log) if kernels else []
    trows = run_training(cfg, log) if training else []
    meta["loadavg_end"] = _loadavg()
    return {"meta": meta, "config": dict(vars(cfg)),
            "copy": copy, "kernels": krows, "training": trows,
            "targets": target_lines(krows, trows)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="attnfast-bench",
        description="attnfast kernels and training steps vs eager PyTorch, torch.compile and the "
                    "hooks approach; prints a table, writes JSON, Markdown and a PNG plot.")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "float64"),
                   default="float32", help="dtype of the big tensors (training: autocast)")
    p.add_argument("--channels-last", action="store_true",
                   help="features/grads (and the training models) in channels_last")
    p.add_argument("--cases", default="",
                   help="comma-separated globs over case names ('pixel_attention/r18_224.inner', "
                        "'train/r18_cifar'), op names or network names; default all")
    p.add_argument("--providers", default="",
                   help="comma-separated subset of eager, compile, cpu, cuda, triton "
                        "(default: all available; --quick leaves out compile)")
    p.add_argument("--quick", action="store_true",
                   help="few repeats, small training batch, no torch.compile (~2 min on CPU)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (torch.set_num_threads); default: torch's choice")
    p.add_argument("--repeats", type=int, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, help="untimed calls before them")
    p.add_argument("--no-kernels", action="store_true")
    p.add_argument("--no-training", action="store_true")
    p.add_argument("--out", type=Path, default=Path("benchmarks") / "results",
                   help="folder for the JSON, Markdown and PNG (default benchmarks/results)")
    return p.parse_args(argv)


def config_from_args(a: argparse.Namespace) -> Config:
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    cfg = Config.for_run(device=a.device, dtype=a.dtype, channels_last=a.channels_last,
                         quick=a.quick, cases=split(a.cases), providers=split(a.providers))
    cfg.repeats = a.repeats or cfg.repeats
    cfg.warmup = a.warmup if a.warmup is not None else cfg.warmup
    if a.threads:
        torch.set_num_threads(a.threads)
    return cfg


def main(argv=None) -> int:
    a = parse_args(argv)
    cfg = config_from_args(a)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result = run(cfg, kernels=not a.no_kernels, training=not a.no_training, log=log)
    for key, columns in (("kernels", KERNEL_COLUMNS), ("training", TRAIN_COLUMNS)):
        if result[key]:
            print(format_table(result[key], columns, 3), "\n")
    print("\n".join(result["targets"]))
    stem = write_results(result, a.out)
    print(f"\nwrote {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
