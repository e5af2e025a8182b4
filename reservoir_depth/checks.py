"""The small argument checks the library shares (the ground floor: imports nothing of the package)."""

from __future__ import annotations

import argparse
import math
import numbers
import os
from pathlib import Path
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


def check_folder(path: str | os.PathLike, what: str) -> None:
    """A folder path that can be a folder: neither ``path`` nor any folder above it is a regular file
    (ValueError naming ``what``, the path and the file in the way). It need not exist yet."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"{what} {str(path)!r}: {p} is a file, not a folder; give a folder path")
            return


def positive_int(text: str) -> int:
    """The argparse type of a count option (--workers, --epochs, ...): the int of ``text``, refused below 1."""
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return v
