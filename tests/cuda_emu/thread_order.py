"""Runs in a fresh process (tests/test_cuda_emu.py::test_thread_order_independent): for each op
named on the command line, every case of tests/op_samples.py with N samples (argv[1]), forward
and backward through the emulated CUDA kernels with the threads of each block run in each order
of ``emu_ext.ORDERS`` (forward, warps running ahead of each other, shuffled); prints one line
per op, "start <op>" first, then "ok <op>" or "fail <op>: <what>". A fresh process because the
emulated device's multiprocessor count (EMU_SMS) is read once per process: with EMU_SMS=1 and N
larger than the grid, a block processes several samples, so a missing barrier between samples
shows as well. The samples hold more than one warp of data (K = 33 channels, maps of 5 x 7 and
3 x 12 pixels): a race between two warps changes nothing while only warp 0 has values to reduce.
"""
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402

import emu_ext  # noqa: E402
from attnfast._schema import OPS  # noqa: E402
from op_samples import op_sample_calls  # noqa: E402

SIZE = dict(k=33, hw=(5, 7), last=(3, 12))  # op_samples sizes: several warps of data


def results(ns, name, args):
    """Outputs and input gradients of one case, for a fixed upstream gradient."""
    op = OPS[name]
    outs = getattr(ns, name)(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=gen).to(o) for o in outs[:len(op.visible)]]
    saved = [outs[i] for i in op.saved_index]
    n_in = len(op.tensor_inputs)
    back = getattr(ns, f"{name}_backward")(*grads, *args[:n_in], *saved, *args[n_in:])
    return list(outs) + list(back if isinstance(back, tuple) else (back,))


def main(n, names):
    if not emu_ext.load():
        print(f"error: {emu_ext.error()}", flush=True)
        return 2
    ns = getattr(torch.ops, emu_ext.NAMESPACE)
    for name in names:
        print(f"start {name}", flush=True)
        bad = []
        for i, (op, args) in enumerate(op_sample_calls(n=n, **SIZE)):
            if op != name:
                continue
            got = {}
            for order in emu_ext.ORDERS:
                os.environ["EMU_ORDER"] = order
                got[order] = results(ns, name, args)
            first = emu_ext.ORDERS[0]
            for order in emu_ext.ORDERS[1:]:
                for j, (a, b) in enumerate(zip(got[first], got[order])):
                    if not torch.equal(a, b):
                        bad.append(f"case {i} result {j} differs between {first} and {order}")
        print(f"fail {name}: {'; '.join(bad)}" if bad else f"ok {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2:]))
