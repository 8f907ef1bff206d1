"""The emulated CUDA backend: attnfast's CUDA build, run on the CPU (docs/CUDA_EMULATION.md).

Compiles with ``torch.utils.cpp_extension.load`` (ninja; cached, so a warm run only links or
does nothing) one library from

* every ``csrc/cuda/*.cu`` kernel file, as host C++ under ``-DATTNFAST_HOST_EMU``
  (``csrc/cuda/host_emu.h``: each block runs as 256 cooperative fibers with real barriers);
* every ``csrc/cuda/glue/*.cpp`` and the shared host layer ``csrc/host/*.cpp``, unchanged, with
  ``glue_prelude.h`` before the glue (it registers into ``attnfast_emu`` on the CPU dispatch key,
  with the CUDA target's rules) and ``stubs/c10/cuda/*.h`` for the device guard, stream and
  launch checks;
* ``runtime_stubs.cpp`` for the CUDA runtime calls of ``csrc/cuda/common.cu``.

The file lists come from ``attnfast/_sources.py`` (the real extension's), so a new kernel or glue
file is picked up. ``load()`` then defines every schema of ``attnfast._schema`` in namespace
``attnfast_emu`` and registers autograd and fake kernels for it; within ``as_backend()`` the
backend ``"cuda_emu"`` is in ``attnfast.backend.BACKENDS`` (CPU tensors, never picked by
"auto"), so the public ops run on it with ``attnfast.use_backend("cuda_emu")``.

Environment: ``ATTNFAST_EMU_BUILD`` (build directory; default ``.pytest_cache/cuda_emu/<torch>``
in the repository), ``CUDA_HOME`` (where ``include/cuda_runtime.h`` is; else nvcc's toolkit,
else /usr/local/cuda), ``MAX_JOBS`` (parallel compiles, default 2), ``EMU_SMS`` / ``EMU_SMEM``
(the emulated device's multiprocessor count and opt-in shared memory per block, read once).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CSRC = ROOT / "csrc"
NAME = "attnfast_cuda_emu"
NAMESPACE = "attnfast_emu"
BACKEND = "cuda_emu"
# EMU_ORDER values the thread-order tests compare (csrc/cuda/host_emu.h): threads forward between
# barriers (the reference run), each warp running ahead to the next block barrier (warps and
# threads reversed), shuffled
ORDERS = ("forward", "warps", "shuffle")
_state: dict = {}


def cuda_include() -> Path | None:
    """The CUDA toolkit's include directory (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h), or None."""
    cands = []
    if os.environ.get("CUDA_HOME"):
        cands.append(Path(os.environ["CUDA_HOME"]) / "include")
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(Path(os.path.realpath(nvcc)).parent.parent / "include")
    cands.append(Path("/usr/local/cuda/include"))
    for c in cands:
        if all((c / h).is_file() for h in ("cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h")):
            return c
    return None


def build_dir() -> Path:
    tag = f"torch{torch.__version__}".replace("+", "_")
    default = ROOT / ".pytest_cache" / "cuda_emu" / tag
    return Path(os.environ.get("ATTNFAST_EMU_BUILD", default))


def _write(path: Path, text: str) -> str:
    """Write `text` unless the file already holds it (keeps ninja's timestamps for warm runs)."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return str(path)


def _sources(build: Path) -> list:
    """One wrapper per kernel / glue file (a .cu is not compiled by nvcc here, and the glue gets
    the prelude first), the host layer as is, and the runtime stubs."""
    sys.path.insert(0, str(ROOT / "attnfast"))
    try:
        from _sources import sources  # noqa: E402  (standard library only)
    finally:
        sys.path.pop(0)
    src = build / "src"
    src.mkdir(parents=True, exist_ok=True)
    out = []
    for f in map(Path, sources(CSRC, True)):
        rel = f.relative_to(CSRC).as_posix()
        if f.suffix == ".cu":
            out.append(_write(src / f"kernel_{f.stem}.cpp", f'#include "{rel}"\n'))
        elif rel.startswith("cuda/glue/"):
            out.append(_write(src / f"glue_{f.stem}.cpp",
                              f'#include "glue_prelude.h"\n#include "{rel}"\n'))
        elif rel.startswith("host/"):
            out.append(str(f))
    return out + [str(HERE / "runtime_stubs.cpp")]


def build(verbose: bool = False) -> Path:
    """Compile (or find up to date) the emulated backend and load it (its kernels register);
    returns the library's path."""
    inc = cuda_include()
    if inc is None:
        raise RuntimeError("CUDA headers (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h) not found: "
                           "set CUDA_HOME or put nvcc on PATH")
    from torch.utils import cpp_extension as ce
    build = build_dir()
    build.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MAX_JOBS", "2")
    lock = build / "lock"  # left behind by a killed build, it would make load() wait forever
    if lock.exists() and time.time() - lock.stat().st_mtime > 900:
        lock.unlink()
    start = time.time()
    path = ce.load(NAME, _sources(build),
                   extra_cflags=["-O1", "-std=c++17", "-DATTNFAST_HOST_EMU",
                                 "-Wno-unknown-pragmas"],
                   # stubs first: their c10/cuda/*.h shadow the CUDA build of torch's, if any
                   extra_include_paths=[str(HERE / "stubs"), str(HERE), str(CSRC), str(inc)],
                   # the library's own CUDA runtime stubs, even where torch loaded libcudart
                   extra_ldflags=["-Wl,-Bsymbolic"],
                   build_directory=str(build), with_cuda=False, is_python_module=False,
                   verbose=verbose)
    _state["build_s"] = time.time() - start
    return Path(path)


def load() -> bool:
    """Build, load and register the emulated backend once; True on success (else error())."""
    if "ok" in _state:
        return _state["ok"]
    try:
        from attnfast import _build, _register
        build()
        _state["library"] = _build._define(NAMESPACE)
        _register.register(NAMESPACE, fakes=True)
        _state["ok"] = True
    except Exception as exc:  # kept for the test's failure / skip message
        _state["ok"], _state["error"] = False, f"{type(exc).__name__}: {exc}"
    return _state["ok"]


@contextlib.contextmanager
def as_backend():
    """Within: ``attnfast.use_backend("cuda_emu")`` runs the public ops on the emulated backend
    (CPU tensors; "auto" never picks it). Needs ``load()`` first."""
    from attnfast.backend import BACKENDS, Backend
    BACKENDS[BACKEND] = Backend(
        BACKEND, load=lambda: _state.get("ok", False),
        namespace=lambda: getattr(torch.ops, NAMESPACE), serves=lambda dev: dev == "cpu",
        auto=(), float64=False, error=error, how="see tests/cuda_emu/emu_ext.py")
    try:
        yield
    finally:
        del BACKENDS[BACKEND]


def error() -> str:
    return _state.get("error", "")


def build_seconds() -> float:
    return _state.get("build_s", 0.0)
