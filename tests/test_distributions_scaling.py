"""Tests of reservoir_depth.distributions.scaling: the fan-in, spectral-radius and none rules, and fans()."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from distribution_cases import (
    FAMILIES,
    STD_PARAMS,
    FINITE_VARIANCE,
    SEED,
    seeds,
    small_shapes,
    raw_draws,
    sample_or_all_zero,
)
from reservoir_depth.distributions import DistributionSpec, fans, sample, spectral_radius


FAN_INS = [16, 64, 256, 1024]


SCALING_N = 65_536


@pytest.mark.parametrize("name", FINITE_VARIANCE)
@settings(max_examples=6, deadline=None, derandomize=True)
@given(gain=st.floats(0.1, 3.0), fan_in=st.sampled_from(FAN_INS))
def test_fan_in_rule_linear(name, gain, fan_in):
    shape = (SCALING_N // fan_in, fan_in)
    assert fans(shape) == (fan_in, shape[0])
    spec = DistributionSpec(name, STD_PARAMS.get(name, {}), scaling="fan_in", gain=gain)
    w = sample(spec, shape, SEED)
    raw = raw_draws(name, shape, **spec.params)
    np.testing.assert_allclose(w, raw * gain / (spec.family.scale(**spec.params) * math.sqrt(fan_in)), rtol=1e-12)
    assert w.std() == pytest.approx(gain / math.sqrt(fan_in), rel=0.05)


@pytest.mark.parametrize("name", FINITE_VARIANCE)
@settings(max_examples=4, deadline=None, derandomize=True)
@given(gain=st.floats(0.1, 3.0), cin=st.sampled_from([3, 16]), k=st.sampled_from([1, 3, 5]))
def test_fan_in_rule_conv(name, gain, cin, k):
    fan_in = cin * k * k
    shape = (SCALING_N // fan_in, cin, k, k)
    assert fans(shape) == (fan_in, shape[0] * k * k)
    spec = DistributionSpec(name, STD_PARAMS.get(name, {}), scaling="fan_in", gain=gain)
    w = sample(spec, shape, SEED)
    assert w.shape == shape
    assert w.std() == pytest.approx(gain / math.sqrt(fan_in), rel=0.05)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(gain=st.floats(0.1, 3.0), fan_in=st.sampled_from(FAN_INS))
def test_fan_in_rule_cauchy_uses_scale_parameter(gain, fan_in):
    # Standard Cauchy: median |x| = gamma = 1, so the scaled median |w| is gain / sqrt(fan_in).
    shape = (SCALING_N // fan_in, fan_in)
    w = sample(DistributionSpec("cauchy", scaling="fan_in", gain=gain), shape, SEED)
    assert np.median(np.abs(w)) == pytest.approx(gain / math.sqrt(fan_in), rel=0.03)


def test_fan_in_rule_keeps_zeros():
    w = sample(DistributionSpec("zeros", scaling="fan_in", gain=2.0), (8, 8), SEED)
    assert not w.any() and np.isfinite(w).all()


@pytest.mark.parametrize("shape, expected", [((10, 20), (20, 10)), ((4, 3, 5, 5), (75, 100)), ((7, 2, 3), (6, 21))])
def test_fans(shape, expected):
    assert fans(shape) == expected


def test_fans_rejects_vectors():
    with pytest.raises(ValueError):
        fans((5,))


@pytest.mark.parametrize("name", ["spectral_normal", "normal", "uniform", "laplace", "gaussian_mixture", "orthogonal"])
@settings(max_examples=10, deadline=None)
@given(rho=st.floats(0.05, 2.0, exclude_min=True, exclude_max=True), n=st.integers(2, 40), seed=seeds)
def test_spectral_radius_rule(name, rho, n, seed):
    spec = DistributionSpec(name, scaling="spectral_radius", rho=rho)
    w = sample(spec, (n, n), seed)
    assert np.max(np.abs(np.linalg.eigvals(w))) == pytest.approx(rho, rel=1e-6)
    assert spectral_radius(w) == pytest.approx(rho, rel=1e-6)


def test_spectral_normal_defaults_to_spectral_rule():
    spec = DistributionSpec("spectral_normal")
    assert spec.scaling == "spectral_radius" and spec.rho == 0.95
    w = sample(spec, (30, 30), SEED)
    assert np.max(np.abs(np.linalg.eigvals(w))) == pytest.approx(0.95, rel=1e-6)


def test_spectral_rule_on_rectangular_uses_largest_singular_value():
    w = sample(DistributionSpec("normal", scaling="spectral_radius", rho=0.5), (12, 30), SEED)
    assert np.linalg.norm(w, 2) == pytest.approx(0.5, rel=1e-9)


@pytest.mark.parametrize("name", FAMILIES)
@settings(max_examples=5, deadline=None)
@given(gain=st.floats(0.0, 3.0), shape=small_shapes, seed=seeds)
@example(gain=5e-324, shape=(1, 1), seed=0)  # a subnormal gain: every entry underflows, refused as all zero
def test_none_rule_is_raw_times_gain(name, gain, shape, seed):
    w = sample_or_all_zero(DistributionSpec(name, scaling="none", gain=gain), shape, seed)
    if w is not None:
        np.testing.assert_array_equal(w, raw_draws(name, shape, seed) * gain)


def test_spectral_rule_refuses_a_nilpotent_draw():
    # a strictly upper-triangular draw has spectral radius 0 and cannot be rescaled to rho
    from reservoir_depth.distributions import SCALINGS
    spec = DistributionSpec("normal", scaling="spectral_radius")
    with pytest.raises(ValueError, match="nilpotent"):
        SCALINGS["spectral_radius"](np.triu(np.ones((3, 3)), 1), spec, spec.family, spec.params, 3, 3)
    zero = SCALINGS["spectral_radius"](np.zeros((3, 3)), spec, spec.family, spec.params, 3, 3)
    assert not zero.any()
