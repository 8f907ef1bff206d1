"""Kernel cases of ``attnfast.bench`` under pytest-benchmark: one test per (case, provider,
mode), the same inputs, rotating buffer sets and upstream gradients as the CLI.

``extra_info`` of each test: ``bytes`` (the minimum the call must move), ``gbps`` (bytes over
the median), ``peak_extra_mb`` (peak memory beyond what existed before the call; see
``attnfast.bench.peak_extra`` for how it is counted on CPU)."""
from __future__ import annotations

from attnfast import bench

_current: dict = {}   # the workload and op callables of the case now running (one at a time)


def _prepared(case, provider_name, cfg):
    """The case's workload (built once per case) and the provider with its callable
    (built once per case and provider: torch.compile compiles once, not per mode)."""
    if _current.get("case") != case.name:
        _current.clear()
        _current.update(case=case.name, work=bench.kernel_workload(case, cfg), fns={},
                        flush=bench.cache_flusher(cfg))
    fns = _current["fns"]
    if provider_name not in fns:
        prov = next(p for p in bench.kernel_providers(cfg) if p.name == provider_name)
        fns[provider_name] = (prov, prov.fn(case.op))
    return _current["work"], fns[provider_name]


def test_kernel(benchmark, bench_config, kernel):
    case, provider_name, mode = kernel
    cfg = bench_config
    work, (prov, fn) = _prepared(case, provider_name, cfg)
    benchmark.group = f"{case.name} {mode}"
    with prov.context():
        prepare, run = work.closures(fn, mode)
        setup, target = bench.wall_clock_pair(prepare, run, work.n_sets, cfg.device,
                                              _current["flush"])
        benchmark.pedantic(target, setup=setup, rounds=cfg.repeats, warmup_rounds=cfg.warmup)
        peak = bench.peak_extra(prepare, run, cfg.device)
    benchmark.extra_info.update(bytes=work.bytes[mode], peak_extra_mb=peak / bench.MB,
                                provider=provider_name)
    if benchmark.stats is not None:  # None under --benchmark-disable (one untimed call)
        benchmark.extra_info["gbps"] = work.bytes[mode] / benchmark.stats.stats.median / 1e9
