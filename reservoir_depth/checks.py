"""The small argument checks the library shares (the ground floor: imports nothing of the package)."""

from __future__ import annotations

import argparse
import math
import numbers
from typing import Any


def is_number(v: Any) -> bool:
    """A real number (numpy scalars included), not a bool: the check every numeric option shares."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def is_finite_number(v: Any) -> bool:
    """A real number (not a bool) that is neither nan nor +-inf."""
    return is_number(v) and math.isfinite(v)


def require(cond: bool, msg: str) -> None:
    """Raise ValueError(msg) unless ``cond``: msg names the value and what is allowed."""
    if not cond:
        raise ValueError(msg)


def positive_int(text: str) -> int:
    """The argparse type of a count option (--workers, --epochs, ...): the int of ``text``, refused below 1."""
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return v
