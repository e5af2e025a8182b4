"""The saturation rank r*(eps) and an adaptive search for it.

    r*(eps) = min { r : M(r') >= M_full - delta for every rank r' >= r that ran }   (a metric to maximise)
    r*(eps) = min { r : L(r') <= L_full + delta for every rank r' >= r that ran }   (a loss)

with M(r) the mean over seeds at rank r, M_full the mean of full training, and the
tolerance delta = eps in the metric's own units (accuracy as a fraction, loss units:
eps = 0.01 is one accuracy point) or, with ``relative=True``, delta = eps * |M_full|.
A saturation must last: a rank within delta that a larger rank undoes (the curve dips back out of the
tolerance) is a crossing, not r*; ``SaturationRank.r_first_`` keeps the first rank within delta, and
``crossing_`` says when it differs from r*.

``SaturationRank`` estimates r* from per-seed rank curves. Its interval resamples
seeds as whole curves (runs at different ranks share a seed, so their errors are
correlated), paired with full training when it ran on the same seeds; with fewer
than ``MIN_BOOTSTRAP_SEEDS`` seeds it reports the range of the per-seed r* instead
of a percentile interval, and says so in ``ci_kind_``. ``adaptive_search`` finds r*
with doubling then bisection, in O(log r_max) ranks instead of the full grid, and
gives the same answer whenever the saturated set is upward closed (M(r) within
delta implies M(r') within delta for r' > r).

For "no difference" claims (r vs full training, two families, two seeds' scaffolds):
``tost_paired`` is the paired two one-sided tests of equivalence within a margin, over
seeds, and ``paired_t_power`` the power of a paired t-test to see a given effect.
"""

from __future__ import annotations

import bisect
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import stats

from .checks import Estimator, a_bool, an_int, in_interval

# With n seeds a whole-curve resample is one of C(2n-1, n) multisets: 3 with 2 seeds,
# 10 with 3, 35 with 4, 126 with 5, so the bootstrap mean at a rank takes that many
# values at most and a "95%" percentile interval is no such thing below about 5 seeds.
MIN_BOOTSTRAP_SEEDS = 5
CI_KINDS = ("bootstrap", "seed range")


def tolerance(full: Any, eps: float, relative: bool = False) -> Any:
    """delta of r*(eps): eps in the metric's units, or eps * |full| when ``relative`` (elementwise
    on an array of full-training means)."""
    if not (isinstance(eps, numbers.Real) and eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return eps * np.abs(full) if relative else float(eps)


def threshold(full: Any, eps: float, higher_is_better: bool = True, relative: bool = False) -> Any:
    """The level a rank must reach to count as saturated: full -/+ delta (module docstring);
    elementwise on an array of full-training means."""
    delta = tolerance(full, eps, relative)
    return full - delta if higher_is_better else full + delta


def _saturated(value: Any, level: Any, higher_is_better: bool) -> Any:
    """value within the threshold ``level`` (elementwise on arrays; NaN is never saturated)."""
    return value >= level if higher_is_better else value <= level


def r_star(curve: Mapping[int, float], full: float, eps: float, higher_is_better: bool = True,
           relative: bool = False) -> float:
    """Smallest rank of ``curve`` (rank -> mean metric) from which every rank of the curve is within delta of
    ``full`` (a saturation that lasts); inf if the largest rank is not."""
    level = threshold(full, eps, higher_is_better, relative)
    ranks = np.array(sorted(curve))
    values = np.array([curve[r] for r in ranks.tolist()], dtype=float)
    return float(_lasting(ranks, _saturated(values, level, higher_is_better), ~np.isnan(values)))


def _first_saturated(ranks: np.ndarray, sat: np.ndarray) -> np.ndarray:
    """Per row of the boolean (..., R) ``sat``, the first saturated rank (inf if none)."""
    hit = sat.any(axis=-1)
    return np.where(hit, ranks[np.argmax(sat, axis=-1)].astype(float), math.inf)


def _lasting(ranks: np.ndarray, sat: np.ndarray, ran: np.ndarray) -> np.ndarray:
    """Per row of the boolean (..., R) ``sat`` (ranks ascending), the smallest saturated rank after which every
    rank that ``ran`` is saturated too (inf if the last rank that ran is not): a rank not run (NaN) neither
    makes nor undoes a saturation."""
    idx = np.arange(sat.shape[-1])
    last_miss = np.where(ran & ~sat, idx, -1).max(axis=-1)
    after = sat & (idx > np.asarray(last_miss)[..., None])
    return np.where(after.any(axis=-1), ranks[np.argmax(after, axis=-1)].astype(float), math.inf)


def _check_ranks(ranks: Any) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or len(ranks) == 0:
        raise ValueError(f"ranks must be a non-empty 1-D sequence of ints, got shape {ranks.shape}")
    if not np.issubdtype(ranks.dtype, np.number) or np.issubdtype(ranks.dtype, np.complexfloating):
        raise ValueError(f"ranks must be ints >= 0, got {ranks.tolist()!r}")
    bad = [r for r in ranks.tolist() if not (math.isfinite(r) and r >= 0 and float(r).is_integer())]
    if bad:
        raise ValueError(f"ranks must be ints >= 0, got {bad!r}")
    ranks = ranks.astype(int)
    if len(np.unique(ranks)) != len(ranks):
        raise ValueError(f"ranks must be distinct (one column per rank), got {ranks.tolist()!r}")
    return ranks


class SaturationRank(Estimator):
    """r*(eps) from per-seed rank curves, with an interval from resampling seeds.

    Parameters: eps (>= 0; in the metric's units, e.g. 0.01 = one accuracy point, or a
    fraction of |full| when ``relative``); higher_is_better (True for accuracy, False
    for a loss); n_boot bootstrap resamples; ci level of the bootstrap interval;
    random_state (int seed).

    Fitted attributes:
      curve_       rank -> mean over the seeds that ran it
      full_        mean of the full-training values
      threshold_   the level r* must reach: full_ -/+ delta
      max_rank_    largest rank that ran for every seed; r* is only looked for up to it
      r_star_      the saturation rank (from it on, every rank that ran is within delta); inf means "not
                   saturated at max_rank_"
      r_first_     the first rank within delta (r_star_ unless a larger rank undoes it)
      crossing_    r_first_ < r_star_: a crossing that larger ranks undo; undone_at_ lists the ranks in
                   (r_first_, r_star_) that miss the threshold again
      beats_reference_  the ranks whose mean beats full training by more than delta: the reference is
                   then not a ceiling (full training underfits or overfits), and r* against it reads the
                   training protocol as much as the task
      margin_      how far the mean at r* clears threshold_, in the metric's units
                   (>= 0; NaN when r_star_ is inf)
      seed_r_star_ (S,) r* of each seed's own curve (against its own full-training value
                   when paired, else against full_)
      boot_        (n_boot,) r* of each whole-curve bootstrap resample
      ci_kind_     "bootstrap" with >= MIN_BOOTSTRAP_SEEDS seeds: ci_ is the percentile
                   interval of boot_ at level ``ci`` (NaN, NaN when n_boot = 0);
                   "seed range" below that: ci_ = (min, max) of seed_r_star_
      ci_          (lo, hi); inf where saturation is not reached up to max_rank_
      n_seeds_, n_full_, paired_
    """

    _constraints = {"eps": lambda name, v: tolerance(1.0, v), "relative": a_bool, "higher_is_better": a_bool,
                    "n_boot": an_int(0), "ci": in_interval(0, 1)}

    def __init__(self, eps: float = 0.01, relative: bool = False, higher_is_better: bool = True,
                 n_boot: int = 1000, ci: float = 0.95, random_state: int = 0) -> None:
        self.eps, self.relative, self.higher_is_better = eps, relative, higher_is_better
        self.n_boot, self.ci, self.random_state = n_boot, ci, random_state

    def fit(self, ranks: Sequence[int], values: Any, full: Sequence[float],
            paired: bool | None = None) -> "SaturationRank":
        """Estimate r* from ``values`` (S, R): row s is seed s's curve over ``ranks`` (R,)
        (NaN = that run did not finish), and ``full``, the full-training values.

        ``paired`` (default: ``len(full) == S``): full[s] ran on the same seed as
        values[s], so a resample draws them together; unpaired, full is resampled on
        its own.
        """
        self._validate_params()
        ranks = _check_ranks(ranks)
        V = np.asarray(values, dtype=float)
        if V.ndim != 2 or V.shape[1] != len(ranks) or V.shape[0] == 0:
            raise ValueError(f"values must be (n_seeds, {len(ranks)}) per-seed curves over ranks "
                             f"{ranks.tolist()} (NaN = not run), got shape {V.shape}")
        if np.isinf(V).any():
            raise ValueError(f"values must be finite or NaN (not run), got inf at "
                             f"(seed row, rank) {[(int(s), int(ranks[r])) for s, r in np.argwhere(np.isinf(V))]}")
        F = np.asarray(full, dtype=float)
        if F.ndim != 1 or len(F) == 0:
            raise ValueError(f"full must be a non-empty 1-D sequence of full-training values, got shape {F.shape}")
        if not np.isfinite(F).all():
            raise ValueError(f"full-training values must be finite, got {F.tolist()}")
        S = V.shape[0]
        empty = [int(s) for s in np.flatnonzero(np.isnan(V).all(axis=1))]
        if empty:
            raise ValueError(f"seed row(s) {empty} have no finished run at any rank: drop them or run them")
        if paired is None:
            paired = len(F) == S
        elif paired and len(F) != S:
            raise ValueError(f"paired=True needs one full-training value per seed row ({S}), got {len(F)}")
        order = np.argsort(ranks)
        ranks, V = ranks[order], V[:, order]
        complete = ~np.isnan(V).any(axis=0)
        if not complete.any():
            raise ValueError(f"no rank of {ranks.tolist()} finished for every seed: cannot state r*")
        self.max_rank_ = int(ranks[complete][-1])
        self.n_seeds_, self.n_full_, self.paired_ = S, len(F), bool(paired)
        ran = ~np.isnan(V).all(axis=0)
        self.curve_ = {int(r): float(np.nanmean(V[:, j])) for j, r in enumerate(ranks) if ran[j]}
        self.full_ = float(F.mean())
        hib = self.higher_is_better
        self.threshold_ = threshold(self.full_, self.eps, hib, self.relative)
        keep = ranks <= self.max_rank_
        ranks, V = ranks[keep], V[:, keep]
        curve = {r: self.curve_[r] for r in ranks.tolist()}
        self.r_star_ = r_star(curve, self.full_, self.eps, hib, self.relative)
        self.r_first_ = float(_first_saturated(ranks, _saturated(np.array(list(curve.values())), self.threshold_, hib)))
        self.crossing_ = self.r_first_ < self.r_star_  # a rank within delta that a larger rank undoes
        delta = tolerance(self.full_, self.eps, self.relative)
        self.beats_reference_ = [r for r, v in curve.items() if (v - self.full_) * (1 if hib else -1) > delta]
        self.undone_at_ = [r for r in ranks.tolist() if self.r_first_ < r < self.r_star_
                           and not _saturated(curve[r], self.threshold_, hib)]
        if math.isfinite(self.r_star_):
            gap = self.curve_[int(self.r_star_)] - self.threshold_
            self.margin_ = float(gap if hib else -gap)
        else:
            self.margin_ = math.nan
        levels = threshold(F, self.eps, hib, self.relative) if paired else np.full(S, self.threshold_)
        self.seed_r_star_ = _lasting(ranks, _saturated(V, levels[:, None], hib), ~np.isnan(V))

        rng = np.random.Generator(np.random.PCG64(self.random_state))
        idx = rng.integers(0, S, size=(self.n_boot, S))  # whole curves: one seed index per draw
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a partial rank may go unrun in a resample
            curves = np.nanmean(V[idx], axis=1) if self.n_boot else np.empty((0, len(ranks)))
        boot_full = F[idx] if paired else F[rng.integers(0, len(F), size=(self.n_boot, len(F)))]
        boot_level = threshold(boot_full.mean(axis=1), self.eps, hib, self.relative)
        self.boot_ = _lasting(ranks, _saturated(curves, boot_level[:, None], hib), ~np.isnan(curves))

        if S >= MIN_BOOTSTRAP_SEEDS:
            self.ci_kind_ = "bootstrap"
            q = ((1 - self.ci) / 2, 1 - (1 - self.ci) / 2)
            self.ci_ = tuple(float(np.quantile(self.boot_, p, method="inverted_cdf")) for p in q) \
                if self.n_boot else (math.nan, math.nan)
        else:
            self.ci_kind_ = "seed range"
            self.ci_ = (float(self.seed_r_star_.min()), float(self.seed_r_star_.max()))
        return self


@dataclass
class SearchResult:
    """r_star (inf if even r_max does not saturate) and every rank evaluated, in order."""

    r_star: float
    evaluated: dict[int, float] = field(default_factory=dict)

    @property
    def n_evaluated(self) -> int:
        return len(self.evaluated)


def adaptive_search(evaluate: Callable[[int], float], full: float, eps: float, r_max: int,
                    higher_is_better: bool = True, r_min: int = 0, relative: bool = False,
                    r_start: float | None = None, grid: Sequence[int] | None = None) -> SearchResult:
    """r*(eps) by bracketing, then bisection inside the bracket; each rank is evaluated at most once.

    ``evaluate(r)`` returns the mean metric at rank r (e.g. by running the seeds); ``full``
    the full-training mean; eps and ``relative`` as in the module docstring. The ranks searched are
    ``grid`` (a study's ranks) or every integer in [r_min, r_max]. Without ``r_start``: r_min, then
    doubling (1, 2, 4, ... r_max; on a grid, its 1st, 2nd, 4th, ... rank) to bracket r*. With
    ``r_start`` (a predicted r*): the first rank >= r_start, then galloping down while saturated or
    up while not (steps 1, 2, 4, ... ranks): a good prediction needs about two evaluations. Assumes
    saturation is monotone in r (as a grid scan reads it)."""
    if r_max < r_min or r_min < 0:
        raise ValueError(f"need 0 <= r_min <= r_max, got r_min={r_min}, r_max={r_max}")
    if r_start is not None and not (isinstance(r_start, numbers.Real) and r_start >= 0):
        raise ValueError(f"r_start must be a number >= 0, got {r_start!r}")
    level = threshold(full, eps, higher_is_better, relative)
    seen: dict[int, float] = {}

    def sat(r: int) -> bool:
        if r not in seen:
            seen[r] = float(evaluate(r))
        return bool(_saturated(seen[r], level, higher_is_better))

    if grid is not None:
        ranks = sorted(int(r) for r in grid)
        if not ranks or len(set(ranks)) != len(ranks) or ranks[0] < r_min or ranks[-1] > r_max:
            raise ValueError(f"grid must be distinct ranks >= r_min = {r_min} and <= r_max = {r_max}, "
                             f"got {list(grid)!r}")
    elif r_start is None:
        return _doubling(sat, r_min, r_max, seen)
    else:
        ranks = range(r_min, r_max + 1)
    n = len(ranks)
    i = 0 if r_start is None else min(bisect.bisect_left(ranks, math.ceil(r_start)), n - 1)
    lo, hi = -1, None  # indices: lo the largest known unsaturated (-1: none), hi the smallest saturated
    step = 1
    if sat(ranks[i]):
        hi = i
        while hi > 0:  # gallop down
            j = max(hi - step, 0)
            if not sat(ranks[j]):
                lo = j
                break
            hi, step = j, 2 * step
    else:
        lo = i
        while lo < n - 1:  # gallop up
            j = min(lo + step, n - 1)
            if sat(ranks[j]):
                hi = j
                break
            lo, step = j, 2 * step
        if hi is None:
            return SearchResult(math.inf, seen)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sat(ranks[mid]):
            hi = mid
        else:
            lo = mid
    return SearchResult(float(ranks[hi]), seen)


def _doubling(sat: Callable[[int], bool], r_min: int, r_max: int, seen: dict[int, float]) -> SearchResult:
    """r_min, then 1, 2, 4, ... r_max to bracket r*, then bisection on the integers (the search from r_min)."""
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


# ----------------------------------------------------------------------------- "no difference" claims

@dataclass(frozen=True)
class Equivalence:
    """A paired TOST over seeds: ``p`` of "the mean difference lies outside (-margin, margin)" (equivalence
    is claimed at level alpha when p < alpha); ``diff`` the mean paired difference a - b, ``se`` its
    standard error, ``n`` the seeds; ``equivalent_at`` the smallest margin the data would call equivalent
    at ``alpha``: |diff| + t_{1-alpha, n-1} se."""

    p: float
    margin: float
    diff: float
    se: float
    n: int
    alpha: float
    equivalent_at: float

    @property
    def equivalent(self) -> bool:
        return self.p < self.alpha


def _paired(a: Any, b: Any) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"a and b must be 1-D, of one length (one value per seed), with at least 2 seeds; "
                         f"got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"paired values must be finite, got a={a.tolist()}, b={b.tolist()}")
    return a - b


def _alpha(alpha: Any) -> float:
    if not (isinstance(alpha, numbers.Real) and 0 < alpha < 1):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return float(alpha)


def tost_paired(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05) -> Equivalence:
    """Two one-sided paired t-tests (Schuirmann) of H0: |mean(a - b)| >= margin over the seeds
    (a[s], b[s] from seed s): p = max(P(T >= (d + margin) / se), P(T <= (d - margin) / se)), T ~ t_{n-1},
    d the mean difference, se = sd(a - b) / sqrt(n). With every difference equal (se = 0), p is 0 inside
    the margin and 1 outside. ``margin`` > 0, in the metric's units."""
    alpha = _alpha(alpha)
    if not (isinstance(margin, numbers.Real) and margin > 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
    d = _paired(a, b)
    n, diff = len(d), float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    if se == 0:
        p = 0.0 if abs(diff) < margin else 1.0
    else:
        t = stats.t(n - 1)
        p = float(max(t.sf((diff + margin) / se), t.cdf((diff - margin) / se)))
    return Equivalence(p=p, margin=float(margin), diff=diff, se=se, n=n, alpha=alpha,
                       equivalent_at=abs(diff) + float(stats.t(n - 1).ppf(1 - alpha)) * se)


def paired_t_power(n: int, effect: float, alpha: float = 0.05, two_sided: bool = True) -> float:
    """Power of a paired t-test over ``n`` seeds to reject "no difference" when the true mean difference is
    ``effect`` standard deviations of the per-seed differences (Cohen's d_z): with T' noncentral t on
    n - 1 degrees of freedom and noncentrality d_z sqrt(n), P(|T'| > t_{1-alpha/2}) (two-sided) or
    P(T' > t_{1-alpha}). A "no difference" claim from n seeds is only as strong as this power."""
    alpha = _alpha(alpha)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"n must be an int >= 2 (seeds), got {n!r}")
    if not (isinstance(effect, numbers.Real) and math.isfinite(effect)):
        raise ValueError(f"effect must be a finite number (standard deviations), got {effect!r}")
    df, nc = n - 1, effect * math.sqrt(n)
    if two_sided:
        crit = stats.t.ppf(1 - alpha / 2, df)
        return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    return float(stats.nct.sf(stats.t.ppf(1 - alpha, df), df, nc))
