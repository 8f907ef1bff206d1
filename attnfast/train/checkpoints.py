"""Checkpoints: files written atomically, RNG states, save and exact resume.

``<out>/<method>/checkpoint.pt`` holds (format 1): ``method``, ``model_name``, ``epoch`` (epochs
done), the state dicts ``net`` (the method's wrapper, model included), ``optimizer``,
``scheduler``, ``scaler``, ``rng`` (one RNG state per process), ``history`` (the metrics rows so
far) and ``config`` (the plain values of the run's config). It is loaded with
``weights_only=True``; resuming restores every state dict and the process's RNG state, so a
resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import torch

FORMAT = 1


def atomic_write(path, write):
    """Call ``write(file_object)`` on a temp file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path, method, cfg, epoch, states, rngs, history):
    """Write the checkpoint atomically; ``states`` maps net/optimizer/scheduler/scaler to objects
    with ``state_dict()``, ``rngs`` holds every process's :func:`rng_state`."""
    state = {"format": FORMAT, "method": method, "model_name": cfg["model"], "epoch": epoch,
             **{k: v.state_dict() for k, v in states.items()}, "rng": rngs, "history": history,
             "config": {k: v for k, v in cfg.items()
                        if isinstance(v, (int, float, str, bool, tuple, list))}}
    atomic_write(path, lambda f: torch.save(state, f))


def load(path, device=None):
    """The checkpoint at ``path`` (``weights_only=True``), tensors on ``device``."""
    return torch.load(path, map_location=device, weights_only=True)


def resume(path, method, cfg, states, rank, device):
    """Restore ``states`` (as for :func:`save`) and this process's RNG state from ``path``;
    returns (history, epochs done). Refuses a checkpoint of another method or model."""
    state = load(path, device)
    if state["method"] != method or state["model_name"] != cfg["model"]:
        raise SystemExit(f"{path} holds a {state['method']} {state['model_name']} run, "
                         f"not {method} {cfg['model']}")
    for key, obj in states.items():
        obj.load_state_dict(state[key])
    set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
    return state["history"], state["epoch"]
