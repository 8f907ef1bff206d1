"""Timing and memory of one call: providers taking turns call by call on rotating input sets
with the caches flushed before each call, robust statistics, the peak extra memory, and the
bandwidth of a plain device copy (the "% copy" roofline). See :mod:`attnfast.bench` for the
method."""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch

from .cases import Config


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
    (outputs kept alive until the end count). See :mod:`attnfast.bench` for the CPU method."""
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


def nbytes(ts) -> int:
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


def describe(exc: Exception) -> str:
    """One line naming the error. Only this is kept: a kept exception would hold its traceback's
    frames, and with them the tensors of the failed call (after a CUDA OOM, gigabytes)."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
