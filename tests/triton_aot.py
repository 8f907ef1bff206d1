"""Ahead-of-time compile of every Triton kernel launch for real GPUs (sm_90, sm_80), no GPU needed:
catches what the interpreter lets through (types of loop-carried values, layouts, vectorized
loads of half types). Run by tests/test_triton_kernels.py::test_kernels_compile_for_sm90;
standalone: ``python tests/triton_aot.py [--archs 90,80] [--jobs 2]`` (TRITON_INTERPRET unset).

1. Capture. The Triton ops (``torch.ops.attnfast_triton``, forward and backward) are called on CPU
   tensors in float32, float16 and bfloat16, NCHW and channels_last, with every kernel-selecting
   option of ``op_samples.op_sample_calls``, at a small shape and a large one (maps over ``MAP_TILE``
   pixels: the chunked path; K = 256 under a GPU's split policy: partial sums). No kernel runs:
   ``JITFunction.run`` and ``Autotuner.run`` are intercepted and each launch is recorded with the
   specialization the JIT computes from its arguments on a GPU (the same ``specialize_impl``):
   pointer dtypes, integers equal to 1 as constants (the unit stride of each layout), 16-byte
   divisibility of pointers and integers.
2. Compile. Every distinct launch to a cubin for each arch (``triton.compile`` with a
   ``GPUTarget``), two processes at a time. An autotuned kernel's launches take its configs in
   turn, and every config of every kernel is compiled at least once.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("triton_aot.py: unset TRITON_INTERPRET (the kernels must be JIT functions)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction, native_specialize_impl  # noqa: E402

import attnfast.triton_kernels  # noqa: E402,F401  registers torch.ops.attnfast_triton
from op_samples import backward_args, op_sample_calls  # noqa: E402

common = sys.modules["attnfast.triton_kernels._common"]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("nchw", "channels_last")
SHAPES = (dict(n=2, k=3, hw=(4, 5), last=(2, 3)),          # one tile, no split
          dict(n=2, k=256, hw=(72, 72), last=(36, 36)))    # chunked maps, split reductions
GPU_PROGRAMS = 4 * 132  # the split policy's target on an H100-class GPU (TUNING)

_launches: dict = {}  # key -> (JITFunction, signature, constexprs, attrs, options, Autotuner)


def _record(fn: JITFunction, args, kwargs, tuner=None):
    """The launch ``fn[grid](*args, **kwargs)`` as the JIT specializes it (jit.py binder)."""
    names = fn.arg_names
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    options = {k: v for k, v in kwargs.items() if k not in names and v is not None}
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        value = bound[p.name] if p.name in bound else p.default
        if p.is_constexpr:
            signature[p.name], constexprs[p.name] = "constexpr", value
            continue
        kind, attr = native_specialize_impl(BaseBackend, value, p.is_const,
                                            not p.do_not_specialize,
                                            not p.do_not_specialize_on_alignment)
        signature[p.name] = kind
        if kind == "constexpr":
            constexprs[p.name] = attr
        elif isinstance(attr, str):
            attrs[(i,)] = BaseBackend.parse_attr(attr)
    key = (fn.__name__, fn.fn.__module__, tuple(signature.items()),
           tuple((k, repr(v)) for k, v in sorted(constexprs.items())),
           tuple(sorted((k, repr(v)) for k, v in attrs.items())), tuple(sorted(options.items())))
    _launches.setdefault(key, (fn, signature, constexprs, attrs, options, tuner))


def _jit_run(self, *args, grid, warmup, **kwargs):
    _record(self, args, kwargs)


def _tuner_run(self, *args, **kwargs):
    kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
    _record(self.fn, args, kwargs, tuner=self)


def capture():
    """Call every op forward and backward on every dtype, layout and shape; launches recorded."""
    ops = torch.ops.attnfast_triton
    saved = JITFunction.run, Autotuner.run, dict(common.TUNING)
    JITFunction.run, Autotuner.run = _jit_run, _tuner_run
    common.TUNING["target_programs"] = GPU_PROGRAMS
    try:
        for shape in SHAPES:
            for dtype in DTYPES:
                for layout in LAYOUTS:
                    for name, args in op_sample_calls(dtype, layout, **shape):
                        outs = getattr(ops, name)(*args)
                        getattr(ops, f"{name}_backward")(*backward_args(name, args, outs))
    finally:
        JITFunction.run, Autotuner.run = saved[0], saved[1]
        common.TUNING.clear()
        common.TUNING.update(saved[2])


def _features(key):
    """What a launch covers: its kernel's argument types (dtypes; the unit stride, i.e. the
    layout; int widths), its constexpr variant, its divisibility pattern."""
    fn, signature, constexprs, attrs, _, tuner = _launches[key]
    tuned = set(tuner.configs[0].kwargs) if tuner else set()
    name = key[0]
    return {("types", name, tuple(v for k, v in signature.items() if k not in constexprs
                                  or not fn.params[fn.arg_names.index(k)].is_constexpr)),
            ("variant", name, tuple((k, repr(v)) for k, v in constexprs.items()
                                    if fn.params[fn.arg_names.index(k)].is_constexpr
                                    and k not in tuned)),
            ("align", name, key[4])}


def cover():
    """Launch keys, greedily chosen until every feature of every launch is covered."""
    todo = {key: _features(key) for key in _launches}
    left, chosen = set().union(*todo.values()), []
    while left:
        key = max(todo, key=lambda k: len(todo[k] & left))
        chosen.append(key)
        left -= todo.pop(key)
    return chosen


def jobs(keys, archs):
    """(launch key, config or None, arch) to compile: configs of autotuned kernels in turn."""
    out, turn, seen = [], {}, {}
    for key in keys:
        tuner = _launches[key][-1]
        if tuner is None:
            out += [(key, None, a) for a in archs]
            continue
        i = turn[id(tuner)] = turn.get(id(tuner), -1) + 1
        config = tuner.configs[i % len(tuner.configs)]
        seen.setdefault(id(tuner), (key, set()))[1].add(i % len(tuner.configs))
        out += [(key, config, a) for a in archs]
    for key, done in seen.values():  # configs no launch took: on the kernel's first launch
        tuner = _launches[key][-1]
        out += [(key, c, a) for j, c in enumerate(tuner.configs) if j not in done for a in archs]
    return out


def _compile(job):
    key, config, arch = job
    fn, signature, constexprs, attrs, options, _ = _launches[key]
    signature, constexprs, options = dict(signature), dict(constexprs), dict(options)
    if config is not None:
        for k, v in config.all_kwargs().items():
            if k in signature:
                signature[k], constexprs[k] = "constexpr", v
            elif v is not None:
                options[k] = v
    try:
        triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                       target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as exc:  # the whole story goes into the report
        return (f"sm_{arch} {fn.__name__} {signature} constexprs {constexprs} options {options}: "
                f"{type(exc).__name__}: {exc}")
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="90,80")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--all", action="store_true",
                        help="every distinct launch, not a covering subset")
    a = parser.parse_args()
    archs = [int(x) for x in a.archs.split(",")]
    t0 = time.time()
    capture()
    keys = list(_launches) if a.all else cover()
    todo = jobs(keys, archs)
    kernels = {k[0] for k in _launches}
    print(f"captured {len(_launches)} distinct launches of {len(kernels)} kernels "
          f"({time.time() - t0:.1f} s); compiling {len(keys)} of them "
          f"({'all' if a.all else 'a set covering every dtype x layout, variant and alignment'}"
          f" of each kernel) plus untaken autotuning configs: {len(todo)} compiles for "
          f"sm_{', sm_'.join(map(str, archs))}", flush=True)
    with ProcessPoolExecutor(a.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        errors = [e for e in pool.map(_compile, todo) if e]
    for e in errors:
        print("FAILED", e[:3000], file=sys.stderr)
    print(f"compiled {len(todo) - len(errors)} of {len(todo)} in {time.time() - t0:.1f} s "
          f"(triton {triton.__version__}); kernels: {', '.join(sorted(kernels))}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
