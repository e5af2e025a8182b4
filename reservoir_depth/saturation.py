"""r* read from a results frame: the saturation estimator on a study's per-seed curves (rank.SaturationRank,
paired with full training where it ran on the same seeds) and the recovery levels r*_q on the scale from the
null model to the reference. The report, the predictor's targets and the experiments all read r* here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .rank import SaturationRank
from .results import Columns as C
from .study import Study, curves
from .tasks import metric_of


def reference_values(df, study: Study, metric: str, seeds) -> np.ndarray:
    """The study's reference per seed (study.Study.reference; NaN where missing): full training's ``metric``
    ("full"), or the Bayes-optimal predictor's as the runs recorded it ("bayes": bayes/<metric>, which a
    data set that knows it, a planted teacher, provides). A "bayes" study whose runs recorded none is an
    error naming the column."""
    if study.reference == "full":
        return curves(df, metric, ranks=[], seeds=list(seeds))[2]
    col = C.BAYES + metric
    if col not in df or not df[col].notna().any():
        raise ValueError(f"study {study.study!r}: reference = 'bayes' but no run recorded {col!r}; its data set does "
                         f"not know its Bayes risk (a planted teacher's does): use reference = 'full'")
    row = {int(s): i for i, s in enumerate(seeds)}
    values = np.full(len(row), np.nan)
    for s, v in zip(df[C.SEED], df[col]):
        if int(s) in row and np.isfinite(v):
            values[row[int(s)]] = v
    return values


def saturation(df, study: Study, metric: str, eps: float, relative: bool = False,
               **kwargs: Any) -> SaturationRank | None:
    """r*(eps) from the frame's per-seed curves (SaturationRank), against the study's reference
    (``reference_values``: full training, or the Bayes risk), paired when every seed with a curve has its
    reference; None without a reference or without a rank that ran for every seed."""
    ranks, V, _, seeds = curves(df, metric, ranks=list(study.ranks), seeds=list(study.seeds))
    has_curve = ~np.isnan(V).all(axis=1) if len(ranks) else np.zeros(len(seeds), bool)
    full_all = reference_values(df, study, metric, seeds)
    V, F = V[has_curve], full_all[has_curve]
    if not has_curve.any() or not np.isfinite(full_all).any() or not (~np.isnan(V).any(axis=0)).any():
        return None
    paired = bool(np.isfinite(F).all())
    full = F if paired else full_all[np.isfinite(full_all)]
    return SaturationRank(eps=eps, relative=relative, higher_is_better=metric_of(metric).higher_is_better,
                          **kwargs).fit(ranks, V, full, paired=paired)


RECOVERY_LEVELS = (0.90, 0.95, 0.99)  # q of r*_q, on the scale from the null model (0) to the reference (1)


def null_of(df, metric: str) -> float | None:
    """The null model's test ``metric`` as the runs recorded it (null/<metric>: tasks.Task.null, the best
    constant predictor), their mean; None where no run recorded it."""
    col = C.NULL + metric
    return float(df[col].dropna().mean()) if col in df and df[col].notna().any() else None


def recovery_rank(df, study: Study, metric: str, q: float) -> tuple[SaturationRank | None, float | None, str]:
    """r*_q (Li et al.'s d_int90 convention, on ranks): the smallest rank from which the recovery
    (M(r) - M_null) / (M_ref - M_null) stays >= q at every larger rank that ran, M_ref the mean of full
    training (the study's reference) and M_null the null model's (``null_of``). It is r*(eps) with the
    absolute eps = (1 - q) |M_ref - M_null|, so its interval is the same paired seed resampling (with delta
    held at the mean reference). Returns (the SaturationRank or None, M_null, why it is not stated)."""
    if not 0 < q < 1:
        raise ValueError(f"q must lie in (0, 1), got {q!r}")
    null = null_of(df, metric)
    if null is None:
        return None, None, "the null model was not recorded (run `reservoir-depth sweep` on the study to add it)"
    full = reference_values(df, study, metric, study.seeds)
    full = full[np.isfinite(full)]
    if not len(full):
        return None, null, "no full-training run: no reference"
    gain = (full.mean() - null) * (1 if metric_of(metric).higher_is_better else -1)
    if not gain > 0:
        return None, null, f"the reference ({full.mean():.4g}) is no better than the null model ({null:.4g})"
    return saturation(df, study, metric, (1 - q) * gain), null, ""


def fmt_rank(r: float, max_rank: int | None = None) -> str:
    """A rank as reports write it: an integer, or "> max_rank" for inf (not saturated up to max_rank)."""
    if math.isinf(r):
        return f"> {max_rank}" if max_rank is not None else "> max rank"
    return str(int(r))


def n_test_of(df) -> int | None:
    """The test-set size the runs of ``df`` recorded (None where none did)."""
    return int(df["n_test"].dropna().iloc[0]) if "n_test" in df and df["n_test"].notna().any() else None
