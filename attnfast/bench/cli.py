"""``attnfast-bench`` / ``python -m attnfast.bench``: options, the run, the table on stdout and
the result files (see :mod:`attnfast.bench`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cases import Config, case_names, default_device, make_config, unmatched
from .measure import run
from .report import (KERNEL_COLUMNS, LEGEND, TRAIN_COLUMNS, format_table, noisy_lines,
                     write_results)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="attnfast-bench",
        description="attnfast kernels and training steps vs eager PyTorch, torch.compile and the "
                    "hooks approach; prints a table, writes JSON, Markdown and a PNG plot.")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default=default_device())
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
    p.add_argument("--list", action="store_true",
                   help="list the case names --cases matches (with their op and network) and exit")
    p.add_argument("--no-kernels", action="store_true")
    p.add_argument("--no-training", action="store_true")
    p.add_argument("--out", type=Path, default=Path("benchmarks") / "results",
                   help="folder for the JSON, Markdown and PNG (default benchmarks/results)")
    return p.parse_args(argv)


def config_from_args(a: argparse.Namespace) -> Config:
    """The :class:`Config` of parsed options (sets torch's CPU threads when --threads says)."""
    return make_config(a.device, a.dtype, channels_last=a.channels_last, quick=a.quick,
                       cases=a.cases, providers=a.providers, repeats=a.repeats, warmup=a.warmup,
                       threads=a.threads)


def main(argv=None) -> int:
    """Run the benchmarks of the command line ``argv``; prints the tables, a warning for
    measurements whose repeats disagree, the targets and what the columns mean; writes the JSON,
    Markdown and PNG files; returns 0 (``--list``: prints the case names). A --cases pattern
    that matches no case is refused with the list of names (SystemExit), before measuring."""
    a = parse_args(argv)
    cfg = config_from_args(a)
    if a.list:
        print("\n".join(f"{name:32s} {what}" for name, what in case_names(cfg)))
        return 0
    missing = unmatched(cfg)
    if missing:
        names = ", ".join(name for name, _ in case_names(cfg))
        raise SystemExit(f"attnfast.bench: --cases {','.join(missing)} matches no case (globs "
                         f"over case, op or network names; --list shows them all): {names}")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result = run(cfg, kernels=not a.no_kernels, training=not a.no_training, log=log)
    for key, columns in (("kernels", KERNEL_COLUMNS), ("training", TRAIN_COLUMNS)):
        if result[key]:
            print(format_table(result[key], columns, 3), "\n")
    print("\n".join([*noisy_lines(result), *result["targets"], "", *LEGEND]))
    stem = write_results(result, a.out)
    print(f"\nwrote {stem}.json, .md, .png")
    return 0

