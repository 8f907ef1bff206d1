"""Load the compiled extension: the one built at install (``attnfast._C``), else compile it now
with ``torch.utils.cpp_extension.load`` (cached under ``$ATTNFAST_BUILD_DIR`` or
``~/.cache/attnfast``), saying so once, before the first compile, with how long it takes and
how to build it at install instead (:data:`NOT_BUILT`).

Loading registers the CPU kernels of the ``attnfast::*`` ops, and their CUDA kernels when the
extension was built with CUDA; the schemas themselves are defined here from ``attnfast._schema``
(the C++ sources hold none).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

_state: dict = {}

# Said once, before the first compile of an install that lacks the extension (typically pip's
# default build isolation, whose build environment has no torch).
NOT_BUILT = (
    "attnfast: the {kind} extension was not built at install (pip's default build isolation "
    "hides torch from the build); compiling it now into {build}, once: about 5 minutes{longer}. "
    "To build it at install instead: `pip install torch` first, then `pip install "
    "--no-build-isolation attnfast` (in a checkout: `pip install --no-build-isolation -e .` or "
    "`make install`). ATTNFAST_NO_EXTENSION=1 skips it (eager reference backend).")


def _csrc() -> Path:
    here = Path(__file__).resolve().parent
    for cand in (here / "_csrc", here.parent / "csrc"):
        if (cand / "module.cpp").is_file():
            return cand
    raise RuntimeError("attnfast: C++ sources not found next to the package; reinstall with "
                       "`pip install -e . --no-build-isolation`")


def _jit():
    from torch.utils import cpp_extension as ce

    from ._sources import LDFLAGS, flags, sources
    csrc = _csrc()
    with_cuda = torch.version.cuda is not None and ce.CUDA_HOME is not None
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    build = Path(os.environ.get("ATTNFAST_BUILD_DIR", Path.home() / ".cache" / "attnfast"))
    build = build / f"torch{torch.__version__}".replace("+", "_")
    build.mkdir(parents=True, exist_ok=True)
    if not (build / "attnfast_C.so").is_file():  # compiled before: loading it takes seconds
        print(NOT_BUILT.format(kind="C++/CUDA" if with_cuda else "C++", build=build,
                               longer=", longer with CUDA" if with_cuda else ""),
              file=sys.stderr, flush=True)
    f = flags(with_cuda)
    ce.load("attnfast_C", sources(csrc, with_cuda), extra_cflags=f["cxx"],
            extra_cuda_cflags=f.get("nvcc"), extra_ldflags=LDFLAGS,
            extra_include_paths=[str(csrc)],
            build_directory=str(build), with_cuda=with_cuda, is_python_module=False)
    return str(build / "attnfast_C.so")


def _define(ns: str):
    """Define every op of ``_schema.SCHEMAS`` in namespace ``ns`` (``torch.library``, kind "DEF")
    and return the ``Library``; dropping it removes the definitions. A loaded C++ kernel whose
    signature does not match its schema makes this raise a ``RuntimeError`` that names the op,
    the schema and the kernel's inferred signature."""
    from ._schema import SCHEMAS
    lib = torch.library.Library(ns, "DEF")
    try:
        for name, schema in SCHEMAS.items():
            lib.define(name + schema)
    except Exception:
        del lib  # its finalizer removes the ops defined so far
        raise
    return lib


def load() -> bool:
    """Load the extension once; True on success. The failure reason is kept for error messages.

    Order: the C++ library first (its ``TORCH_LIBRARY_IMPL`` blocks register kernels for ops not
    yet defined, which the dispatcher allows), then the schemas of ``_schema.SCHEMAS``
    (``_define``), then autograd and fake kernels. Defining after loading makes a kernel
    whose C++ signature does not match its schema a ``RuntimeError`` here, kept as the reason;
    defining first would turn the same mismatch into an uncatchable abort inside ``dlopen``."""
    if "ok" not in _state:
        try:
            if os.environ.get("ATTNFAST_NO_EXTENSION"):
                raise RuntimeError("disabled by ATTNFAST_NO_EXTENSION")
            try:
                from . import _C  # built at install
                _state["path"] = _C.__file__
            except ImportError:
                _state["path"] = _jit()
            from . import _register
            _state["library"] = _define("attnfast")
            _register.register("attnfast", fakes=True)
            _state["ok"] = True
        except Exception as exc:  # keep the reason: it goes into every "not available" error
            _state["ok"], _state["error"] = False, f"{type(exc).__name__}: {exc}"
    return _state["ok"]


def error() -> str:
    return _state.get("error", "")


def has_cuda_kernels() -> bool:
    """True when the loaded extension carries CUDA kernels."""
    from ._compat import has_kernel
    return load() and has_kernel("attnfast::pixel_attention", "CUDA")


def cuda_arch_list() -> list:
    """The GPU architectures the loaded extension's CUDA code was compiled for, as nvcc saw them
    (``__CUDA_ARCH_LIST__``, csrc/cuda/arch_list.cu), e.g. ``["sm_80", "sm_90"]``; ``[]`` when
    it has no CUDA code (or did not load)."""
    if not load() or not has_cuda_kernels():
        return []
    import ctypes
    lib = ctypes.CDLL(_state["path"])
    if not hasattr(lib, "attnfast_cuda_arch_list"):
        return []
    lib.attnfast_cuda_arch_list.restype = ctypes.c_char_p
    text = lib.attnfast_cuda_arch_list().decode()
    return [f"sm_{int(a) // 10}" for a in text.split(",") if a.strip()]
