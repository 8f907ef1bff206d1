"""The boundary table (tests/boundaries.py) on every backend of this machine and the eager
reference: forward and backward at the exact points where docs/SPEC.md fixes a rule (ReLU'(0),
clamps at eps, a signed map's max exactly 0, ties), against values pinned by hand. The emulated
CUDA kernels run the same table in tests/test_cuda_emu.py."""
import pytest

from boundaries import TABLE, dtypes_for, run
from helpers import BACKENDS, dtypes, require


def _params():
    out = []
    for backend in BACKENDS + ["torch"]:
        for entry in TABLE:
            for dt in dtypes_for(entry, dtypes(backend)):
                out.append(pytest.param(backend, entry, dt,
                                        id=f"{backend}-{entry.name}-{str(dt)[6:]}"))
    return out


@pytest.mark.parametrize("backend,entry,dtype", _params())
def test_boundary(backend, entry, dtype):
    require(backend)
    run(entry, backend, dtype)
