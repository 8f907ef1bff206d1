"""Training-step cases of ``attnfast.bench`` under pytest-benchmark: one test per (network,
variant) -- baseline cross-entropy, Sharpen Focus first/second order with attnfast ops and with
eager ops, and the hooks approach -- each a full SGD step on a fixed synthetic batch.

Compare the variants of one network within its group (``--benchmark-group-by=group``);
``extra_info``: batch, the ops' backend, peak memory (resident + peak extra) in MB."""
from __future__ import annotations

from attnfast import bench


def test_training_step(benchmark, bench_config, training):
    case, net, variant = training
    cfg = bench_config
    step = bench.training_step(cfg, net, variant)
    benchmark.group = case
    setup, target = bench.wall_clock_pair(lambda i: None, step.step, 1, cfg.device)
    benchmark.pedantic(target, setup=setup, rounds=cfg.train_repeats,
                       warmup_rounds=cfg.train_warmup)
    extra = bench.peak_extra(lambda i: None, step.step, cfg.device)
    benchmark.extra_info.update(batch=net.n, ops=step.ops, variant=variant,
                                peak_mb=(step.resident_bytes() + extra) / bench.MB)
