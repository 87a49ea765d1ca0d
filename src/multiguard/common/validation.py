"""Argument checks shared by every public entry point, with one message template. No torch.

Every check raises ``ValueError("<name> must be <constraint>, got <value>")``: the argument's name first (the
Python parameter, or the command-line option where the caller passes that name), then what it must be, then
what it was. Each value is checked once, at the entry point that receives it; the functions below return
the value converted (an ``int``, a ``float``, a pair) so callers work with the checked form.

Typed errors live here too, for the places where code branches on the kind of failure rather than on a
message's text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "quoted_alternatives",
    "MAX_N",
    "DamagedFileError",
    "RunMismatchError",
    "check_alpha",
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_interval",
    "check_positive",
    "invalid",
]


# The most noisy samples per input anything draws: 10**9 forward passes per input is far beyond any budget, and
# every count and sum of counts stays exact in int64. Larger values are refused before any work or file.
MAX_N = 10**9


class RunMismatchError(ValueError):
    """An existing RUN_DIR (or checkpoint) was made with other settings than the ones asked for now."""


class DamagedFileError(ValueError):
    """A file of ours exists but cannot be read back whole (truncated, edited, or not ours)."""


def quoted_alternatives(names: tuple[str, ...], forms: tuple[str, ...] = ()) -> str:
    """``'a', 'b' or 'c'``: the names and other accepted forms of an argument, for messages."""
    items = [f"'{name}'" for name in (*names, *forms)]
    return f"{', '.join(items[:-1])} or {items[-1]}" if len(items) > 1 else items[0]


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def invalid(name: str, constraint: str, value: object) -> ValueError:
    """The one message template: ``ValueError("<name> must be <constraint>, got <value>")``."""
    return ValueError(f"{name} must be {constraint}, got {_show(value)}")


def check_int(value: object, name: str, low: int | None = None, high: int | None = None, *,
              high_label: str | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (either end optional); bools and floats are refused.

    ``high_label`` names the upper end in the message, e.g. ``"the number of classes"`` gives
    ``"k must be between 1 and the number of classes (6), got 25"``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise invalid(name, "an integer", value)
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        if high is not None:
            top = f"{high_label} ({high})" if high_label else str(high)
            constraint = f"between {low} and {top}" if low is not None else f"an integer <= {top}"
        else:
            constraint = f"an integer >= {low}"
        raise invalid(name, constraint, number)
    return number


def check_float(value: object, name: str, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite ``float`` in the interval given by ``low``/``high`` (closed unless ``*_open``)."""
    try:
        if isinstance(value, (bool, np.bool_, str, bytes)):
            raise TypeError
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise invalid(name, "a number", value) from None
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or too_low or too_high:
        if low is not None and high is not None:
            constraint = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            constraint = f"a number {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            constraint = f"a number {'<' if high_open else '<='} {high:g}"
        else:
            constraint = "a finite number"
        raise invalid(name, constraint, value)
    return number


def check_positive(value: object, name: str) -> float:
    """``value`` as a finite ``float > 0``."""
    return check_float(value, name, 0.0, low_open=True)


def check_alpha(value: object, name: str = "alpha") -> float:
    """A failure probability: a ``float`` in the open interval (0, 1)."""
    return check_float(value, name, 0.0, 1.0, low_open=True, high_open=True)


def check_bool(value: object, name: str) -> bool:
    """``True`` or ``False`` (NumPy bools too); anything else is refused, not coerced."""
    if not isinstance(value, (bool, np.bool_)):
        raise invalid(name, "True or False", value)
    return bool(value)


def check_choice(value: object, name: str, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise invalid(name, "one of " + ", ".join(_show(c) for c in options), value)
    return value


def check_interval(value: object, name: str) -> tuple[float, float] | None:
    """``None``, or a pair ``(lo, hi)`` of numbers with ``lo < hi`` (a clamp range, an input range)."""
    if value is None:
        return None
    try:
        lo, hi = (float(bound) for bound in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise invalid(name, "None or a pair (lo, hi)", value) from None
    if not lo < hi:
        raise invalid(name, "a pair (lo, hi) with lo < hi", value)
    return lo, hi
