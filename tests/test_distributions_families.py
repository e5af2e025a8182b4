"""Tests of reservoir_depth.distributions.families: each family's law under both draw versions, its scale,
its parameter checks and the registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from distribution_cases import (
    FAMILIES,
    NO_FINITE_VARIANCE,
    SELF_SCALED,
    STD_PARAMS,
    SEED,
    KS_N,
    STD_N,
    seeds,
    raw_draws,
    assert_frequency,
    assert_ks,
)
from reservoir_depth.distributions import DISTRIBUTIONS, DRAW_VERSIONS, DistributionSpec, Family, fans, register, sample


def check_reference_law(name: str, version: int) -> None:
    spec = DistributionSpec(name)
    ref = spec.family.reference(**spec.params)
    x = raw_draws(name, (KS_N,), version=version)
    if hasattr(ref, "pmf"):  # discrete law: compare frequencies with the pmf
        values, counts = np.unique(x, return_counts=True)
        pmf = ref.pmf(values)
        assert np.all(pmf > 0), f"{name}: values {values[pmf == 0]} outside the support"
        assert math.isclose(pmf.sum(), 1.0, abs_tol=1e-9), f"{name}: some support values never drawn"
        for v, c, p in zip(values, counts, pmf):
            assert_frequency(c, KS_N, p, f"{name} P(X={v})")
    else:
        assert_ks(x, ref.cdf, name)


def check_self_scaled_law(name: str, version: int) -> None:
    """Families with no reference: the law of one entry follows from (fan_in, fan_out)."""
    shape = (100, 200)
    fan_in, fan_out = fans(shape)
    params = DistributionSpec(name).params
    x = raw_draws(name, shape, version=version).ravel()
    if name.startswith("kaiming"):
        assert params["gain"] == pytest.approx(math.sqrt(2.0))
        std = params["gain"] / math.sqrt(fan_in)
    else:
        assert params["gain"] == 1.0
        std = params["gain"] * math.sqrt(2.0 / (fan_in + fan_out))
    assert x.std() == pytest.approx(std, rel=0.03)
    assert abs(x.mean()) < 4 * std / math.sqrt(x.size)
    if name.endswith("normal"):
        assert_ks(x, stats.norm(0, std).cdf, name)
    else:
        bound = math.sqrt(3) * std  # kaiming: gain sqrt(3 / fan_in); xavier: gain sqrt(6 / (fan_in + fan_out))
        assert np.abs(x).max() <= bound and np.abs(x).max() > 0.99 * bound
        assert_ks(x, stats.uniform(-bound, 2 * bound).cdf, name)


def check_orthogonal_moments(version: int) -> None:
    for shape in [(50, 80), (80, 50)]:
        x = raw_draws("orthogonal", shape, version=version)
        # Frobenius norm^2 = min(rows, cols): mean square 1 / max(rows, cols), mean ~ 0.
        assert np.mean(x**2) == pytest.approx(1 / max(shape), rel=1e-12)
        assert abs(x.mean()) < 4 / math.sqrt(max(shape) * x.size)


def check_sparse_normal(version: int) -> None:
    p = DistributionSpec("sparse_normal").params["p"]
    x = raw_draws("sparse_normal", (KS_N,), version=version)
    nz = x[x != 0]
    assert_frequency(nz.size, KS_N, p, "sparse_normal density")
    assert_ks(nz, stats.norm().cdf, "sparse_normal non-zeros")


def check_quantized_normal(version: int) -> None:
    params = DistributionSpec("quantized_normal").params
    bits, clip = params["bits"], params["clip"]
    x = raw_draws("quantized_normal", (KS_N,), version=version)
    values, counts = np.unique(x, return_counts=True)
    assert len(values) <= 2**bits
    assert values.min() >= -clip and values.max() <= clip
    levels = np.linspace(-clip, clip, 2**bits)
    assert np.isclose(values[:, None], levels[None, :], rtol=0, atol=1e-12).any(axis=1).all()
    # Each level collects the N(0, 1) mass of its rounding cell.
    step = levels[1] - levels[0]
    edges = np.concatenate([[-np.inf], levels[:-1] + step / 2, [np.inf]])
    probs = np.diff(stats.norm.cdf(edges))
    freq = {v: c for v, c in zip(np.round(values, 9), counts)}
    for level, p in zip(np.round(levels, 9), probs):
        assert_frequency(freq.get(level, 0), KS_N, p, f"quantized_normal P(X={level})")
    assert x.std() == pytest.approx(DISTRIBUTIONS["quantized_normal"].scale(**params), rel=0.03)


def check_zeros(version: int) -> None:
    x = raw_draws("zeros", (50, 40), version=version)
    assert x.shape == (50, 40) and not x.any()


MOMENT_CHECKS = {
    "orthogonal": check_orthogonal_moments,
    "kaiming_normal": lambda v: check_self_scaled_law("kaiming_normal", v),
    "kaiming_uniform": lambda v: check_self_scaled_law("kaiming_uniform", v),
    "xavier_normal": lambda v: check_self_scaled_law("xavier_normal", v),
    "xavier_uniform": lambda v: check_self_scaled_law("xavier_uniform", v),
    "sparse_normal": check_sparse_normal,
    "quantized_normal": check_quantized_normal,
    "zeros": check_zeros,
}


@pytest.mark.parametrize("version", DRAW_VERSIONS)
@pytest.mark.parametrize("name", FAMILIES)
def test_samples_match_declared_law(name, version):
    family = DISTRIBUTIONS[name]
    if family.reference is not None:
        check_reference_law(name, version)
    elif name in MOMENT_CHECKS:
        MOMENT_CHECKS[name](version)
    else:
        pytest.fail(f"family {name!r} has no reference law and no moment check: add one to MOMENT_CHECKS")


@pytest.mark.parametrize("version", DRAW_VERSIONS)
@pytest.mark.parametrize("name", FAMILIES)
def test_scale_is_std_of_raw_draws(name, version):
    """scale(**params) is the std of the raw draws for every finite-variance family."""
    if name in NO_FINITE_VARIANCE or name in SELF_SCALED:
        pytest.skip(f"{name}: scale() is not a standard deviation")
    spec = DistributionSpec(name, STD_PARAMS.get(name, {}))
    x = raw_draws(name, (STD_N,), version=version, **spec.params)
    expected = spec.family.scale(**spec.params)
    assert x.std() == pytest.approx(expected, rel=0.05, abs=1e-12)


def test_self_scaled_families_default_to_no_scaling():
    # Keeps the SELF_SCALED exemption above honest.
    for name in SELF_SCALED | {"zeros"}:
        assert DistributionSpec(name).scaling == "none"


def test_scale_of_families_without_variance():
    assert DISTRIBUTIONS["cauchy"].scale() == 1.0
    t = DISTRIBUTIONS["student_t"]
    assert t.scale(df=2.0) == 1.0 and t.scale(df=1.0) == 1.0
    assert t.scale(df=3.0) == pytest.approx(math.sqrt(3.0))


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), seed=seeds)
def test_orthogonal_is_semi_orthogonal(rows, cols, seed):
    w = sample("orthogonal", (rows, cols), seed)
    assert w.shape == (rows, cols)
    if rows <= cols:
        np.testing.assert_allclose(w @ w.T, np.eye(rows), atol=1e-10)
    if rows >= cols:
        np.testing.assert_allclose(w.T @ w, np.eye(cols), atol=1e-10)


def test_orthogonal_conv_shape():
    w = sample("orthogonal", (4, 3, 3, 3), SEED).reshape(4, 27)
    np.testing.assert_allclose(w @ w.T, np.eye(4), atol=1e-10)


def test_orthogonal_diagonal_has_zero_mean():
    # Haar (weak form): without the sign correction, QR gives a biased diagonal
    # (e.g. Q[0, 0] = -|a| / ||a|| < 0 always with Householder QR).
    n, draws = 4, 500
    diag = np.stack([np.diag(sample("orthogonal", (n, n), seed)) for seed in range(draws)])
    se = 1 / math.sqrt(n * diag.size)  # each entry has variance 1 / n
    assert abs(diag.mean()) < 5 * se
    for i in range(n):  # every position, not only on average
        assert abs(diag[:, i].mean()) < 5 / math.sqrt(n * draws)


@pytest.mark.parametrize(
    "name, params",
    [
        ("sparse_normal", {"p": 0.0}),
        ("sparse_normal", {"p": 1.5}),
        ("erdos_renyi", {"p": -0.1}),
        ("uniform", {"low": 1.0, "high": 1.0}),
        ("uniform", {"low": 2.0, "high": 1.0}),
        ("truncated_normal", {"a": 1.0, "b": -1.0}),
        ("student_t", {"df": 0.0}),
        ("beta", {"a": 0.0}),
        ("lognormal", {"sigma": 0.0}),
        ("kaiming_normal", {"gain": -1.0}),
        ("quantized_normal", {"bits": 5}),
        ("quantized_normal", {"clip": 0.0}),
        ("gaussian_mixture", {"means": (0.0, 1.0), "stds": (1.0,), "weights": (0.5, 0.5)}),
        ("gaussian_mixture", {"means": (), "stds": (), "weights": ()}),
        ("gaussian_mixture", {"means": (0.0,), "stds": (0.0,), "weights": (1.0,)}),
    ],
)
def test_invalid_parameters(name, params):
    with pytest.raises(ValueError):
        DistributionSpec(name, params)


def test_register_existing_name_raises():
    before = dict(DISTRIBUTIONS)
    with pytest.raises(ValueError, match="normal"):
        register(Family("normal", lambda rng, s, fi, fo: rng.standard_normal(s)))
    assert DISTRIBUTIONS == before


def test_register_new_family():
    name = "_test_constant"
    try:
        register(Family(name, lambda rng, s, fi, fo, c: np.full(s, c), defaults={"c": 2.0}, default_scaling="none"))
        with pytest.raises(ValueError, match="already registered"):
            register(Family(name, lambda rng, s, fi, fo: np.zeros(s)))
        np.testing.assert_array_equal(sample(DistributionSpec(name, {"c": 3.0}, gain=2.0), (2, 3), 0), np.full((2, 3), 6.0))
    finally:
        DISTRIBUTIONS.pop(name, None)
    assert name not in DISTRIBUTIONS


@pytest.mark.parametrize("bits", [4.0, True, 5])
def test_quantized_bits_must_be_an_allowed_int(bits):
    with pytest.raises(ValueError, match="bits must be one of"):
        DistributionSpec("quantized_normal", params={"bits": bits})


@pytest.mark.parametrize("clip", [1.0, 3.0])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 16])
def test_quantized_scale_at_every_bits(bits, clip):
    """scale() against an independent computation: E[q(x)^2] by quadrature of the rounding map on a fine grid."""
    x = np.linspace(-12.0, 12.0, 2_400_001)
    step = 2 * clip / (2**bits - 1)
    q = -clip + step * np.clip(np.floor((x + clip) / step + 0.5), 0, 2**bits - 1)
    expected = math.sqrt(np.trapezoid(q**2 * stats.norm.pdf(x), x))
    assert DISTRIBUTIONS["quantized_normal"].scale(bits=bits, clip=clip) == pytest.approx(expected, rel=1e-4)
    if bits == 1:  # two levels +-clip: the std is clip itself
        assert expected == pytest.approx(clip, rel=1e-6)
    spec = DistributionSpec("quantized_normal", {"bits": bits, "clip": clip}, scaling="fan_in", gain=1.5)
    assert sample(spec, (256, 64), SEED).std() == pytest.approx(1.5 / 8, rel=0.03)


@pytest.mark.parametrize("version", DRAW_VERSIONS)
def test_orthogonal_default_gives_an_expanding_layer_a_quarter_of_the_fan_in_variance(version):
    """As documented: unit singular values, so entry variance 1/max(rows, cols) = (cols/rows) / fan_in."""
    rows, cols = 256, 64
    w = sample(DistributionSpec("orthogonal", version=version), (rows, cols), SEED)
    assert np.mean(w**2) == pytest.approx(0.25 / cols, rel=1e-12)
    restored = sample(DistributionSpec("orthogonal", gain=math.sqrt(rows / cols), version=version), (rows, cols), SEED)
    assert np.mean(restored**2) == pytest.approx(1 / cols, rel=1e-12)  # gain sqrt(rows/cols) restores 1/fan_in
    contracting = sample(DistributionSpec("orthogonal", version=version), (cols, rows), SEED)
    assert np.mean(contracting**2) == pytest.approx(1 / rows, rel=1e-12)  # fan_in = rows: the full variance
    assert "1/4" in DISTRIBUTIONS["orthogonal"].doc


def test_asymmetric_truncated_normal_has_a_mean_that_center_removes():
    spec = DistributionSpec("truncated_normal", {"a": -1.0, "b": 3.0}, scaling="none")
    assert spec.mean == pytest.approx(stats.truncnorm(-1.0, 3.0).mean()) and spec.mean > 0.2
    assert sample(spec, (100, 100), SEED).mean() == pytest.approx(spec.mean, abs=0.03)
    centred = DistributionSpec("truncated_normal", {"a": -1.0, "b": 3.0}, scaling="none", center=True)
    assert abs(sample(centred, (100, 100), SEED).mean()) < 0.03
    assert "mean != 0" in DISTRIBUTIONS["truncated_normal"].doc
