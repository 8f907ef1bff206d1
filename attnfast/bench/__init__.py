"""Benchmarks: attnfast kernels and training steps against eager PyTorch, torch.compile and the
hooks approach. ``python -m attnfast.bench --help`` (console script ``attnfast-bench``); the
pytest-benchmark suite in ``benchmarks/`` runs the same cases through the public functions
below.

What is measured, side by side in one run (speed is a ratio, never an absolute time):

* Kernel cases: every op and the fused loss at real network shapes (:func:`kernel_cases`).
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
* Training cases (:func:`training_variants`): one SGD step on synthetic data -- baseline
  cross-entropy, Sharpen Focus first/second order with attnfast ops (backend auto) and with
  eager ops (``use_backend("torch")``), and the hooks approach (``HooksSharpenFocus``); step time
  and peak memory (resident + peak extra) as ratios to the baseline step.

Modules: ``cases`` (settings, kernel and training cases), ``providers``, ``timing`` (interleaved
timing, cache flushing, peak memory, copy bandwidth), ``workloads`` (a case's inputs and
closures, a training step), ``hooks`` (the hooks approach), ``measure`` (a whole run),
``report`` (tables, targets, environment, plot, files), ``cli`` (:func:`main`).
"""
from __future__ import annotations

from . import cases as _cases
from . import measure as _measure
from . import providers as _providers
from . import report as _report
from . import timing as _timing
from . import workloads as _workloads
from .cases import MB, MODES, Config
from .cli import main

__all__ = ["MB", "MODES", "Config", "config", "kernel_cases", "kernel_providers",
           "kernel_workload", "cache_flusher", "wall_clock_pair", "peak_extra", "training_cases",
           "training_variants", "training_step", "run", "write_results", "main"]


def config(device=None, dtype="float32", *, channels_last=False, quick=False, cases=(),
           providers=(), repeats=None, warmup=None, threads=None) -> Config:
    """The settings of a run, as the command line's options give them: ``device`` "cpu" or
    "cuda" (default: cuda when visible), ``dtype`` of the big tensors, ``cases`` / ``providers``
    as lists or comma-separated strings (globs over case, op or network names; provider names),
    ``quick`` (few repeats, small training batch, no torch.compile), ``repeats`` / ``warmup``
    overriding the defaults; ``threads`` sets torch's CPU threads."""
    return _cases.make_config(device, dtype, channels_last=channels_last, quick=quick,
                              cases=cases, providers=providers, repeats=repeats, warmup=warmup,
                              threads=threads)


def kernel_cases(cfg: Config) -> list:
    """The kernel cases of the run (``Case``: ``name``, ``op``, ``net``): every op at the
    device's network shapes, filtered by ``cfg.cases``."""
    return _cases.selected_kernel_cases(cfg)


def kernel_providers(cfg: Config) -> list:
    """The providers of the run (``Provider``: ``name``, ``fn(op)`` giving the callable,
    ``context()`` to wrap every call in): eager, compile, each attnfast backend of the device."""
    return _providers.providers(cfg)


def kernel_workload(case, cfg: Config):
    """The rotating input sets and fixed upstream gradients of ``case``, shared by every
    provider: ``closures(fn, mode)`` gives (prepare(i), run(state)); ``n_sets``; ``bytes[mode]``,
    the minimum a call moves."""
    return _workloads.KernelWorkload(case, cfg)


def cache_flusher(cfg: Config):
    """A callable that evicts the caches (writes a ``cfg.rotate_bytes`` buffer)."""
    return _timing.cache_flusher(cfg)


def wall_clock_pair(prepare, run, n_sets: int, device, flush=None):
    """(setup, target) for a wall-clock timer such as pytest-benchmark's ``pedantic``: ``setup``
    prepares the next rotating set and flushes the caches, untimed; ``target`` runs and
    synchronizes the device."""
    return _timing.wall_clock_pair(prepare, run, n_sets, device, flush)


def peak_extra(prepare, run, device) -> int:
    """Bytes allocated at the peak of one ``run(prepare(0))`` beyond what existed before it."""
    return _timing.peak_extra(prepare, run, device)


def training_cases(cfg: Config) -> list:
    """(case name, network) pairs of the run's training cases, filtered by ``cfg.cases``."""
    return _cases.selected_training_cases(cfg)


def training_variants() -> list:
    """Names of the training-step variants: baseline, Sharpen Focus first/second order with
    attnfast ops and with eager ops, the hooks approach."""
    return list(_workloads.train_variants())


def training_step(cfg: Config, net, variant: str):
    """One training variant on a fixed synthetic batch, one step already taken: ``step()`` runs
    another SGD step; ``ops`` names the backend; ``resident_bytes()`` what stays allocated."""
    return _workloads.TrainStep(cfg, net, variant)


def run(cfg: Config, kernels=True, training=True, log=print) -> dict:
    """Everything one invocation measures (meta, config, copy bandwidth, kernel and training
    rows, targets), as the dict written to JSON."""
    return _measure.run(cfg, kernels, training, log)


def write_results(result: dict, out) -> object:
    """``<out>/<device>-<dtype>[-cl]-<date>.{json,md,png}`` of a :func:`run`; returns the stem."""
    return _report.write_results(result, out)
