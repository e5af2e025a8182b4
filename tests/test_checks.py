"""Tests of reservoir_depth.checks (the argument checks the library shares) and of the ground floor's layering:
checks.py and _version.py import nothing of the package, and the modules below the package face read
``__version__`` from ``_version``."""

from __future__ import annotations

import argparse
import ast
import importlib
import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reservoir_depth
from reservoir_depth import _version, checks, cli
from reservoir_depth.checks import is_finite_number, is_number, positive_int, require

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("v", [0, -3, 2.5, float("nan"), float("inf"), np.float32(1.5), np.int64(7), np.uint8(3),
                               Fraction(1, 3), 10**30])
def test_is_number_accepts_real_numbers(v):
    assert is_number(v)


@pytest.mark.parametrize("v", [True, False, np.bool_(True), "3", None, 1j, [1.0], np.array([1.0]), object()])
def test_is_number_refuses_bools_and_non_numbers(v):
    assert not is_number(v)


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.booleans() | st.none() | st.text())
def test_is_finite_number_is_a_number_that_is_finite(v):
    assert is_finite_number(v) == (is_number(v) and math.isfinite(v))


@pytest.mark.parametrize("v", [float("nan"), float("inf"), -float("inf"), np.float64("nan"), True, "1"])
def test_is_finite_number_refuses(v):
    assert not is_finite_number(v)


def test_require_raises_its_message_only_when_false():
    require(True, "never raised")
    with pytest.raises(ValueError, match=r"^p must lie in \(0, 1\], got 2$"):
        require(False, "p must lie in (0, 1], got 2")


@pytest.mark.parametrize("text, value", [("1", 1), ("8", 8), (" 12 ", 12)])
def test_positive_int_reads_counts(text, value):
    assert positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-1"])
def test_positive_int_refuses_counts_below_one(text):
    with pytest.raises(argparse.ArgumentTypeError, match=rf"must be an integer >= 1, got {text}"):
        positive_int(text)


@pytest.mark.parametrize("text", ["x", "1.5", ""])
def test_positive_int_refuses_text_that_is_not_an_int(text):
    with pytest.raises(ValueError):
        positive_int(text)


def test_count_options_of_the_cli_and_the_experiments_use_positive_int():
    """One argparse type for every count option: the command line's and the experiment scripts'."""
    p = cli.parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    counts = {(cmd, a.dest) for cmd, sp in sub.choices.items() for a in sp._actions if a.type is positive_int}
    assert {("sweep", "workers"), ("train", "batch_size")} <= counts, counts
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        common = importlib.import_module("_common")
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    workers = next(a for a in common.parser(None, "out", workers=True)._actions if a.dest == "workers")
    assert workers.type is positive_int


def _package_imports(module) -> set[str]:
    """The package-relative modules a module imports (``from . import x``, ``from .y import z``)."""
    tree = ast.parse(Path(module.__file__).read_text())
    return {("." * n.level) + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}


@pytest.mark.parametrize("module", [checks, _version])
def test_the_ground_floor_imports_nothing_of_the_package(module):
    assert _package_imports(module) == set()


@pytest.mark.parametrize("name", ["adapter_format", "results", "ray_sweep"])
def test_modules_below_the_face_read_the_version_from_version_py(name):
    module = importlib.import_module(f"reservoir_depth.{name}")
    assert "._version" in _package_imports(module) and "." not in _package_imports(module)
    assert module.__version__ is _version.__version__ is reservoir_depth.__version__


def test_pyproject_reads_the_version_from_version_py():
    assert 'version = { attr = "reservoir_depth._version.__version__" }' in (ROOT / "pyproject.toml").read_text()
