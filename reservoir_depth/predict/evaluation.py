"""Calibration and leave-one-benchmark-out evaluation of the predictors, and their use on a study.

``evaluate`` holds out one benchmark at a time: the predictor's scale c = geometric mean of r* / raw over
the other benchmarks with a finite r*, applied to the held-out raw value; constants: C - 1 and the median
r* of the others. ``CALIBRATION`` is the committed scale per measure and tolerance level;
``per_tolerance`` and ``predict_study`` apply a predictor to a study before anything trains.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..study import Study
from .model import init_model
from .predictors import GradientSpectrum, Predictor
from .targets import LEVELS

CALIBRATION: dict[str, tuple[float, float, float]] = {  # measure -> scale at each level (predicted r* = scale x raw)
    # the gradient spectrum's calibration on every committed benchmark with a finite r* at that level:
    # docs/results/predict/calibration.csv, written by experiments/predict_rank.py (a test checks they agree)
    "k_0.9": (1.32, 1.6, 0.908),
    "participation_ratio": (1.99, 2.83, 1.71),
    "stable_rank": (2.88, 4.63, 3.0),
}


def _log_r(r: Any) -> np.ndarray:
    """log of r* read on log axes: r* = 0 (rank 0 already saturates) counts as 1."""
    return np.log(np.maximum(np.asarray(r, float), 1.0))


def hit(pred: float, r_star: float, max_rank: float) -> bool:
    """Within 2x of a finite r* (r* = 0 read as 1); for a censored r* (> max_rank), only a prediction
    above max_rank hits. A NaN prediction (the predictor does not apply) misses."""
    if not math.isfinite(pred):
        return False
    if not math.isfinite(r_star):
        return pred > max_rank
    r = max(r_star, 1.0)
    return r / 2 <= pred <= 2 * r


def calibrate(raw: Sequence[float], r_star: Sequence[float]) -> float:
    """One scale factor c: the geometric mean of r* / raw over the pairs with a finite r* and a finite
    raw value > 0 (NaN when there is none)."""
    raw, r = np.asarray(raw, float), np.asarray(r_star, float)
    ok = np.isfinite(raw) & (raw > 0) & np.isfinite(r)
    return float(np.exp(np.mean(_log_r(r[ok]) - np.log(raw[ok])))) if ok.any() else math.nan


def permutation_pvalue(x: Sequence[float], y: Sequence[float], n_perm: int = 10000,
                       random_state: int = 0) -> tuple[float, float]:
    """(Spearman's rho, its one-sided Monte Carlo permutation p-value (count + 1) / (n_perm + 1)) of x
    against y; NaN where either side is constant or fewer than 3 pairs are finite."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = ~np.isnan(x) & ~np.isnan(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(stats.rankdata(x)) == 0 or np.ptp(stats.rankdata(y)) == 0:
        return math.nan, math.nan
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rx, ry = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean()), (ry - ry.mean()) / np.linalg.norm(ry - ry.mean())
    rho = float(rx @ ry)
    rng = np.random.default_rng(random_state)
    perms = np.array([rx[rng.permutation(len(rx))] @ ry for _ in range(n_perm)])
    return rho, float((np.sum(perms >= rho - 1e-12) + 1) / (n_perm + 1))


def evaluate(table: pd.DataFrame, constants: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Leave one benchmark out. ``table``: one row per (benchmark, predictor) with raw, r_star,
    max_rank, seconds, run_seconds (and C for the constant C - 1). Each predictor's scale c is fit on
    the other benchmarks (``calibrate``) and applied to the held-out raw value; the constants C - 1 and
    "median r* of the others" are not scaled. Returns (rows with pred, scale and hit; one summary row
    per predictor: n, finite, hits within 2x of a finite r*, censored hits, rho and its permutation
    p-value (censored r* ranked above every finite one), Bonferroni p over the predictors, median cost)."""
    rows = []
    for name, g in table.groupby("predictor", sort=False):
        for i, row in g.iterrows():
            rest = g.drop(index=i)
            scale = calibrate(rest["raw"], rest["r_star"])
            rows.append({**row.to_dict(), "scale": scale, "pred": row["raw"] * scale})
    bench = table.drop_duplicates("benchmark")
    if constants:
        for _, row in bench.iterrows():
            others = bench[(bench["benchmark"] != row["benchmark"]) & np.isfinite(bench["r_star"])]
            base = {k: row[k] for k in ("benchmark", "r_star", "max_rank", "run_seconds")}
            c = row.get("C", math.nan)
            rows.append({**base, "predictor": "constant: C - 1", "raw": c - 1 if c > 1 else math.nan,
                         "scale": 1.0, "pred": c - 1 if c > 1 else math.nan, "seconds": 0.0})
            med = float(np.median(others["r_star"])) if len(others) else math.nan
            rows.append({**base, "predictor": "constant: median r* of the others", "raw": med, "scale": 1.0,
                         "pred": med, "seconds": 0.0})
    out = pd.DataFrame(rows)
    out["hit"] = [hit(p, r, m) for p, r, m in zip(out["pred"], out["r_star"], out["max_rank"])]
    out["cost_fraction"] = out["seconds"] / out["run_seconds"]
    n_pred = out["predictor"].nunique()
    summary = []
    for name, g in out.groupby("predictor", sort=False):
        fin = np.isfinite(g["r_star"])
        ranked = np.where(fin, g["r_star"], g["max_rank"] + 1)  # censored: above every rank that ran
        rho, p = permutation_pvalue(g["pred"], ranked)
        summary.append({"predictor": name, "n": len(g), "finite r*": int(fin.sum()),
                        "within 2x of finite r*": int(g["hit"][fin].sum()),
                        "fraction within 2x": float(g["hit"][fin].mean()) if fin.any() else math.nan,
                        "censored hits": f"{int(g['hit'][~fin].sum())} / {int((~fin).sum())}",
                        "rho": rho, "p": p, "p Bonferroni": min(1.0, p * n_pred) if math.isfinite(p) else math.nan,
                        "median seconds": float(g["seconds"].median()),
                        "median cost fraction": float(g["cost_fraction"].median())})
    return out, pd.DataFrame(summary)


def per_tolerance(study: Study, raw: float, measure: str = "participation_ratio") -> pd.DataFrame:
    """The predicted r* at each of the study's headline metric's tolerances (tight, headline, loose):
    ``raw`` (the max over layers of ``measure`` of the first gradient) times CALIBRATION[measure] at that
    level. One row per tolerance: level, eps (as reports state it), scale, predicted r*."""
    if measure not in CALIBRATION:
        raise ValueError(f"no calibration for measure {measure!r}; calibrated: {sorted(CALIBRATION)} "
                         "(pass an explicit scale instead)")
    m = study.metric
    return pd.DataFrame([{"level": level, "eps": m.eps_text(eps, m.tolerance == "relative"), "scale": scale,
                          "predicted r*": raw * scale}
                         for level, eps, scale in zip(LEVELS, m.eps, CALIBRATION[measure])])


def predict_study(study: Study, estimator: Predictor | None = None, scale: float = 1.0):
    """(per-layer frame, predicted r*) of ``study`` at init, before anything trains: ``estimator``
    (default GradientSpectrum()) fit on its model at rank 0 (first seed), each layer's value times
    ``scale`` (the calibration: docs/results/predict/evaluation.csv holds each predictor's), and
    the max over layers. The prediction is for r* at the headline tolerance of the study's metric."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    est = (estimator or GradientSpectrum()).fit(*init_model(study))
    rows = pd.DataFrame({"layer": list(est.per_layer_), "raw": list(est.per_layer_.values())})
    rows["predicted r*"] = rows["raw"] * scale
    return rows, est.r_ * scale, est.seconds_
