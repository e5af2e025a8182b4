"""The small argument checks the library shares (the ground floor: imports nothing of the package)."""

from __future__ import annotations

import argparse
import inspect
import math
import numbers
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np


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


def thread_count(text: str) -> int:
    """The argparse type of --threads: a count from 1 to this machine's CPU count (more threads than CPUs
    only oversubscribe them; 100000 made the sweep fail with an sqlite "disk I/O error")."""
    v = positive_int(text)
    n = os.cpu_count() or 1
    if v > n:
        raise argparse.ArgumentTypeError(f"must be at most this machine's {n} CPUs, got {text}")
    return v


def positive_int(text: str) -> int:
    """The argparse type of a count option (--workers, --epochs, ...): the int of ``text``, refused below 1."""
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return v


# ----------------------------------------------------------------------------- the estimator convention

Constraint = Callable[[str, Any], None]
"""``check(name, value)``: raises ValueError naming the parameter, its value and what is allowed."""


def check_int(name: str, v: Any, minimum: int = 1, or_none: bool = False) -> None:
    """An int >= ``minimum`` (numpy ints included, bools refused), or None where ``or_none``: the one
    spelling of "an int >= 1" every count shares."""
    if or_none and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' or None' if or_none else ''}, got {v!r}")


def an_int(minimum: int = 1, or_none: bool = False) -> Constraint:
    """The constraint "an int >= ``minimum``" (or None where ``or_none``), as check_int states it."""
    return lambda name, v: check_int(name, v, minimum, or_none)


def one_of(*options: Any) -> Constraint:
    """The constraint "one of ``options``" (equal and an instance of the option's type, numpy's str too; a bool
    is never an option: True is not 1)."""
    def check(name: str, v: Any) -> None:
        if isinstance(v, bool) or not any(isinstance(v, type(o)) and v == o for o in options):
            raise ValueError(f"{name} must be one of {options}, got {v!r}")
    return check


def a_bool(name: str, v: Any) -> None:
    """The constraint "True or False" (a numpy bool too: a direction read from a frame or an array)."""
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {v!r}")


def in_interval(lo: float, hi: float) -> Constraint:
    """A real number in the open interval (lo, hi) (an infinite end: no bound on that side)."""
    what = f"be a number > {lo:g}" if math.isinf(hi) else f"be a number < {hi:g}" if math.isinf(lo) \
        else f"lie in ({lo:g}, {hi:g})"

    def check(name: str, v: Any) -> None:
        if not (is_number(v) and lo < v < hi):
            raise ValueError(f"{name} must {what}, got {v!r}")
    return check


class Estimator:
    """scikit-learn's convention for the analysis objects (rank estimators, spectra, predictors):
    ``__init__`` stores its arguments as given (no check, nothing derived); ``_constraints`` declares, once,
    a check per parameter that ``fit`` runs first (``_validate_params``); ``get_params()`` returns the
    arguments and the repr shows those that differ from their defaults. Fitted attributes end in _."""

    _constraints: ClassVar[Mapping[str, Constraint]] = {}

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p.name for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments, by name, as given."""
        return {n: getattr(self, n) for n in self._param_names()}

    def _validate_params(self) -> None:
        """Run every declared constraint; the first that fails raises, naming the parameter."""
        for name, check in self._constraints.items():
            check(name, getattr(self, name))

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        shown = [f"{n}={v!r}" for n, v in self.get_params().items()
                 if not (defaults.get(n, inspect.Parameter.empty) is not inspect.Parameter.empty and _same(v, defaults[n]))]
        return f"{type(self).__name__}({', '.join(shown)})"


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001  an array-like argument: never "the default"
        return False
