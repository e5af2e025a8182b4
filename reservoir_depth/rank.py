"""The saturation rank r*(eps) and an adaptive search for it.

    r*(eps) = min { r : M(r) >= M_full - eps }   (a metric to maximise, e.g. accuracy)
    r*(eps) = min { r : L(r) <= L_full + eps }   (a loss)

with M(r) the mean over seeds at rank r. ``SaturationRank`` estimates it from a
sweep with a bootstrap confidence interval over seeds; ``adaptive_search`` finds
it with doubling then bisection, in O(log r_max) ranks instead of the full grid,
and gives the same answer whenever the saturated set is upward closed
(M(r) within eps implies M(r') within eps for r' > r).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np


def _saturated(value: float, full: float, eps: float, higher_is_better: bool) -> bool:
    return value >= full - eps if higher_is_better else value <= full + eps


def r_star(curve: Mapping[int, float], full: float, eps: float, higher_is_better: bool = True) -> float:
    """Smallest rank of ``curve`` (rank -> mean metric) within eps of ``full``; inf if none is."""
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    for r in sorted(curve):
        if _saturated(curve[r], full, eps, higher_is_better):
            return float(r)
    return math.inf


class SaturationRank:
    """r*(eps) from a rank sweep, with a percentile bootstrap CI over seeds.

    Parameters: eps; higher_is_better (True for accuracy, False for a loss);
    n_boot bootstrap resamples; ci level; random_state (int seed).
    Fitted: curve_ (rank -> mean), full_ (mean of full training), r_star_, ci_
    (lower, upper; inf when a resample never saturates), boot_ (the resampled r*).
    """

    def __init__(self, eps: float = 0.01, higher_is_better: bool = True, n_boot: int = 1000,
                 ci: float = 0.95, random_state: int = 0) -> None:
        self.eps, self.higher_is_better, self.n_boot = eps, higher_is_better, n_boot
        self.ci, self.random_state = ci, random_state

    def fit(self, ranks: Sequence[int], values: Sequence[float], full_values: Sequence[float]) -> "SaturationRank":
        """``ranks``/``values``: one entry per LottaLoRA run; ``full_values``: one per full-training run."""
        ranks, values = np.asarray(ranks, int), np.asarray(values, float)
        full_values = np.asarray(full_values, float)
        if ranks.shape != values.shape or ranks.ndim != 1 or len(ranks) == 0:
            raise ValueError(f"ranks and values must be 1-D of equal non-zero length, got {ranks.shape}, {values.shape}")
        if len(full_values) == 0:
            raise ValueError("need at least one full-training value")
        if not 0 < self.ci < 1:
            raise ValueError(f"ci must lie in (0, 1), got {self.ci!r}")
        groups = {int(r): values[ranks == r] for r in np.unique(ranks)}
        self.curve_ = {r: float(v.mean()) for r, v in groups.items()}
        self.full_ = float(full_values.mean())
        self.r_star_ = r_star(self.curve_, self.full_, self.eps, self.higher_is_better)
        rng = np.random.Generator(np.random.PCG64(self.random_state))
        boot = np.empty(self.n_boot)
        for b in range(self.n_boot):
            curve = {r: float(rng.choice(v, len(v)).mean()) for r, v in groups.items()}
            full = float(rng.choice(full_values, len(full_values)).mean())
            boot[b] = r_star(curve, full, self.eps, self.higher_is_better)
        self.boot_ = boot
        lo, hi = (1 - self.ci) / 2, 1 - (1 - self.ci) / 2
        self.ci_ = (float(np.quantile(boot, lo, method="inverted_cdf")),
                    float(np.quantile(boot, hi, method="inverted_cdf"))) if self.n_boot else (math.nan, math.nan)
        return self

    @classmethod
    def from_frame(cls, df, metric: str = "test_acc", **kwargs) -> "SaturationRank":
        """From a ResultsStore frame: rows with cfg.method 'lotta' (by cfg.scaffold.r) and 'full'."""
        lotta, full = df[df["cfg.method"] == "lotta"], df[df["cfg.method"] == "full"]
        if "higher_is_better" not in kwargs:
            kwargs["higher_is_better"] = not metric.endswith("loss")
        return cls(**kwargs).fit(lotta["cfg.scaffold.r"].astype(int), lotta[metric], full[metric])


@dataclass
class SearchResult:
    """r_star (inf if even r_max does not saturate) and every rank evaluated, in order."""

    r_star: float
    evaluated: dict[int, float] = field(default_factory=dict)

    @property
    def n_evaluated(self) -> int:
        return len(self.evaluated)


def adaptive_search(evaluate: Callable[[int], float], full: float, eps: float, r_max: int,
                    higher_is_better: bool = True, r_min: int = 0) -> SearchResult:
    """Doubling (r_min, 1, 2, 4, ... r_max) to bracket r*, then bisection inside the bracket.

    ``evaluate(r)`` returns the mean metric at rank r (e.g. by running the seeds).
    Each rank is evaluated at most once.
    """
    if r_max < r_min or r_min < 0:
        raise ValueError(f"need 0 <= r_min <= r_max, got r_min={r_min}, r_max={r_max}")
    seen: dict[int, float] = {}

    def sat(r: int) -> bool:
        if r not in seen:
            seen[r] = float(evaluate(r))
        return _saturated(seen[r], full, eps, higher_is_better)

    if sat(r_min):
        return SearchResult(float(r_min), seen)
    lo, r = r_min, max(1, r_min)  # lo: largest rank known unsaturated
    while True:
        r = min(r, r_max)
        if sat(r):
            hi = r
            break
        lo = r
        if r == r_max:
            return SearchResult(math.inf, seen)
        r *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sat(mid):
            hi = mid
        else:
            lo = mid
    return SearchResult(float(hi), seen)
