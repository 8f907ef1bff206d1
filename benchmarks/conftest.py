"""Options and parametrization of the pytest-benchmark suite: the cases of ``attnfast.bench``
(through its public functions only).

    pytest benchmarks/ --benchmark-only [--bench-device cuda] [--bench-dtype bfloat16]
        [--bench-channels-last] [--bench-quick] [--bench-cases 'sharpen_focus_loss*,train/*']
        [--bench-providers eager,cpu] [--bench-threads 1]

Not part of the unit tests (``testpaths`` is ``tests``). Each test records the bytes it moves,
its GB/s and its peak extra memory in ``extra_info`` (see ``--benchmark-json``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a source checkout that was not `pip install -e .`-ed
    sys.path.insert(0, str(ROOT))

from attnfast import bench  # noqa: E402


def pytest_addoption(parser):
    g = parser.getgroup("attnfast-bench", "attnfast benchmark cases (see attnfast.bench)")
    g.addoption("--bench-device", choices=("cpu", "cuda"), default=None,
                help="device (default: cuda when available, else cpu)")
    g.addoption("--bench-dtype", default="float32", choices=("float32", "float16", "bfloat16",
                                                             "float64"))
    g.addoption("--bench-channels-last", action="store_true")
    g.addoption("--bench-quick", action="store_true", help="few rounds, small training batch")
    g.addoption("--bench-cases", default="", help="comma-separated globs (as --cases)")
    g.addoption("--bench-providers", default="", help="comma-separated provider names")
    g.addoption("--bench-threads", type=int, default=None, help="torch CPU threads")


def _config(config) -> bench.Config:
    if not hasattr(config, "_attnfast_bench"):
        config._attnfast_bench = bench.config(
            config.getoption("--bench-device"), config.getoption("--bench-dtype"),
            channels_last=config.getoption("--bench-channels-last"),
            quick=config.getoption("--bench-quick"), cases=config.getoption("--bench-cases"),
            providers=config.getoption("--bench-providers"),
            threads=config.getoption("--bench-threads"))
    return config._attnfast_bench


@pytest.fixture(scope="session")
def bench_config(request) -> bench.Config:
    return _config(request.config)


def pytest_generate_tests(metafunc):
    cfg = _config(metafunc.config)
    if "kernel" in metafunc.fixturenames:
        params = [(case, prov.name, mode) for case in bench.kernel_cases(cfg)
                  for prov in bench.kernel_providers(cfg) for mode in bench.MODES]
        metafunc.parametrize("kernel", params,
                             ids=[f"{c.name}-{m}-{p}" for c, p, m in params])
    if "training" in metafunc.fixturenames:
        params = [(case, net, v) for case, net in bench.training_cases(cfg)
                  for v in bench.training_variants()]
        metafunc.parametrize("training", params, ids=[f"{c}-{v}" for c, _, v in params])
