"""Constants and small functions the distributions tests share (the families, seeds, shapes, raw draws,
frequency and KS checks).

Every family-level test is parametrised over ``sorted(DISTRIBUTIONS)`` so that a
newly registered family is covered automatically. Statistical tests use fixed
seeds (and ``derandomize=True`` where hypothesis picks sizes), so they are
deterministic; their tolerances are several standard errors wide.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from scipy import stats

from reservoir_depth.distributions import DEFAULT_VERSION, DISTRIBUTIONS, DistributionSpec, as_spec, raw_sample, sample

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
