"""One-line argument checks shared by the envs modules."""

from __future__ import annotations

import math

from treegrpo.errors import TreegrpoError


class ArgumentError(TreegrpoError, ValueError):
    """An argument outside what is allowed; the message names it, its value and the allowed range."""


def check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[minimum, maximum]``, else raise one ``ValueError`` line."""
    bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError(f"{name}: expected an int {bounds}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ArgumentError(f"{name}: expected an int {bounds}, got {value}")
    return value


def check_float(
    name: str, value: object, *, low: float, high: float = math.inf, low_open: bool = False
) -> float:
    """Return ``float(value)`` if it lies in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    left = "(" if low_open else "["
    ok = (number > low if low_open else number >= low) and number <= high
    if not ok or math.isnan(number):
        raise ArgumentError(f"{name}: expected a number in {left}{low}, {high}], got {value!r}")
    return number
