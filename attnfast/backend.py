"""Backend choice: ``set_backend``, ``use_backend``, ``get_backend``, ``available_backends``.

Backends compute the same functions (``attnfast.reference``; docs/SPEC.md), each one record in
``BACKENDS`` below: how it is loaded, its namespace of kernels (the interface of
``attnfast._schema``), the devices it serves, whether ``"auto"`` may pick it and how to get it when
it is missing.

* ``"cuda"``   -- CUDA C++ kernels of the ``attnfast._C`` extension, when it was built with CUDA.
* ``"triton"`` -- Triton kernels (``torch.ops.attnfast_triton``): CUDA tensors, or CPU tensors when
  ``TRITON_INTERPRET=1`` was set before Triton was imported.
* ``"cpu"``    -- C++ CPU kernels of the ``attnfast._C`` extension (``torch.ops.attnfast``).
* ``"torch"``  -- the eager reference (``attnfast._eager``); autograd of it is the backward.
  Always there.
* ``"auto"`` (default) -- the first of the above, in that order, that serves the tensors'
  device and is available: CUDA tensors ``cuda``, ``triton``, ``torch``; CPU tensors ``cpu``,
  ``torch`` (with a one-time warning saying why the extension is missing).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from . import _build, _eager


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_triton: dict = {}


def _load_triton() -> bool:
    """Import the Triton kernels once (registers ``attnfast_triton::*``); True on success."""
    if "ok" not in _triton:
        try:
            from . import _register, triton_kernels  # noqa: F401
            _register.register("attnfast_triton", fakes=False)
            _triton["ok"] = True
        except Exception as exc:  # keep the reason for the error message
            _triton["ok"], _triton["error"] = False, f"{type(exc).__name__}: {exc}"
    return _triton["ok"]


@dataclass(frozen=True)
class Backend:
    """One concrete backend."""
    name: str
    load: Callable[[], bool]          # load it once; True when its kernels are there
    namespace: Callable[[], object]   # the object whose attributes are the kernel interface
    serves: Callable[[str], bool]     # device type -> can it run tensors there
    auto: tuple                       # device types on which "auto" may pick it
    float64: bool                     # accepts float64 inputs
    error: Callable[[], str] = lambda: ""   # why ``load`` failed
    how: str = ""                     # how to get it when it is missing
    warn_if_missing: bool = False     # warn once when "auto" falls back to "torch" without it

    def usable(self, device_type: str) -> bool:
        return self.serves(device_type) and self.load()


_BUILD_HOW = "`pip install -e . --no-build-isolation`"
BACKENDS = {b.name: b for b in (
    Backend("cuda", load=_build.has_cuda_kernels, namespace=lambda: torch.ops.attnfast,
            serves=lambda dev: dev == "cuda", auto=("cuda",), float64=False,
            error=lambda: _build.error() or "no CUDA kernels in this build",
            how="install a CUDA build of PyTorch and the CUDA toolkit (nvcc), then rebuild: "
                f"{_BUILD_HOW}; CUDA tensors are needed"),
    Backend("triton", load=_load_triton, namespace=lambda: torch.ops.attnfast_triton,
            serves=lambda dev: dev == "cuda" or (dev == "cpu" and _interpret()), auto=("cuda",),
            float64=False, error=lambda: _triton.get("error", ""),
            how="`pip install triton` and use CUDA tensors (for CPU tensors set TRITON_INTERPRET=1 "
                "before importing attnfast)"),
    Backend("cpu", load=_build.load, namespace=lambda: torch.ops.attnfast,
            serves=lambda dev: dev == "cpu", auto=("cpu",), float64=True, error=_build.error,
            how=f"build the C++ extension: {_BUILD_HOW} with torch installed (or let it compile "
                "on first use; it needs a C++ compiler and ninja)", warn_if_missing=True),
    Backend("torch", load=lambda: True, namespace=lambda: _eager,
            serves=lambda dev: True, auto=("cpu", "cuda"), float64=True),
)}
NAMES = ("auto", *BACKENDS)
_state = {"name": "auto"}


def _record(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {NAMES}")
    return BACKENDS[name]


def available_backends() -> list[str]:
    """Concrete backends usable in this process (any device), e.g. ``['cpu', 'torch']``."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [b.name for b in BACKENDS.values() if any(b.usable(d) for d in devices)]


def set_backend(name: str) -> None:
    """Choose the backend for all following op calls (``"auto"`` by default)."""
    if name != "auto":
        _record(name)
    _state["name"] = name


def get_backend() -> str:
    return _state["name"]


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: ``with attnfast.use_backend("torch"): ...``."""
    previous = _state["name"]
    set_backend(name)
    try:
        yield
    finally:
        _state["name"] = previous


def _auto(dev: str) -> str:
    """The first backend, in ``BACKENDS`` order, that "auto" may pick for ``dev`` and that is
    usable; falling back to "torch" past a ``warn_if_missing`` backend warns once."""
    candidates = [b for b in BACKENDS.values() if dev in b.auto]
    chosen = next(b for b in candidates if b.usable(dev))  # "torch" always is
    missing = [b for b in candidates[:candidates.index(chosen)] if b.warn_if_missing]
    if chosen.name == "torch" and missing and not _state.get("warned"):
        _state["warned"] = True
        warnings.warn(f"attnfast: C++ extension unavailable, using the eager reference "
                      f"({missing[0].error()}); to fix: {missing[0].how}", stacklevel=4)
    return chosen.name


def resolve(device: torch.device) -> str:
    """The concrete backend the current choice means for tensors on ``device``."""
    name, dev = _state["name"], device.type
    if name == "auto":
        if not any(dev in b.auto for b in BACKENDS.values()):
            raise ValueError(f"attnfast ops take CPU or CUDA tensors, got {dev} tensors (the "
                             f"'torch' backend also runs other devices: use_backend('torch'))")
        return _auto(dev)
    b = _record(name)
    if b.usable(dev):
        return name
    served = [d for d in ("cpu", "cuda") if b.serves(d)]
    if not b.serves(dev) and dev not in ("cpu", "cuda"):
        raise ValueError(f"attnfast backend {name!r} runs {' and '.join(served) or 'no'} tensors, "
                         f"not {dev} tensors; use CPU or CUDA tensors (or the 'torch' backend)")
    why = f" ({b.error()})" if b.error() else ""
    raise RuntimeError(f"attnfast backend {name!r} is not available for {dev} tensors{why}; "
                       f"to get it: {b.how}")


def namespace(name: str):
    """The kernel namespace of a concrete backend (``torch.ops.attnfast``, ...,
    ``attnfast._eager`` for ``"torch"``)."""
    return _record(name).namespace()
