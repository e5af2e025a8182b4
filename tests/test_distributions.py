"""Tests of reservoir_depth.distributions: seeded draws, laws, scaling rules, specs.

Every family-level test is parametrised over ``sorted(DISTRIBUTIONS)`` so that a
newly registered family is covered automatically. Statistical tests use fixed
seeds (and ``derandomize=True`` where hypothesis picks sizes), so they are
deterministic; their tolerances are several standard errors wide.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from reservoir_depth.distributions import (
    DISTRIBUTIONS,
    DistributionSpec,
    Family,
    as_spec,
    draw,
    fans,
    layer_seed,
    register,
    rng_for,
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


def raw_draws(name: str, shape: tuple[int, ...], seed: int = SEED, **params) -> np.ndarray:
    """Raw draws of one family (no scaling rule), through the family's own sampler."""
    spec = DistributionSpec(name, params)
    fan_in, fan_out = fans(shape) if len(shape) >= 2 else (1, 1)
    return np.asarray(spec.family.sample(rng_for(seed), shape, fan_in, fan_out, **spec.params), np.float64)


def assert_frequency(count: int, n: int, p: float, what: str) -> None:
    se = math.sqrt(p * (1 - p) / n)
    assert abs(count / n - p) < 4 * se + 1e-12, f"{what}: frequency {count / n:.5f}, expected {p:.5f} (se {se:.5f})"


def assert_ks(x: np.ndarray, cdf, what: str) -> None:
    pvalue = stats.kstest(x, cdf).pvalue
    assert pvalue > 1e-3, f"{what}: KS p-value {pvalue:.2e}"


# ----------------------------------------------------------------------------- 1. determinism


@pytest.mark.parametrize("name", FAMILIES)
@settings(max_examples=15, deadline=None)
@given(shape=small_shapes, seed=seeds)
def test_same_seed_same_draw(name, shape, seed):
    np.random.seed(0)  # the global numpy RNG must play no part
    a = sample(name, shape, seed)
    np.random.seed(1)
    b = sample(DistributionSpec(name), shape, seed)
    assert a.shape == shape and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)

    w = draw(name, shape, seed)
    assert w.dtype == torch.float32 and w.device.type == "cpu" and tuple(w.shape) == shape
    assert torch.equal(w, torch.from_numpy(a).to(torch.float32))
    assert torch.equal(w, draw(name, shape, seed))


@pytest.mark.parametrize("name", FAMILIES)
@settings(max_examples=15, deadline=None)
@given(seed_a=seeds, seed_b=seeds, shape=st.sampled_from([(16, 16), (8, 4, 3, 3), (64, 8)]))
def test_different_seeds_different_draws(name, seed_a, seed_b, shape):
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


def check_reference_law(name: str) -> None:
    spec = DistributionSpec(name)
    ref = spec.family.reference(**spec.params)
    x = raw_draws(name, (KS_N,))
    if hasattr(ref, "pmf"):  # discrete law: compare frequencies with the pmf
        values, counts = np.unique(x, return_counts=True)
        pmf = ref.pmf(values)
        assert np.all(pmf > 0), f"{name}: values {values[pmf == 0]} outside the support"
        assert math.isclose(pmf.sum(), 1.0, abs_tol=1e-9), f"{name}: some support values never drawn"
        for v, c, p in zip(values, counts, pmf):
            assert_frequency(c, KS_N, p, f"{name} P(X={v})")
    else:
        assert_ks(x, ref.cdf, name)


def check_self_scaled_law(name: str) -> None:
    """Families with no reference: the law of one entry follows from (fan_in, fan_out)."""
    shape = (100, 200)
    fan_in, fan_out = fans(shape)
    params = DistributionSpec(name).params
    x = raw_draws(name, shape).ravel()
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


def check_orthogonal_moments() -> None:
    for shape in [(50, 80), (80, 50)]:
        x = raw_draws("orthogonal", shape)
        # Frobenius norm^2 = min(rows, cols): mean square 1 / max(rows, cols), mean ~ 0.
        assert np.mean(x**2) == pytest.approx(1 / max(shape), rel=1e-12)
        assert abs(x.mean()) < 4 / math.sqrt(max(shape) * x.size)


def check_sparse_normal() -> None:
    p = DistributionSpec("sparse_normal").params["p"]
    x = raw_draws("sparse_normal", (KS_N,))
    nz = x[x != 0]
    assert_frequency(nz.size, KS_N, p, "sparse_normal density")
    assert_ks(nz, stats.norm().cdf, "sparse_normal non-zeros")


def check_quantized_normal() -> None:
    params = DistributionSpec("quantized_normal").params
    bits, clip = params["bits"], params["clip"]
    x = raw_draws("quantized_normal", (KS_N,))
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


def check_zeros() -> None:
    x = raw_draws("zeros", (50, 40))
    assert x.shape == (50, 40) and not x.any()


MOMENT_CHECKS = {
    "orthogonal": check_orthogonal_moments,
    "kaiming_normal": lambda: check_self_scaled_law("kaiming_normal"),
    "kaiming_uniform": lambda: check_self_scaled_law("kaiming_uniform"),
    "xavier_normal": lambda: check_self_scaled_law("xavier_normal"),
    "xavier_uniform": lambda: check_self_scaled_law("xavier_uniform"),
    "sparse_normal": check_sparse_normal,
    "quantized_normal": check_quantized_normal,
    "zeros": check_zeros,
}


@pytest.mark.parametrize("name", FAMILIES)
def test_samples_match_declared_law(name):
    family = DISTRIBUTIONS[name]
    if family.reference is not None:
        check_reference_law(name)
    elif name in MOMENT_CHECKS:
        MOMENT_CHECKS[name]()
    else:
        pytest.fail(f"family {name!r} has no reference law and no moment check: add one to MOMENT_CHECKS")


@pytest.mark.parametrize("name", FAMILIES)
def test_scale_is_std_of_raw_draws(name):
    """scale(**params) is the std of the raw draws for every finite-variance family."""
    if name in NO_FINITE_VARIANCE or name in SELF_SCALED:
        pytest.skip(f"{name}: scale() is not a standard deviation")
    spec = DistributionSpec(name, STD_PARAMS.get(name, {}))
    x = raw_draws(name, (STD_N,), **spec.params)
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
def test_none_rule_is_raw_times_gain(name, gain, shape, seed):
    w = sample(DistributionSpec(name, scaling="none", gain=gain), shape, seed)
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
