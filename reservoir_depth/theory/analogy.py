"""Prop. 6 (theory/06_pca_analogy.md): is r* predicted by a PCA spectrum? Measured,
across benchmarks, as a rank correlation with a bootstrap confidence interval."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def rank_correlation(x, y, n_boot: int = 2000, ci: float = 0.95, random_state: int = 0) -> dict[str, float]:
    """Spearman rho between predictor x and measured r* y over benchmarks, with a percentile
    bootstrap CI (benchmarks resampled with replacement; resamples with a constant side are skipped).
    Also the fraction of benchmarks where x is within a factor 2 of y."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < 3:
        return {"n": n, "rho": math.nan, "lo": math.nan, "hi": math.nan, "within_2x": math.nan}
    rho = float(stats.spearmanr(x, y).statistic)
    rng = np.random.Generator(np.random.PCG64(random_state))
    boot = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            boot.append(stats.spearmanr(x[i], y[i]).statistic)
    lo, hi = np.quantile(boot, [(1 - ci) / 2, 1 - (1 - ci) / 2]) if boot else (math.nan, math.nan)
    pos = (x > 0) & (y > 0)
    within = np.mean(np.maximum(x, y)[pos] <= 2 * np.minimum(x, y)[pos]) if pos.any() else math.nan
    return {"n": n, "rho": rho, "lo": float(lo), "hi": float(hi), "within_2x": float(within)}
