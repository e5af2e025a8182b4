"""Tests of reservoir_depth.distributions: seeded draws, laws, scaling rules, specs.

Every family-level test is parametrised over ``sorted(DISTRIBUTIONS)`` so that a
newly registered family is covered automatically. Statistical tests use fixed
seeds (and ``derandomize=True`` where hypothesis picks sizes), so they are
deterministic; their tolerances are several standard errors wide.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from scipy import stats

from reservoir_depth.distributions import (
    DEFAULT_VERSION,
    DISTRIBUTIONS,
    DRAW_VERSIONS,
    PHILOX_CHUNK,
    DistributionSpec,
    Family,
    Stream,
    as_spec,
    draw,
    fans,
    layer_seed,
    philox4x32,
    raw_sample,
    register,
    sample,
    spectral_radius,
)

FAMILIES = sorted(DISTRIBUTIONS)

# Families whose raw draws have no finite variance: scale() is a scale parameter, not a std.
NO_FINITE_VARIANCE = {"cauchy"}
# Families that already carry their own fan-based scaling (default scaling 'none'):
# their scale() is a placeholder 1.0, not the std of the raw draws.
SELF_SCALED = {"orthogonal", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform"}
# Parameters that make a family's empirical std converge at a usable rate
# (student_t's default df=3 has an infinite fourth moment).
STD_PARAMS = {"student_t": {"df": 10.0}}

FINITE_VARIANCE = [f for f in FAMILIES if f not in NO_FINITE_VARIANCE | SELF_SCALED | {"zeros"}]

SEED = 20240611  # fixed seed of the statistical tests
KS_N = 20_000
STD_N = 100_000

seeds = st.integers(min_value=0, max_value=2**64 - 1)
small_shapes = st.lists(st.integers(1, 6), min_size=2, max_size=4).map(tuple)


# Families whose draw is all zero with a positive probability on a small shape (raised as an error).
MAY_BE_ALL_ZERO = {"sparse_normal", "erdos_renyi"}


def raw_draws(name: str, shape: tuple[int, ...], seed: int = SEED, version: int = DEFAULT_VERSION,
              **params) -> np.ndarray:
    """Raw draws of one family (no centring, no scaling rule) under one draw version, as numpy."""
    x = raw_sample(DistributionSpec(name, params, version=version), shape, seed)
    return x if isinstance(x, np.ndarray) else x.numpy()


def sample_or_all_zero(spec, shape, seed):
    """sample(), or None where the draw is refused as all zero: only the sparse families on small shapes,
    or a scale so small (a subnormal gain) that every scaled entry underflows to 0."""
    try:
        return sample(spec, shape, seed)
    except ValueError as e:
        spec = as_spec(spec)
        underflow = spec.gain > 0 and not np.any(np.asarray(raw_sample(spec, shape, seed)) * spec.gain)
        assert (spec.name in MAY_BE_ALL_ZERO or underflow) and "is all zero" in str(e), str(e)
        return None


def assert_frequency(count: int, n: int, p: float, what: str) -> None:
    se = math.sqrt(p * (1 - p) / n)
    assert abs(count / n - p) < 4 * se + 1e-12, f"{what}: frequency {count / n:.5f}, expected {p:.5f} (se {se:.5f})"


def assert_ks(x: np.ndarray, cdf, what: str) -> None:
    pvalue = stats.kstest(x, cdf).pvalue
    assert pvalue > 1e-3, f"{what}: KS p-value {pvalue:.2e}"


# ----------------------------------------------------------------------------- 1. determinism


@pytest.mark.parametrize("version", DRAW_VERSIONS)
@pytest.mark.parametrize("name", FAMILIES)
@settings(max_examples=10, deadline=None)
@given(shape=small_shapes, seed=seeds)
def test_same_seed_same_draw(name, version, shape, seed):
    spec = DistributionSpec(name, version=version)
    np.random.seed(0)  # the global numpy RNG (and torch's) must play no part
    torch.manual_seed(0)
    a = sample_or_all_zero(spec, shape, seed)
    np.random.seed(1)
    torch.manual_seed(1)
    b = sample_or_all_zero(DistributionSpec.from_dict(spec.to_dict()), shape, seed)
    if a is None:
        assert b is None
        return
    assert a.shape == shape and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)

    w = draw(spec, shape, seed)
    assert w.dtype == torch.float32 and w.device.type == "cpu" and tuple(w.shape) == shape
    assert torch.equal(w, torch.from_numpy(a).to(torch.float32))
    assert torch.equal(w, draw(spec, shape, seed))


@pytest.mark.parametrize("name", FAMILIES)
@settings(max_examples=15, deadline=None)
@given(seed_a=seeds, seed_b=seeds, shape=st.sampled_from([(16, 16), (8, 4, 3, 3), (64, 8)]))
def test_different_seeds_different_draws(name, seed_a, seed_b, shape):  # the default version
    # >= 256 entries: even the {0, 1} / {-1, 1} families coincide with probability < 1e-20.
    assume(seed_a != seed_b)
    a, b = sample(name, shape, seed_a), sample(name, shape, seed_b)
    if name == "zeros":
        assert not a.any() and not b.any()
    else:
        assert not np.array_equal(a, b)


def test_draw_dtype_argument():
    w = draw("normal", (5, 7), 3, dtype=torch.float64)
    assert w.dtype == torch.float64
    np.testing.assert_array_equal(w.numpy(), sample("normal", (5, 7), 3))


# ----------------------------------------------------------------------------- 2. layer seeds

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


# ----------------------------------------------------------------------------- 3. laws


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


# ----------------------------------------------------------------------------- 4. scaling rules

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


@pytest.mark.parametrize("name", FAMILIES)
@settings(max_examples=5, deadline=None)
@given(gain=st.floats(0.0, 3.0), shape=small_shapes, seed=seeds)
@example(gain=5e-324, shape=(1, 1), seed=0)  # a subnormal gain: every entry underflows, refused as all zero
def test_none_rule_is_raw_times_gain(name, gain, shape, seed):
    w = sample_or_all_zero(DistributionSpec(name, scaling="none", gain=gain), shape, seed)
    if w is not None:
        np.testing.assert_array_equal(w, raw_draws(name, shape, seed) * gain)


# ----------------------------------------------------------------------------- 5. errors


def test_unknown_distribution_name():
    with pytest.raises(ValueError) as err:
        DistributionSpec("gausian")
    msg = str(err.value)
    assert "gausian" in msg and "normal" in msg and "orthogonal" in msg
    with pytest.raises(ValueError, match="gausian"):
        sample("gausian", (3, 3), 0)


def test_unknown_parameter():
    with pytest.raises(ValueError, match="sigma"):
        DistributionSpec("normal", {"sigma": 2.0})
    with pytest.raises(ValueError, match="densty"):
        DistributionSpec("sparse_normal", {"densty": 0.2})


def test_unknown_scaling():
    with pytest.raises(ValueError, match="fan_out"):
        DistributionSpec("normal", scaling="fan_out")


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


@pytest.mark.parametrize("kw", [{"gain": -1.0}, {"rho": float("nan")}, {"gain": float("inf")}, {"rho": -0.5}])
def test_invalid_gain_or_rho(kw):
    with pytest.raises(ValueError):
        DistributionSpec("normal", **kw)


# ----------------------------------------------------------------------------- 6. serialisation


@pytest.mark.parametrize("name", FAMILIES)
def test_spec_dict_round_trip(name):
    spec = DistributionSpec(name)
    d = spec.to_dict()
    back = DistributionSpec.from_dict(json.loads(json.dumps(d)))
    assert back == spec and back.to_dict() == d
    assert as_spec(d) == spec and as_spec(name) == spec and as_spec(spec) is spec
    np.testing.assert_array_equal(sample(back, (6, 5), 7), sample(spec, (6, 5), 7))


def test_spec_dict_round_trip_non_defaults():
    spec = DistributionSpec(
        "gaussian_mixture",
        {"means": (np.float64(-2.0), 0.0, 3.0), "stds": (1.0, 0.5, 0.25), "weights": (1, 2, 1)},
        scaling="spectral_radius",
        gain=0.5,
        rho=1.3,
    )
    d = spec.to_dict()
    text = json.dumps(d)
    assert d["params"]["means"] == [-2.0, 0.0, 3.0] and isinstance(d["params"]["stds"], list)
    assert d["scaling"] == "spectral_radius" and d["gain"] == 0.5 and d["rho"] == 1.3
    back = DistributionSpec.from_dict(json.loads(text))
    assert back == spec
    np.testing.assert_array_equal(sample(back, (9, 9), 1), sample(spec, (9, 9), 1))


def test_as_spec_string():
    spec = as_spec("normal")
    assert isinstance(spec, DistributionSpec)
    assert spec.name == "normal" and spec.scaling == "fan_in" and spec.gain == 1.0


# ----------------------------------------------------------------------------- 7. registry


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


def test_spectral_rule_refuses_a_nilpotent_draw():
    # a strictly upper-triangular draw has spectral radius 0 and cannot be rescaled to rho
    from reservoir_depth.distributions import SCALINGS
    spec = DistributionSpec("normal", scaling="spectral_radius")
    with pytest.raises(ValueError, match="nilpotent"):
        SCALINGS["spectral_radius"](np.triu(np.ones((3, 3)), 1), spec, spec.family, spec.params, 3, 3)
    zero = SCALINGS["spectral_radius"](np.zeros((3, 3)), spec, spec.family, spec.params, 3, 3)
    assert not zero.any()


@pytest.mark.parametrize("bits", [4.0, True, 5])
def test_quantized_bits_must_be_an_allowed_int(bits):
    with pytest.raises(ValueError, match="bits must be one of"):
        DistributionSpec("quantized_normal", params={"bits": bits})


def test_numpy_gain_is_accepted_and_json_safe():
    spec = DistributionSpec("normal", gain=np.float32(2.0), rho=np.float64(0.5))
    assert type(spec.gain) is float and json.dumps(spec.to_dict())
    with pytest.raises(ValueError, match="gain"):
        DistributionSpec("normal", gain=True)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_center_removes_the_family_mean(name):
    if name == "cauchy":
        with pytest.raises(ValueError, match="finite mean"):
            DistributionSpec(name, center=True)
        return
    spec = DistributionSpec(name, center=True, scaling="none")
    raw = sample(DistributionSpec(name, scaling="none"), (200, 200), 3)
    w = sample(spec, (200, 200), 3)
    np.testing.assert_allclose(w, raw - spec.mean)
    ref = spec.family.reference
    if ref is not None:
        sd = float(ref(**spec.params).std())
        assert abs(w.mean()) < 5 * sd / 200  # 4e4 draws: the mean is within 5 standard errors of 0
    assert "center" not in DistributionSpec(name).to_dict()  # old specs keep their serialisation
    assert DistributionSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="center"):
        DistributionSpec(name, center=1)


# ----------------------------------------------------------------------------- 8. checked parameters and draws


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("student_t", {"df": float("inf")}, r"parameter df=inf of distribution 'student_t' is not allowed: "
                                            r"df must be a finite number > 0"),
        ("student_t", {"df": "3"}, r"parameter df='3' .*df must be a finite number > 0"),
        ("gaussian_mixture", {"means": (float("nan"), 1.0)}, r"parameter means=\(nan, 1.0\) .*list of finite numbers"),
        ("gaussian_mixture", {"weights": 0.5}, r"weights must be a list of finite numbers >= 0"),
        ("lognormal", {"sigma": float("nan")}, r"sigma must be a finite number > 0"),
        ("quantized_normal", {"clip": "3"}, r"clip must be a finite number > 0"),
        ("quantized_normal", {"bits": 4.0}, r"bits must be one of the ints 1, 2, 3, 4, 8, 16"),
        ("beta", {"a": None}, r"parameter a=None of distribution 'beta'"),
        ("uniform", {"low": True}, r"low must be a finite number < high"),
        ("sparse_normal", {"p": [0.1]}, r"p must be a number in \(0, 1\]"),
    ],
)
def test_parameters_of_the_wrong_type_or_not_finite(name, params, match):
    with pytest.raises(ValueError, match=match):
        DistributionSpec(name, params)


@pytest.mark.parametrize("version", DRAW_VERSIONS)
@pytest.mark.parametrize("name, params", [
    ("lognormal", {"sigma": 1000.0}),  # exp(1000 z) overflows
    ("beta", {"a": 1e-300, "b": 1e-300}),  # numpy gives NaN draws; the law's std is NaN
    ("sparse_normal", {"p": 1e-300}),  # every entry dropped
    ("erdos_renyi", {"p": 1e-300}),  # an empty graph
])
def test_bad_draws_are_refused_naming_family_and_parameters(name, params, version):
    spec = DistributionSpec(name, params, version=version)
    with pytest.raises(ValueError, match=rf"{name} with \{{.*{list(params)[0]}"):
        draw(spec, (8, 8), 0)
    with pytest.raises(ValueError, match=rf"{name} with \{{.*{list(params)[0]}"):
        sample(spec, (8, 8), 0)


def test_all_zero_check_spares_the_zeros_family_and_zero_gain():
    assert not draw(DistributionSpec("zeros"), (4, 4), 0).any()
    assert not draw(DistributionSpec("zeros", scaling="fan_in", gain=3.0), (4, 4), 0).any()
    assert not draw(DistributionSpec("normal", gain=0.0), (4, 4), 0).any()
    assert not draw(DistributionSpec("normal", scaling="spectral_radius", rho=0.0), (4, 4), 0).any()


PARAM_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 20),
                         st.sampled_from([1e-300, 1e300, 1000.0, -0.0, "3", None, True]),
                         st.lists(st.floats(-1e3, 1e3) | st.just(float("nan")), max_size=3))


@pytest.mark.parametrize("name", [f for f in FAMILIES if DISTRIBUTIONS[f].defaults])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_draw_is_finite_and_non_zero_or_refused(name, data):
    """Over the registry: any parameters give a ValueError or a finite, not-all-zero W_seed."""
    family = DISTRIBUTIONS[name]
    params = {k: data.draw(PARAM_VALUES, label=k) for k in family.defaults if data.draw(st.booleans())}
    version = data.draw(st.sampled_from(DRAW_VERSIONS), label="version")
    try:
        spec = DistributionSpec(name, params, version=version)
        w = draw(spec, (6, 7), 1)
    except ValueError:
        return
    assert torch.isfinite(w).all() and w.any()


# ----------------------------------------------------------------------------- 9. quantized_normal's scale


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


# ----------------------------------------------------------------------------- 10. draw versions

# sha256 (first 16 hex digits) of the float32 bytes of draw(name, (6, 5), 20261127) and its [0, 0] entry,
# computed with the code as it was before draw versions existed (numpy 2.4.6, scipy 1.17.1):
# version 1 must keep reproducing them byte for byte (adapter files and stored studies depend on it).
V1_PINS = {
    "beta": ("b81cc07b293e5706", 0.6235023736953735),
    "binary": ("b118969b61489dd9", 0.4472135901451111),
    "cauchy": ("f1886babfd807266", -1.195910096168518),
    "erdos_renyi": ("965a6af9bc292a7b", 0.0),
    "exponential": ("a5cfe35f7cd30f1d", 0.38077887892723083),
    "gaussian_mixture": ("accfd88ec81a1fdd", -0.12845134735107422),
    "kaiming_normal": ("15b11cf8ddf0ba42", -0.8123940229415894),
    "kaiming_uniform": ("b0c9e0363e82125b", -0.2866705656051636),
    "laplace": ("59409a765800e932", -0.0959421917796135),
    "logistic": ("aa3c70969c2c0869", -0.1321202516555786),
    "lognormal": ("111fa9e82de7043c", 0.38960298895835876),
    "normal": ("c85af3f5454f6927", -0.5744493007659912),
    "orthogonal": ("cfe0093d9706d801", -0.47055137157440186),
    "quantized_normal": ("a4f82eb0e31c6e66", -0.623408317565918),
    "sparse_normal": ("e212abc612d98c7f", -0.0),
    "spectral_normal": ("8b46a71a9342c3b8", -0.3690558969974518),
    "student_t": ("3a57e500a3515487", -0.30564382672309875),
    "truncated_normal": ("793177b9bd2b5008", -0.16185718774795532),
    "uniform": ("67d5fbf121701378", -0.2027066946029663),
    "xavier_normal": ("889abc923b83163d", -0.5477159023284912),
    "xavier_uniform": ("ed1c94d37d2f907c", -0.19327326118946075),
    "zeros": ("6edd9f6f9cc92cde", 0.0),
}


def sha16(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(V1_PINS))
def test_version_1_reproduces_the_legacy_bytes(name):
    w = draw(DistributionSpec.from_dict({"name": name}), (6, 5), 20261127)  # a dict without version: version 1
    assert (sha16(w.numpy()), float(w[0, 0])) == V1_PINS[name]


def test_version_1_reproduces_legacy_centred_and_spectral_draws():
    spec = DistributionSpec("truncated_normal", {"a": -1.0, "b": 3.0}, center=True, scaling="fan_in", gain=2.0,
                            version=1)
    s = sample(spec, (4, 3, 2), 7)
    assert (sha16(s), float(s.flat[5])) == ("38df1a84ba44ae3a", 0.9952564419059287)
    # the spectral rule divides by a LAPACK eigenvalue: other LAPACK builds move its last bits, so a value, not bytes
    s = sample(DistributionSpec("normal", scaling="spectral_radius", rho=0.9, version=1), (8, 8), 3)
    assert float(s.flat[5]) == pytest.approx(-0.044140633387551795, rel=1e-12)
    raw = sample(DistributionSpec("normal", scaling="none", version=1), (8, 8), 3)
    assert sha16(raw) == "98cc8ca17dacc1ac"  # computed with the code before draw versions
    np.testing.assert_allclose(s / s.flat[5], raw / raw.flat[5], rtol=1e-13)


def test_every_builtin_family_is_pinned():
    assert set(V1_PINS) <= set(FAMILIES)


def test_version_in_the_spec_dict():
    assert DistributionSpec("normal").version == DEFAULT_VERSION == 2 and as_spec("normal").version == 2
    legacy = {"name": "normal", "params": {}, "scaling": "fan_in", "gain": 1.0, "rho": 0.95}
    old = DistributionSpec.from_dict(legacy)
    assert old.version == 1 and old.to_dict() == legacy  # stored run ids and hashes do not change
    assert as_spec(dict(legacy)).version == 1
    new = DistributionSpec("normal")
    assert new.to_dict() == {**legacy, "version": 2} and DistributionSpec.from_dict(new.to_dict()) == new
    assert not np.array_equal(sample(old, (5, 5), 1), sample(new, (5, 5), 1))


@pytest.mark.parametrize("bad", [0, 3, "2", 2.0, True, None])
def test_unknown_draw_version(bad):
    with pytest.raises(ValueError, match=r"draw version must be one of \(1, 2\)"):
        DistributionSpec("normal", version=bad)


def test_philox_known_answers():
    """Philox4x32-10 known-answer vectors of Random123 (Salmon et al. 2011)."""
    kat = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
           ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in kat:
        assert philox4x32(*counter, *key) == expected
        as_tensor = philox4x32(*(torch.tensor([c]) for c in counter), *key)
        assert tuple(int(t) for t in as_tensor) == expected
        as_array = philox4x32(*(np.array([c], np.uint64) for c in counter), *key)
        assert tuple(int(a[0]) for a in as_array) == expected


@settings(max_examples=20, deadline=None)
@given(key=st.integers(0, 2**64 - 1), n=st.integers(1, 300), sub=st.integers(0, 3))
def test_stream_words_agree_across_backends_and_with_python_ints(key, n, sub):
    src = Stream(key, n)
    a, b = src.words(sub, backend="numpy"), src.words(sub, backend="torch")
    assert torch.equal(a, b) and a.dtype == torch.int64 and int(a.min()) >= 0 and int(a.max()) < 2**32
    # the CPU path (numpy) and the device path (torch blocks): identical uniforms, normals to the last bit
    x, y = src.uniform(sub, backend="numpy"), src.uniform(sub, backend="torch")
    assert x.shape == (n,) and x.dtype == torch.float64 and torch.equal(x, y)
    x, y = src.normal(sub, backend="numpy"), src.normal(sub, backend="torch")
    assert x.shape == (n,) and x.dtype == torch.float64
    torch.testing.assert_close(x, y, rtol=4e-16, atol=4e-16)
    i = n // 2  # entry i = word i % 4 of block i // 4, computed by hand with Python ints
    assert int(a[i]) == philox4x32(i // 4, 0, sub, 0, key & 0xFFFFFFFF, key >> 32)[i % 4]


def test_stream_does_not_depend_on_chunking_or_threads(monkeypatch):
    full, normal = Stream(99, 1000).words(2), Stream(99, 1000).normal(2)
    monkeypatch.setitem(PHILOX_CHUNK, "cpu", 7)
    monkeypatch.setitem(PHILOX_CHUNK, "device", 5)
    assert torch.equal(Stream(99, 1000).words(2, backend="numpy"), full)
    assert torch.equal(Stream(99, 1000).words(2, backend="torch"), full)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # chunks computed by a pool of 3 threads
        assert torch.equal(Stream(99, 1000).words(2), full) and torch.equal(Stream(99, 1000).normal(2), normal)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", FAMILIES)
def test_version_2_is_deterministic_and_seeded(name):
    spec = DistributionSpec(name)
    a, b, c = (draw(spec, (40, 30), s) for s in (5, 5, 6))
    assert torch.equal(a, b)
    assert name == "zeros" or not torch.equal(a, c)


# The zero-mean-free pairs of families are independent streams under version 2; under version 1 these
# groups are one matrix up to scale.
SAME_STREAM_V1 = [("normal", "kaiming_normal", "xavier_normal", "spectral_normal"),
                  ("uniform", "kaiming_uniform", "xavier_uniform")]


@pytest.mark.parametrize("version", DRAW_VERSIONS)
def test_families_at_one_seed_are_uncorrelated_in_version_2(version):
    names = [f for f in FAMILIES if f != "zeros"]
    shape, n = (64, 64), 64 * 64
    flat = {f: draw(DistributionSpec(f, version=version), shape, SEED).numpy().ravel() for f in names}
    rho = {(a, b): stats.spearmanr(flat[a], flat[b]).statistic for i, a in enumerate(names) for b in names[i + 1:]}
    worst = max(rho, key=lambda k: abs(rho[k]))
    if version == 2:  # 210 pairs, se 1/sqrt(n) = 0.016: the largest |rho| of independent pairs stays below 0.08
        assert abs(rho[worst]) < 5 / math.sqrt(n), f"{worst}: Spearman {rho[worst]:.3f}"
    else:  # the defect version 2 fixes, kept in version 1 for old files
        for group in SAME_STREAM_V1:
            assert all(rho[tuple(sorted((a, b)))] > 0.999 for a in group for b in group if a < b)


def test_version_2_stream_key_covers_parameters_and_shape():
    seed = 11
    p1, p2 = (DistributionSpec("sparse_normal", {"p": p}) for p in (0.5, 0.6))
    a, b = (draw(s, (64, 64), seed).numpy().ravel() for s in (p1, p2))
    both = (a != 0) & (b != 0)
    assert abs(stats.spearmanr(a[both], b[both]).statistic) < 0.1  # not the same normals masked differently
    assert torch.equal(draw(DistributionSpec("student_t", {"df": 3}), (5, 5), seed),
                       draw(DistributionSpec("student_t", {"df": 3.0}), (5, 5), seed))  # one law, one draw
    # no nested scaffolds across widths in version 2; version 1 nests element-wise families
    small, big = draw("normal", (64, 64), seed), draw("normal", (128, 64), seed)
    assert not torch.equal(big[:64], small)
    v1 = DistributionSpec("normal", version=1)
    assert torch.equal(draw(v1, (128, 64), seed)[:64], draw(v1, (64, 64), seed))


def test_version_2_normal_tails_and_pairs():
    z = raw_draws("normal", (200_000,))
    assert_ks(z, stats.norm().cdf, "normal, 2e5 draws")
    assert abs(stats.pearsonr(z[0::2], z[1::2]).statistic) < 5 / math.sqrt(z.size / 2)  # Box-Muller pairs
    assert np.isfinite(z).all() and np.abs(z).max() < 7  # uniforms (w + 1/2) 2^-32: |z| <= 6.7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", FAMILIES)
def test_version_2_cpu_and_cuda_agree(name):
    """The words are identical; the float64 transforms agree far inside the fingerprint's rtol."""
    from reservoir_depth.io import FINGERPRINT_RTOL

    assert torch.equal(Stream(123, 4099, "cuda").words(1).cpu(), Stream(123, 4099).words(1))
    for shape in [(96, 80), (16, 3, 3, 3)]:
        spec = DistributionSpec(name)
        cpu, cuda = draw(spec, shape, 7), draw(spec, shape, 7, device="cuda")
        assert cuda.device.type == "cuda" and cuda.dtype == torch.float32
        scale = float(cpu.abs().max()) or 1.0
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=FINGERPRINT_RTOL, atol=FINGERPRINT_RTOL * scale)
        f64 = draw(spec, shape, 7, dtype=torch.float64, device="cuda").cpu()
        torch.testing.assert_close(f64, draw(spec, shape, 7, dtype=torch.float64), rtol=1e-9, atol=1e-12 * scale)


def test_draw_device_argument_on_cpu():
    w = draw("normal", (4, 4), 1, device="cpu")
    assert w.device.type == "cpu" and torch.equal(w, draw("normal", (4, 4), 1))
    v1 = draw(DistributionSpec("normal", version=1), (4, 4), 1, device=torch.device("cpu"))
    assert v1.device.type == "cpu"


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
