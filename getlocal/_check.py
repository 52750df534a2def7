"""Argument checks shared by maps, patterns, plot and the adapters.

Each check names the user's argument and says what it should be, so that a
wrong value fails at the front door instead of deep inside numpy or
matplotlib. The errors are GetLocalError and also ValueError/TypeError, so
code that caught those before keeps working.
"""
import math
import numbers
from typing import Iterable, Optional

from ._errors import ArgumentError, ArgumentTypeError

#: Larger sizes are certainly typos and would only allocate their way to a MemoryError.
HUGE = 1 << 20


def show(value) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def integer(name: str, value, *, low: Optional[int] = None, high: Optional[int] = HUGE, optional: bool = False):
    """``value`` as an int in ``[low, high]`` (None passes when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an int; got {show(value)}")
    value = int(value)
    if low is not None and value < low or high is not None and value > high:
        bounds = f">= {low}" if high is None else f"between {low} and {high}" if low is not None else f"<= {high}"
        raise ArgumentError(f"{name} must be {bounds}; got {value}")
    return value


def number(name: str, value, *, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False, optional: bool = False):
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number; got {show(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number; got {value}")
    below = low is not None and (value <= low if low_open else value < low)
    if below or high is not None and value > high:
        left = "(" if low_open else "["
        raise ArgumentError(f"{name} must be in {left}{low}, {high}]; got {value}")
    return value


def flag(name: str, value) -> bool:
    """``value`` as a bool (True/False, numpy bools too)."""
    if type(value).__name__ not in ("bool", "bool_"):
        raise ArgumentTypeError(f"{name} must be True or False; got {show(value)}")
    return bool(value)


def text(name: str, value, *, optional: bool = False, empty: bool = False):
    """``value`` as a str (None passes when ``optional``; '' only when ``empty``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a str; got {show(value)}")
    if not value and not empty:
        raise ArgumentError(f"{name} must not be empty")
    return value


def choice(name: str, value, choices: Iterable[str], *, optional: bool = False):
    """``value``, one of ``choices`` (named in the error)."""
    choices = list(choices)
    if value is None and optional:
        return None
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(f"{name}={show(value)} is not one of {', '.join(repr(c) for c in choices)}")
    return value


def options(name: str, value):
    """A ``*_kws`` dict of keyword arguments (None means none)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ArgumentTypeError(f"{name} must be a dict of keyword arguments or None; got {show(value)}")
    return value


def axes(name: str, value):
    """A matplotlib Axes or None (the current Axes)."""
    if value is None:
        return None
    if not any(cls.__name__ == "Axes" for cls in type(value).__mro__):
        raise ArgumentTypeError(f"{name} must be a matplotlib Axes or None (the current Axes); got {show(value)}")
    return value


def instance(name: str, value, cls, what: str):
    """``value`` when it is a ``cls`` (checked through ``type()``, which no object can fake)."""
    if not issubclass(type(value), cls):
        raise ArgumentTypeError(f"{name} must be {what}; got {show(value)}")
    return value
