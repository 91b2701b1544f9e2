"""Checks of a value where it is consumed, each a ``ValueError`` naming the setting as the user
writes it, the bad value and what is valid: ``require_int("data.batch_size", 0, low=1)`` raises
``data.batch_size=0 is not valid; valid: an integer >= 1``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def is_int(value: object) -> bool:
    """An int that is not a bool (YAML's true/false must not pass for 1/0)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _range(kind: str, low: float | None, high: float | None, low_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return f"{kind} {' and '.join(parts)}" if parts else kind


def require_int(
    key: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    *,
    optional: bool = False,
    note: str = "",
) -> int | None:
    """``value`` when it is an integer in [low, high] (or None with ``optional``)."""
    if value is None and optional:
        return None
    if is_int(value) and (low is None or value >= low) and (high is None or value <= high):
        return value
    valid = _range("an integer", low, high, False) + (" or null" if optional else "")
    raise ValueError(f"{key}={value!r} is not valid; valid: {valid}{' ' + note if note else ''}")


def require_number(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    optional: bool = False,
    note: str = "",
) -> float | None:
    """``value`` when it is a finite int or float in its range (``low`` excluded with
    ``low_open``), or None with ``optional``."""
    if value is None and optional:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if (
        number
        and math.isfinite(value)
        and (low is None or (value > low if low_open else value >= low))
        and (high is None or value <= high)
    ):
        return value
    valid = _range("a number", low, high, low_open) + (" or null" if optional else "")
    raise ValueError(f"{key}={value!r} is not valid; valid: {valid}{' ' + note if note else ''}")


def require_choice(key: str, value: Any, choices: Iterable[Any], note: str = "") -> Any:
    """``value`` when it is one of ``choices`` (of its type: True is not 1)."""
    choices = tuple(choices)
    if any(type(value) is type(c) and value == c for c in choices):
        return value
    shown = ", ".join(str(c) for c in choices)
    raise ValueError(f"{key}={value!r} is not valid; valid: {shown}{' ' + note if note else ''}")
