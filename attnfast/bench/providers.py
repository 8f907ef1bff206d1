"""Who computes a kernel case: ``eager`` (``attnfast.reference`` with autograd), ``compile``
(``torch.compile`` of it) and each attnfast backend usable on the device, through
``with attnfast.use_backend(name):``."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .. import reference
from ..backend import available_backends, use_backend
from .cases import Config


@dataclass
class Provider:
    """``fn(op)`` gives the callable for a public op name; ``context()`` wraps every call
    (forward and backward) made through it."""
    name: str
    fn: object
    context: object = contextlib.nullcontext


def _compiled(op: str):
    torch._dynamo.reset()     # each case compiles afresh: no recompile limits across shapes
    return torch.compile(getattr(reference, op), dynamic=False)


def _backend(name: str) -> Provider:
    import attnfast
    return Provider(name, lambda op: getattr(attnfast, op), lambda: use_backend(name))


def device_backends(device: str) -> list:
    """attnfast backends that run on ``device`` here ("torch" is the eager provider already;
    Triton on CPU is its interpreter, far too slow to time)."""
    wanted = ("cuda", "triton") if device == "cuda" else ("cpu",)
    return [b for b in wanted if b in available_backends()]


def providers(cfg: Config) -> list:
    """The providers of this run: eager, compile (left out by --quick unless asked), backends."""
    names = ["eager", "compile"] + device_backends(cfg.device)
    if cfg.providers:
        unknown = set(cfg.providers) - set(names)
        if unknown:
            raise SystemExit(f"attnfast.bench: provider(s) {sorted(unknown)} not available on "
                             f"{cfg.device}; available: {names}")
        names = [n for n in names if n in cfg.providers]
    elif cfg.quick:
        names.remove("compile")
    table = {"eager": lambda: Provider("eager", lambda op: getattr(reference, op)),
             "compile": lambda: Provider("compile", _compiled)}
    return [table[n]() if n in table else _backend(n) for n in names]
