"""Targets: r* read from committed results stores, at a study's metric's own tolerances.

``targets`` reads r* at each study's headline tolerance (tasks.METRICS: accuracy absolute eps = 0.01,
losses / bits per character / NRMSE relative eps = 0.05) from every committed results store, through the
estimator the report uses (report.saturation); r* beyond the largest rank that ran for every seed is
censored (inf, "> max_rank"). ``search_replay``: the runs an adaptive search from a prediction needs,
replayed on a stored curve.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..rank import adaptive_search
from ..saturation import n_test_of, recovery_rank, saturation
from ..results import Columns, ResultsStore
from ..study import Study
from ..tasks import metric_of
from .model import full_rank

LEVELS = ("tight", "headline", "loose")  # a metric's tolerances, tasks.Metric.eps[0], [1], [2]


def study_of(folder: str | Path, experiments: str | Path = "experiments") -> Study:
    """The study behind a results folder: experiments/<folder name>.toml when it names the same study
    (its rank grid may have grown since the report ran), else the config its study.json recorded."""
    folder = Path(folder)
    toml = Path(experiments) / f"{folder.name}.toml"
    recorded = Study.of(json.loads((folder / "study.json").read_text())["config"])
    if toml.exists():
        study = Study.load(toml)
        if study.study == recorded.study:
            return study
    return recorded


def _saturation(folder: Path, experiments: str | Path, level: int | None = None):
    """(study, frame, metric name, SaturationRank) of ``folder``'s store at its metric's tolerance number
    ``level`` (default: the headline eps), with the metric's own tolerance kind; None without a rank sweep
    and full training, or when no r* can be stated."""
    study = study_of(folder, experiments)
    if not study.ranks or not study.full:
        return None
    df = study.frame(ResultsStore(folder / "runs.sqlite"))
    if df.empty:
        return None
    m = study.metric
    metric = m.name
    sr = saturation(df, study, metric, m.headline_eps if level is None else m.eps[level], m.tolerance == "relative")
    return None if sr is None else (study, df, metric, sr)


def target(folder: str | Path, experiments: str | Path = "experiments", level: int | None = None) -> dict[str, Any] | None:
    """One row of ``targets``: r* at the headline tolerance of ``folder``'s study, or at its metric's
    tolerance number ``level`` (0, 1, 2: tasks.Metric.eps, tight to loose; 1 is the headline) (None
    without a rank sweep and full training)."""
    if level is not None and level not in range(len(LEVELS)):
        raise ValueError(f"level must be one of {list(range(len(LEVELS)))} ({', '.join(LEVELS)}), got {level!r}")
    folder = Path(folder)
    found = _saturation(folder, experiments, level)
    if found is None:
        return None
    study, df, metric, sr = found
    m = metric_of(metric)
    lotta = df[df[Columns.METHOD] == "lotta"]
    top = lotta[lotta[Columns.RANK] == lotta[Columns.RANK].max()]
    q90, null, _ = recovery_rank(df, study, metric, 0.9)
    at_q90 = lotta[lotta[Columns.RANK] == q90.r_star_] if q90 is not None else lotta.iloc[:0]
    return {"benchmark": folder.name, "arch": study.arch["name"], "metric": metric, "eps": sr.eps,
            "tolerance": m.tolerance, "r_star": sr.r_star_, "lo": sr.ci_[0], "hi": sr.ci_[1],
            "interval": sr.ci_kind_, "n_seeds": sr.n_seeds_, "max_rank": sr.max_rank_, "full_rank": full_rank(study),
            "censored": not math.isfinite(sr.r_star_), "margin": sr.margin_, "n_test": n_test_of(df),
            "r_first": sr.r_first_, "crossing": sr.crossing_, "undone_at": list(sr.undone_at_),
            "beats_reference": list(sr.beats_reference_),
            "null": null, "r_star_q90": math.nan if q90 is None else q90.r_star_,
            "q90_lo": math.nan if q90 is None else q90.ci_[0], "q90_hi": math.nan if q90 is None else q90.ci_[1],
            "trainable_q90": float(at_q90[Columns.TRAINABLE].mean()) if len(at_q90) else math.nan,
            "run_seconds": float(top["seconds"].median())}


def search_replay(folder: str | Path, r_start: float | None, experiments: str | Path = "experiments") -> dict[str, Any]:
    """How many runs the adaptive search would have needed on ``folder``'s study, replayed on its stored
    curve (the mean over seeds at each complete rank, at the headline tolerance): from ``r_start`` (a
    prediction) and from the grid's start (doubling), against the whole grid; with the r* each finds
    beside the grid scan's. A run is one rank on one seed (the full-training baseline is not counted)."""
    folder = Path(folder)
    found = _saturation(folder, experiments)
    if found is None:
        raise ValueError(f"{folder}: no r* to search for (the study needs ranks, full training and a rank "
                         "that ran for every seed)")
    sr = found[3]
    grid = sorted(sr.curve_)
    search = lambda start: adaptive_search(sr.curve_.__getitem__, sr.full_, sr.eps, grid[-1], sr.higher_is_better,
                                           r_min=grid[0], relative=sr.relative, r_start=start, grid=grid)
    doubling, predicted = search(None), search(r_start)
    return {"benchmark": folder.name, "seeds": sr.n_seeds_, "grid": grid, "r_star": sr.r_star_,
            "runs, grid": len(grid) * sr.n_seeds_, "runs, doubling": doubling.n_evaluated * sr.n_seeds_,
            "r_star, doubling": doubling.r_star, "r_start": r_start,
            "runs, from prediction": predicted.n_evaluated * sr.n_seeds_, "r_star, from prediction": predicted.r_star}


def targets(root: str | Path = "docs/results", experiments: str | Path = "experiments",
            exclude: Sequence[str] = ("planted",), level: int | None = None) -> pd.DataFrame:
    """r* at the headline tolerance for every results folder under ``root`` holding a store of a study
    with ranks and full training (one row each; ``run_seconds``: median seconds of a run at the largest
    rank, one full run's cost). Planted tasks are left out (their own sanity check)."""
    rows = []
    for folder in sorted(Path(root).iterdir()):
        if folder.name in exclude or not (folder / "runs.sqlite").exists() or not (folder / "study.json").exists():
            continue
        row = target(folder, experiments, level)
        if row is not None:
            rows.append(row)
    return pd.DataFrame(rows)
