"""Prop. 6 (theory/06_pca_analogy.md): is r* predicted by a PCA spectrum? Measured,
across benchmarks, as a rank correlation with an exact permutation p-value and a bootstrap
confidence interval."""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
from scipy import stats

MAX_EXACT = 8  # 8! = 40,320 orderings; beyond that an exact test is slow to enumerate


@lru_cache(maxsize=MAX_EXACT)
def _orderings(n: int) -> np.ndarray:
    """All n! permutations of range(n), one per row."""
    return np.array(list(itertools.permutations(range(n))))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.spearmanr(x, y).statistic)


def permutation_pvalue(x, y, alternative: str = "greater") -> float:
    """Exact permutation p-value of Spearman's rho between x and y: the fraction of all n!
    orderings of x (against y held fixed) whose rho is >= the observed one ("greater", the
    prediction that x and y rise together), <= it ("less") or as large in |rho| ("two-sided").
    Ties keep their average ranks. n must lie in [3, 8]; NaN when either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got shapes {x.shape} and {y.shape}")
    if not 3 <= len(x) <= MAX_EXACT:
        raise ValueError(f"an exact permutation test needs 3 <= n <= {MAX_EXACT} benchmarks, got n = {len(x)}")
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rx, ry = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean()), (ry - ry.mean()) / np.linalg.norm(ry - ry.mean())
    rho = float(rx @ ry)  # Spearman's rho: the Pearson correlation of the (average) ranks
    perms = rx[_orderings(len(x))] @ ry
    tol = 1e-12  # orderings that tie the observed rho count as at least as extreme
    if alternative == "greater":
        return float(np.mean(perms >= rho - tol))
    if alternative == "less":
        return float(np.mean(perms <= rho + tol))
    return float(np.mean(np.abs(perms) >= abs(rho) - tol))


def rank_correlation(x, y, n_boot: int = 2000, ci: float = 0.95, random_state: int = 0) -> dict[str, float]:
    """Spearman rho between predictor x and measured r* y over benchmarks, with a percentile
    bootstrap CI (benchmarks resampled with replacement; resamples with a constant side are skipped),
    the exact one-sided permutation p-value (permutation_pvalue, "greater"; NaN beyond 8 benchmarks)
    and the fraction of benchmarks where x is within a factor 2 of y."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": n, "rho": math.nan, "p": math.nan, "lo": math.nan, "hi": math.nan, "within_2x": _within_2x(x, y)}
    rho = _spearman(x, y)
    rng = np.random.Generator(np.random.PCG64(random_state))
    boot = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            boot.append(_spearman(x[i], y[i]))
    lo, hi = np.quantile(boot, [(1 - ci) / 2, 1 - (1 - ci) / 2]) if boot else (math.nan, math.nan)
    p = permutation_pvalue(x, y) if n <= MAX_EXACT else math.nan
    return {"n": n, "rho": rho, "p": p, "lo": float(lo), "hi": float(hi), "within_2x": _within_2x(x, y)}


def _within_2x(x: np.ndarray, y: np.ndarray) -> float:
    pos = (x > 0) & (y > 0)
    return float(np.mean(np.maximum(x, y)[pos] <= 2 * np.minimum(x, y)[pos])) if pos.any() else math.nan
