"""Tests of reservoir_depth.distributions.seeds: layer seeds from sha256(root seed, name, salt)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reservoir_depth.distributions import layer_seed


names = st.text(max_size=20)


roots = st.integers(min_value=-(2**63), max_value=2**63)


@settings(max_examples=50, deadline=None)
@given(root=roots, name=names)
def test_layer_seed_depends_only_on_arguments(root, name):
    s = layer_seed(root, name)
    assert isinstance(s, int) and 0 <= s < 2**64
    assert layer_seed(root, name) == s
    if -(2**63) <= root < 2**63:  # numpy integers are accepted and mean the same root
        assert layer_seed(np.int64(root), name) == s


@settings(max_examples=50, deadline=None)
@given(root=roots, a=names, b=names)
def test_layer_seed_differs_across_names(root, a, b):
    assume(a != b)
    assert layer_seed(root, a) != layer_seed(root, b)


@settings(max_examples=50, deadline=None)
@given(a=roots, b=roots, name=names)
def test_layer_seed_differs_across_roots(a, b, name):
    assume(a != b)
    assert layer_seed(a, name) != layer_seed(b, name)


def test_layer_seed_salt_matters():
    assert layer_seed(0, "x") != layer_seed(0, "x", "W_seed")
    assert layer_seed(0, "x", "epoch", 1) != layer_seed(0, "x", "epoch", 2)


@pytest.mark.parametrize("root", [1.5, "3", True, False, None, np.float64(2.0)])
def test_layer_seed_rejects_non_int_root(root):
    with pytest.raises(TypeError):
        layer_seed(root, "layers.0")
