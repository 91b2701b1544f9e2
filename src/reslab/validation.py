"""Checks of a value where it is consumed, each a ``ValueError`` naming the setting as the user
writes it, the bad value and what is valid: ``require_int("data.batch_size", 0, low=1)`` raises
``data.batch_size=0 is not valid; valid: an integer >= 1``."""

import math
from collections.abc import Iterable
from typing import Any


def is_int(value: object) -> bool:
    """An int that is not a bool (YAML's true/false must not pass for 1/0)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _refuse(key: str, value: Any, valid: str, note: str) -> ValueError:
    return ValueError(f"{key}={value!r} is not valid; valid: {valid}{' ' + note if note else ''}")


def _in_range(
    kind: str, key: str, value: Any, low: float, high: float | None, low_open: bool,
    optional: bool, note: str,
) -> Any:  # fmt: skip
    if value is None and optional:
        return None
    number = kind == "a number" and isinstance(value, float) and math.isfinite(value)
    if (
        (number or is_int(value))
        and (value > low if low_open else value >= low)
        and (high is None or value <= high)
    ):
        return value
    bounds = f"{'>' if low_open else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
    raise _refuse(key, value, f"{kind} {bounds}" + (" or null" if optional else ""), note)


def require_int(
    key: str, value: Any, low: int, *, optional: bool = False, note: str = ""
) -> int | None:
    """``value`` when it is an integer >= ``low`` (or None with ``optional``)."""
    return _in_range("an integer", key, value, low, None, False, optional, note)


def require_number(
    key: str, value: Any, low: float, high: float | None = None, *, low_open: bool = False,
    optional: bool = False, note: str = "",
) -> float | None:  # fmt: skip
    """``value`` when it is a finite int or float in [low, high] (``low`` excluded with
    ``low_open``), or None with ``optional``."""
    return _in_range("a number", key, value, low, high, low_open, optional, note)


def require_choice(key: str, value: Any, choices: Iterable[Any], note: str = "") -> Any:
    """``value`` when it is one of ``choices`` (of its type: True is not 1)."""
    choices = tuple(choices)
    if any(type(value) is type(c) and value == c for c in choices):
        return value
    raise _refuse(key, value, ", ".join(str(c) for c in choices), note)
