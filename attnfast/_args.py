"""Checks of the non-tensor options of the public ops and the training wrappers.

Each check raises a ``TypeError`` (wrong kind of value) or ``ValueError`` (value out of range)
whose message names the argument and says what is allowed, and returns the value in the form
the kernels take (``float``, ``bool``, ``int``). ``bool`` is not accepted as a number (``eps=True``
is a mistake, not 1.0), and a NaN or infinite number is refused wherever a finite one is needed.
"""
from __future__ import annotations

import math
import numbers

__all__ = ["real", "flag", "size_pair", "count"]


def real(value, name: str, *, positive: bool = False, lo: float | None = None,
         hi: float | None = None) -> float:
    """A finite real number (``int``/``float``, not ``bool``), > 0 when ``positive``, within
    [lo, hi] when given; returned as ``float``."""
    if lo is not None and hi is not None:
        want = f"in [{lo:g}, {hi:g}] (a finite number)"
    else:
        want = "a finite number" + (" > 0" if positive else "") + \
            (f" >= {lo:g}" if lo is not None else f" <= {hi:g}" if hi is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {want}, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0) or (lo is not None and v < lo) or \
            (hi is not None and v > hi):
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return v


def flag(value, name: str) -> bool:
    """A ``bool`` (``True``/``False``; not 0/1, not None, not a string)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def count(value, name: str, lo: int = 1) -> int:
    """An integer >= lo (``int``, not ``bool`` nor ``float``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {lo}, got {value!r} "
                        f"({type(value).__name__})")
    if value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def size_pair(size, name: str = "size") -> tuple[int, int]:
    """A pair (H, W) of positive integers (ints, or a ``torch.Size``; 2.7 is refused, not
    rounded)."""
    msg = f"{name} must be a pair (H, W) of integers >= 1, got {size!r}"
    if isinstance(size, (str, bytes)):
        raise TypeError(msg)
    try:
        values = tuple(size)
    except TypeError:
        raise TypeError(msg) from None
    if len(values) != 2:
        raise ValueError(msg)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(msg)
        if v < 1:
            raise ValueError(msg)
    return int(values[0]), int(values[1])
