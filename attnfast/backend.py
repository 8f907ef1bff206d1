"""Backend choice: ``set_backend``, ``use_backend``, ``available_backends``.

Backends compute the same functions (``attnfast.reference``):

* ``"torch"``  -- the eager reference; autograd of it is the backward. Always there.
* ``"cpu"``    -- C++ CPU kernels of the ``attnfast._C`` extension (``torch.ops.attnfast``).
* ``"cuda"``   -- CUDA C++ kernels of the same extension, when it was built with CUDA.
* ``"triton"`` -- Triton kernels (``torch.ops.attnfast_triton``): CUDA tensors, or CPU tensors when
  ``TRITON_INTERPRET=1`` was set before Triton was imported.
* ``"auto"`` (default) -- CUDA tensors: ``cuda``, else ``triton``, else ``torch``; CPU tensors:
  ``cpu``, else ``torch`` (with a one-time warning saying why the extension is missing).
"""
from __future__ import annotations

import contextlib
import os
import warnings

import torch

from . import _build

NAMES = ("auto", "cuda", "triton", "cpu", "torch")
_state = {"name": "auto"}
_triton: dict = {}

_HOW = {
    "cpu": "build the C++ extension: `pip install -e . --no-build-isolation` with torch installed "
           "(or let it compile on first use; it needs a C++ compiler and ninja)",
    "cuda": "install a CUDA build of PyTorch and the CUDA toolkit (nvcc), then rebuild: "
            "`pip install -e . --no-build-isolation`; CUDA tensors are needed",
    "triton": "`pip install triton` and use CUDA tensors (for CPU tensors set TRITON_INTERPRET=1 "
              "before importing attnfast)",
}


def _triton_ok() -> bool:
    """Import the Triton kernels once (registers ``attnfast_triton::*``); True on success."""
    if "ok" not in _triton:
        try:
            from . import _register, triton_kernels  # noqa: F401
            _register.register("attnfast_triton", fakes=False)
            _triton["ok"] = True
        except Exception as exc:  # keep the reason for the error message
            _triton["ok"], _triton["error"] = False, f"{type(exc).__name__}: {exc}"
    return _triton["ok"]


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _usable(name: str, device_type: str) -> bool:
    if name == "torch":
        return True
    if name == "cpu":
        return device_type == "cpu" and _build.load()
    if name == "cuda":
        return device_type == "cuda" and _build.has_cuda_kernels()
    if name == "triton":
        return (device_type == "cuda" or (device_type == "cpu" and _interpret())) and _triton_ok()
    raise ValueError(f"unknown backend {name!r}; expected one of {NAMES}")


def available_backends() -> list[str]:
    """Concrete backends usable in this process (any device), e.g. ``['cpu', 'torch']``."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [n for n in NAMES[1:] if any(_usable(n, d) for d in devices)]


def set_backend(name: str) -> None:
    """Choose the backend for all following op calls (``"auto"`` by default)."""
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; expected one of {NAMES}")
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


def resolve(device: torch.device) -> str:
    """The concrete backend the current choice means for tensors on ``device``."""
    name, dev = _state["name"], device.type
    if name == "auto":
        order = ("cuda", "triton", "torch") if dev == "cuda" else ("cpu", "torch")
        for cand in order:
            if _usable(cand, dev):
                if cand == "torch" and dev == "cpu" and not _state.get("warned"):
                    _state["warned"] = True
                    warnings.warn("attnfast: C++ extension unavailable, using the eager reference ("
                                  f"{_build.error()}); to fix: {_HOW['cpu']}", stacklevel=3)
                return cand
    if _usable(name, dev):
        return name
    reason = {"cpu": _build.error(), "cuda": _build.error(), "triton": _triton.get("error", "")}
    why = f" ({reason[name]})" if reason.get(name) else ""
    raise RuntimeError(f"attnfast backend {name!r} is not available for {dev} tensors{why}; "
                       f"to get it: {_HOW[name]}")


def namespace(name: str):
    """``torch.ops`` namespace of a concrete backend's kernels (None: the eager reference)."""
    if name == "torch":
        return None
    return torch.ops.attnfast_triton if name == "triton" else torch.ops.attnfast
