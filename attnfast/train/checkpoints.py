"""Checkpoints: files written atomically, RNG states, save, verified load and exact resume.

``<out>/<method>/checkpoint.pt`` holds (format 1): ``method``, ``model_name``, ``epoch`` (epochs
done), the state dicts ``net`` (the method's wrapper, model included), ``optimizer``,
``scheduler``, ``scaler``, ``rng`` (one RNG state per process), ``history`` (the metrics rows so
far) and ``config`` (the plain values of the run's config, ``None`` included).

Loading (:func:`load`) first checks the file as a zip archive: every record's CRC-32 (written by
``torch.save``) must match its bytes, so a damaged, truncated or empty file is refused with a
:class:`CheckpointError` naming it, before anything is unpickled; then ``torch.load`` with
``weights_only=True``. Resuming (:func:`resume`) refuses a checkpoint of another method or model,
and one written with other run settings (:data:`NOT_THE_RUN` lists the options that do not
change the run) unless ``--resume-override`` is given; it restores every state dict and the
process's RNG state, so a resumed run equals an uninterrupted one.

Temp files: :func:`atomic_write` writes ``.<name>.tmp<pid>`` next to the target, fsyncs and
renames it (a failed write, e.g. on a full disk, leaves the target as it was and stops the run
with a message naming the file and the cause);
a process killed in between leaves it behind, and :func:`remove_stale_temps` deletes those whose
pid is no longer alive.
"""
from __future__ import annotations

import errno
import os
import random
import re
import zipfile
from pathlib import Path

import torch

from .optim import group_scale

FORMAT = 1
# Config keys that do not change what a run computes: where it writes, how it shows progress,
# how far this invocation goes, which methods / how many seeds the command line lists, the
# device and worker counts. Every other key of the config must match on --resume.
NOT_THE_RUN = frozenset({
    "out", "resume", "resume_override", "stop_after", "progress", "pictures", "workers",
    "threads", "device", "data_dir", "method", "methods", "compare", "seeds", "eval_every",
    "compile", "compile_backend", "overwrite"})


class CheckpointError(SystemExit):
    """A checkpoint that cannot be used (damaged, or of another run); the message names the
    file. A ``SystemExit``: the trainer stops with the message and exit status 1."""

    def __init__(self, message):
        super().__init__(message)


def _temp_name(path, pid):
    return path.with_name(f".{path.name}.tmp{pid}")


def _os_error(exc):
    """The OSError behind ``exc``: itself or one in its chain of causes (``torch.save`` turns a
    failed write of its file object into a C++ ``RuntimeError`` whose context is the OSError)."""
    while exc is not None:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write(path, write):
    """Call ``write(file_object)`` on a temp file next to ``path``, fsync it, then rename it over
    ``path``. When the write fails for a reason of the system (a full disk: ENOSPC, a quota, an
    I/O error) the temp file is removed, ``path`` keeps what it held, and a
    :class:`CheckpointError` names the file and the cause."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        cause = _os_error(e)
        if cause is None:
            raise
        code = errno.errorcode.get(cause.errno, "")
        kept = (f"{path} is left as it was" if path.exists() else f"no earlier {path.name} "
                "existed")
        raise CheckpointError(f"cannot write {path}: {cause.strerror or cause}"
                              f"{f' ({code})' if code else ''}; {kept}. Free space (or use "
                              "another --out), then run again with --resume") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(folder):
    """Delete the ``.<name>.tmp<pid>`` files of :func:`atomic_write` in ``folder`` whose process
    is no longer alive (left by a kill during a write); returns the paths removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = re.fullmatch(r"\..+\.tmp(\d+)", p.name)
        if m and p.is_file() and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain_config(cfg):
    """The config's plain values (numbers, strings, tuples, lists, None): what a checkpoint
    keeps and :func:`differences` compares."""
    return {k: v for k, v in cfg.items()
            if v is None or isinstance(v, (int, float, str, bool, tuple, list))}


def save(path, method, cfg, epoch, states, rngs, history):
    """Write the checkpoint atomically; ``states`` maps net/optimizer/scheduler/scaler to objects
    with ``state_dict()``, ``rngs`` holds every process's :func:`rng_state`."""
    state = {"format": FORMAT, "method": method, "model_name": cfg["model"], "epoch": epoch,
             **{k: v.state_dict() for k, v in states.items()}, "rng": rngs, "history": history,
             "config": plain_config(cfg)}
    atomic_write(path, lambda f: torch.save(state, f))


def verify(path):
    """Raise :class:`CheckpointError` unless ``path`` is a complete zip archive whose every
    record matches its CRC-32."""
    path = Path(path)
    fix = "delete it (or use another --out) to start afresh"
    try:
        size = path.stat().st_size
        if size == 0:
            raise CheckpointError(f"checkpoint {path} is empty (0 bytes); {fix}")
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            NotImplementedError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged or truncated ({size} bytes: "
                              f"{type(e).__name__}: {e}); {fix}") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: record {bad!r} does not match "
                              f"its CRC-32; {fix}")


def load(path, device=None):
    """The checkpoint at ``path`` after :func:`verify` (``weights_only=True``), tensors on
    ``device``."""
    verify(path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a valid zip that is not a checkpoint torch can read
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: "
                              f"{str(e)[:300]})") from None


def _norm(v):
    return tuple(v) if isinstance(v, list) else v


def differences(saved, cfg):
    """{key: (saved value, value now)} for the settings of :func:`plain_config` that differ,
    keys of :data:`NOT_THE_RUN` aside (a key missing on one side counts as None)."""
    now = plain_config(cfg)
    keys = (set(saved) | set(now)) - NOT_THE_RUN
    return {k: (saved.get(k), now.get(k)) for k in sorted(keys)
            if _norm(saved.get(k)) != _norm(now.get(k))}


def _option(key):
    return "--" + key.replace("_", "-")


def check(path, method, cfg, device=None):
    """(the checkpoint at ``path``, its settings that differ from ``cfg``); refuses a damaged
    one, one of another method or model, and one of other settings unless
    ``cfg["resume_override"]``."""
    state = load(path, device)
    if state.get("method") != method or state.get("model_name") != cfg["model"]:
        raise CheckpointError(f"{path} holds a {state.get('method')} "
                              f"{state.get('model_name')} run, not {method} {cfg['model']}")
    diff = differences(state.get("config", {}), cfg)
    if diff and not cfg.get("resume_override"):
        listed = "; ".join(f"{_option(k)} {a!r} in the checkpoint, {b!r} now"
                           for k, (a, b) in diff.items())
        raise CheckpointError(f"{path} was written with other settings: {listed}. Resume with "
                              "the checkpoint's settings, or add --resume-override to continue "
                              "with the new ones")
    return state, diff


def resume(path, method, cfg, states, rank, device):
    """Restore ``states`` (as for :func:`save`) and this process's RNG state from ``path``
    after :func:`check`; returns (history, epochs done, differing settings). With differing
    settings (``--resume-override``) the caller applies the new ones (:func:`apply_settings`)."""
    state, diff = check(path, method, cfg, device)
    saved, now = (len(state["optimizer"]["param_groups"]), len(states["optimizer"].param_groups)) \
        if "optimizer" in states else (0, 0)
    if saved != now:
        raise CheckpointError(f"checkpoint {path}: its optimizer has {saved} parameter group(s), "
                              f"this run's {now} (backbone and new, attnfast.train.optim): it was "
                              "written by an earlier version and cannot be resumed; start afresh "
                              "(another --out)")
    for key, obj in states.items():
        obj.load_state_dict(state[key])
    set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
    return state["history"], state["epoch"], diff


def apply_settings(cfg, opt, sched, epochs_done, steps_per_epoch):
    """After an overriding resume: the optimizer's hyper-parameters from ``cfg`` (lr as the
    schedule's base, momentum, weight decay) and the schedule (the LambdaLR built from ``cfg``)
    placed at ``epochs_done`` epochs of ``steps_per_epoch`` steps, the LR set to its value
    there."""
    sched.last_epoch = epochs_done * steps_per_epoch
    for group, factor in zip(opt.param_groups, sched.lr_lambdas):
        scale = group_scale(cfg, group.get("name"))
        group.update(initial_lr=cfg["lr"] * scale, lr=cfg["lr"] * scale * factor(sched.last_epoch),
                     lr_scale=scale, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    sched.base_lrs = [g["initial_lr"] for g in opt.param_groups]
    sched._last_lr = [g["lr"] for g in opt.param_groups]
