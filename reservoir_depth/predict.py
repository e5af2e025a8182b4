"""Predict the saturation rank r* before training, and test the prediction across benchmarks.

Targets: ``targets`` reads r* at each study's headline tolerance (train.METRICS: accuracy absolute
eps = 0.01, losses / bits per character / NRMSE relative eps = 0.05) from every committed results
store, through the estimator the report uses (report.saturation); r* beyond the largest rank that
ran for every seed is censored (inf, "> max_rank").

Predictors, each computed on the study's model at init (sklearn-style: parameters in __init__,
``fit(model, data)`` returns self; fitted ``per_layer_`` (name -> raw value), ``r_`` (the max over
layers), ``seconds_``). The raw value is a spectrum measure (``measure``: participation ratio,
stable rank or k_tau of ``Spectrum``), to be read as a rank after one scale factor (``evaluate``):

- ``GradientSpectrum``: the first gradient G = dL/dW at W = W_seed of every target weight (autograd
  on merge(model), a plain copy), averaged over K batches ("mean") or stacked ("stack": the spectrum
  of sum_k G_k G_k^T);
- ``ProbeSpectrum``: the adapter s B A after a short training at a high rank (a few % of the steps);
- ``LayerTaskSpectrum``: between-class scatter (integer targets) or Cov(x, y) of each target
  layer's inputs at init;
- ``DataSpectrum``: input PCA or between-class / Cov(x, y) of the data set alone (no model);
- constants (``evaluate``): C - 1 and the median r* of the other benchmarks.

``evaluate`` holds out one benchmark at a time: the predictor's scale c = geometric mean of r* / raw
over the other benchmarks with a finite r*, applied to the held-out raw value.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from .rank import adaptive_search
from .report import metric_of_frame, n_test_of, saturation
from .results import Columns, ResultsStore
from .scaffold import ScaffoldConfig, merge, scaffold_layers
from .spectra import ActivationSpectra, Spectrum, TaskSpectrum, WeightSpectra
from .spectra.probes import _hooked_pass, _select_layers
from .study import Run, Study
from .sweep import build_model
from .train import metric_of, task_of

MEASURE_OF: dict[str, Callable[[Spectrum], float]] = {  # spectrum -> a number read as a rank
    "participation_ratio": lambda s: s.participation_ratio,
    "stable_rank": lambda s: s.stable_rank,
    "k_0.9": lambda s: float(s.k_tau(0.9)),
    "k_0.99": lambda s: float(s.k_tau(0.99)),
}
ROWS = 1000  # at most this many training inputs for the activation / data spectra
LEVELS = ("tight", "headline", "loose")  # a metric's tolerances, tasks.Metric.eps[0], [1], [2]
CALIBRATION: dict[str, tuple[float, float, float]] = {  # measure -> scale at each level (predicted r* = scale x raw)
    # the gradient spectrum's calibration on every committed benchmark with a finite r* at that level:
    # docs/results/predict/calibration.csv, written by experiments/predict_rank.py (a test checks they agree)
    "k_0.9": (1.32, 1.6, 0.908),
    "participation_ratio": (1.99, 2.83, 1.71),
    "stable_rank": (2.88, 4.63, 3.0),
}


def _check_measure(measure: str) -> None:
    if measure not in MEASURE_OF:
        raise ValueError(f"measure must be one of {list(MEASURE_OF)}, got {measure!r}")


def _check_int(name: str, v: Any, minimum: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")


# ----------------------------------------------------------------------------- targets

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
    metric = metric_of_frame(df)
    m = metric_of(metric)
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
    return {"benchmark": folder.name, "arch": study.arch["name"], "metric": metric, "eps": sr.eps,
            "tolerance": m.tolerance, "r_star": sr.r_star_, "lo": sr.ci_[0], "hi": sr.ci_[1],
            "interval": sr.ci_kind_, "n_seeds": sr.n_seeds_, "max_rank": sr.max_rank_, "full_rank": full_rank(study),
            "censored": not math.isfinite(sr.r_star_), "margin": sr.margin_, "n_test": n_test_of(df),
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


# ----------------------------------------------------------------------------- the model at init

def init_model(study: Study, rank: int = 0, seed: int | None = None, max_rank: Mapping[str, int] | None = None):
    """(model, data) of a LottaLoRA run of ``study`` at ``rank`` on ``seed`` (default: its first seed), at init,
    with the study's caps at that rank (Study.scaffold_at: rank_caps included) or ``max_rank`` instead."""
    seed = study.seeds[0] if seed is None else seed
    scaffold_cfg = {**study.scaffold_at(int(rank), seed), **({"max_rank": dict(max_rank)} if max_rank else {})}
    run = Run(method="lotta", seed=seed, study=study.study, dataset=study.dataset, arch=study.arch,
              train=study.train, scaffold=scaffold_cfg)
    d = run.data()
    torch.manual_seed(run.seed)
    return build_model(run, d), d


def full_rank(study: Study) -> int:
    """The largest rank any target layer of ``study`` can hold: max over its scaffold layers of
    min(d_in, d_out), under the caps the study or the family sets for every run (llama's SwiGLU at 0).
    At r >= full_rank, s B A can represent any Delta W of every target."""
    model, _ = init_model(study)
    return max((min(*layer.map_shape, *([layer.config.max_rank[layer.rank_pattern]] if layer.rank_pattern else []))
                for _, layer in scaffold_layers(model)), default=0)


def _batches(d, batch_size: int, k: int, seed: int):
    """k seeded training batches (X, y) of ``batch_size`` rows."""
    g = torch.Generator().manual_seed(seed)
    n = len(d.X_train)
    for _ in range(k):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
        yield d.X_train[idx], d.y_train[idx]


def _float_input(X: torch.Tensor, model: nn.Module) -> torch.Tensor:
    return X.float() if X.is_floating_point() else X


def target_weights(model: nn.Module, plain: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of merge(model) that hold a scaffold's W (>= 2-D, not a trained parameter of
    ``model``): the target weights W = beta W_seed + s B A, by parameter name."""
    trained = dict(model.named_parameters())
    return {n: p for n, p in plain.named_parameters() if p.ndim >= 2 and n not in trained}


# ----------------------------------------------------------------------------- predictors

class _Predictor:
    """Shared: ``measure`` of each layer's spectrum -> ``per_layer_``; ``r_`` = max over layers."""

    def _finish(self, spectra: Mapping[str, Spectrum], t0: float) -> "_Predictor":
        self.spectra_ = dict(spectra)
        self.per_layer_ = {n: MEASURE_OF[self.measure](s) for n, s in spectra.items()}
        self.r_ = max(self.per_layer_.values()) if self.per_layer_ else math.nan
        self.seconds_ = time.perf_counter() - t0
        return self


class GradientSpectrum(_Predictor):
    """Spectrum of the first gradient G = dL/dW at W = W_seed of each target weight (reshaped to
    (d_out, -1)), by autograd on merge(model), over ``k`` seeded batches of ``batch_size``.
    accumulate="mean": G = the mean of the batch gradients (one gradient of k * batch_size rows);
    "stack": the spectrum of [G_1 ... G_k] (the eigenvalues of sum_k G_k G_k^T)."""

    def __init__(self, k: int = 4, batch_size: int = 256, measure: str = "participation_ratio",
                 accumulate: str = "mean", random_state: int = 0) -> None:
        self.k, self.batch_size, self.measure = k, batch_size, measure
        self.accumulate, self.random_state = accumulate, random_state

    def fit(self, model: nn.Module, data) -> "GradientSpectrum":
        _check_int("k", self.k)
        _check_int("batch_size", self.batch_size)
        _check_measure(self.measure)
        if self.accumulate not in ("mean", "stack"):
            raise ValueError(f"accumulate must be 'mean' or 'stack', got {self.accumulate!r}")
        t0 = time.perf_counter()
        plain = merge(model)
        weights = target_weights(model, plain)
        if not weights:
            raise ValueError("the model has no scaffold weight to take a gradient of (scaffold() it first)")
        task = task_of(data.task)
        plain.train()
        grads: dict[str, list[torch.Tensor]] = {n: [] for n in weights}
        for X, y in _batches(data, self.batch_size, self.k, self.random_state):
            plain.zero_grad(set_to_none=True)
            task.loss(plain(_float_input(X, plain)), y, washout=data.washout).backward()
            for n, p in weights.items():
                grads[n].append(p.grad.detach().double().reshape(p.shape[0], -1))
        spectra = {}
        for n, gs in grads.items():
            G = torch.stack(gs).mean(0) if self.accumulate == "mean" else torch.cat(gs, dim=1)
            spectra[n] = Spectrum.from_matrix(G)
        return self._finish(spectra, t0)


class ProbeSpectrum(_Predictor):
    """Spectrum of each adapter s B A after ``steps`` AdamW steps (lr, batch_size) on a copy of a
    model scaffolded at a high rank (the probe rank): B = 0 at init, so s B A is what the first steps
    put there. ``model`` is that high-rank model (``init_model(study, rank=...)``)."""

    def __init__(self, steps: int = 20, lr: float = 1e-3, batch_size: int = 128,
                 measure: str = "participation_ratio", random_state: int = 0) -> None:
        self.steps, self.lr, self.batch_size = steps, lr, batch_size
        self.measure, self.random_state = measure, random_state

    def fit(self, model: nn.Module, data) -> "ProbeSpectrum":
        _check_int("steps", self.steps)
        _check_int("batch_size", self.batch_size)
        _check_measure(self.measure)
        t0 = time.perf_counter()
        probe = copy.deepcopy(model)
        probe.train()
        opt = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], lr=self.lr)
        task = task_of(data.task)
        for X, y in _batches(data, self.batch_size, self.steps, self.random_state):
            opt.zero_grad(set_to_none=True)
            task.loss(probe(_float_input(X, probe)), y, washout=data.washout).backward()
            opt.step()
        return self._finish(WeightSpectra("adapter").fit(probe).spectra_, t0)


def _reducer(n: int, n_targets: int, batch_size: int, max_rows: int):
    """(on_rows, seen) for _hooked_pass over n samples in batches of ``batch_size``: each layer's
    (rows, features) is kept as is when it has one row per target, else averaged per sample (conv
    patches, positions of a sequence with one target); at most ``max_rows`` rows per layer."""
    per = n_targets // n
    seen: dict[str, list[torch.Tensor]] = {}
    done: dict[str, int] = {}

    def on_rows(name: str, rows: torch.Tensor) -> None:
        start = done.get(name, 0)
        b = min(batch_size, n - start)
        done[name] = start + b
        if rows.shape[0] != b * per:
            if rows.shape[0] % b:
                raise ValueError(f"layer {name!r}: {rows.shape[0]} rows for {b} samples; cannot align them "
                                 f"with the targets")
            rows = rows.reshape(b, -1, rows.shape[1]).mean(1)
        kept = sum(len(r) for r in seen.get(name, []))
        if kept < max_rows:
            seen.setdefault(name, []).append(rows[:max_rows - kept].detach().double().cpu())

    return on_rows, seen


def _task_spectrum(X: np.ndarray, y: torch.Tensor) -> Spectrum:
    """Between-class scatter (integer targets) or Cov(x, y) (real targets) of the rows X against y."""
    if y.is_floating_point():
        return TaskSpectrum("regression").fit(X, y.reshape(len(X), -1)).cross_spectrum_
    return TaskSpectrum("classification").fit(X, y.reshape(-1)).between_class_spectrum_


def _targets_of(data, n: int) -> torch.Tensor:
    """The targets of the first n training samples, flat per row (forecasting: steps t >= washout)."""
    y = data.y_train[:n]
    if data.task == "node-classification":  # padding nodes (label -1) would enter as a class of their own
        raise ValueError("node-classification: a between-class scatter of node rows would count the padding "
                         "nodes (label -1) as a class; task spectra of graphs are not implemented")
    if data.task == "forecasting":
        y = y[:, data.washout:]
    return y.reshape(-1, *y.shape[2:]) if y.ndim >= 2 and data.task != "classification" else y


class LayerTaskSpectrum(_Predictor):
    """Between-class scatter (integer targets) or Cov(x, y) (real targets) of each target layer's
    inputs at init, over ``n_rows`` training samples (a layer seeing several rows per sample, conv
    patches or sequence positions, is averaged per sample unless each row has its own target)."""

    def __init__(self, n_rows: int = ROWS, max_rows: int = 20000, measure: str = "participation_ratio") -> None:
        self.n_rows, self.max_rows, self.measure = n_rows, max_rows, measure

    def fit(self, model: nn.Module, data) -> "LayerTaskSpectrum":
        _check_int("n_rows", self.n_rows)
        _check_int("max_rows", self.max_rows)
        _check_measure(self.measure)
        t0 = time.perf_counter()
        n = min(self.n_rows, len(data.X_train))
        y = _targets_of(data, n)
        if data.task == "forecasting":
            raise ValueError("forecasting: a layer's inputs per time step include the washout steps the loss "
                             "leaves out; use DataSpectrum(kind='task') for Cov(x, y) of the series")
        chosen = _select_layers(model, None)
        on_rows, seen = _reducer(n, len(y), 256, self.max_rows)
        _hooked_pass(model, data.X_train[:n], chosen, "input", on_rows, 256, torch.device("cpu"))
        spectra = {}
        for name, parts in seen.items():  # a layer its container calls without its forward (nn.GRU's gates)
            rows = torch.cat(parts)       # is never seen, and has no entry
            spectra[name] = _task_spectrum(rows.numpy(), y[:len(rows)])
        return self._finish(spectra, t0)


class DataSpectrum(_Predictor):
    """The data set alone (no model): kind="inputs", PCA of the inputs; kind="task", between-class
    scatter or Cov(x, y) of the inputs. Token ids have no spectrum: ``r_`` is NaN."""

    def __init__(self, kind: str = "inputs", n_rows: int = ROWS, measure: str = "participation_ratio") -> None:
        self.kind, self.n_rows, self.measure = kind, n_rows, measure

    def fit(self, model: nn.Module | None, data) -> "DataSpectrum":
        if self.kind not in ("inputs", "task"):
            raise ValueError(f"kind must be 'inputs' or 'task', got {self.kind!r}")
        _check_int("n_rows", self.n_rows)
        _check_measure(self.measure)
        t0 = time.perf_counter()
        if data.vocab_size:
            return self._finish({}, t0)
        n = min(self.n_rows, len(data.X_train))
        X, y = data.X_train[:n].double(), _targets_of(data, n)
        if data.task == "forecasting":
            X = X[:, data.washout:].reshape(-1, X.shape[-1])
        X = X.reshape(len(X), -1).numpy()
        spectra = {"inputs": TaskSpectrum("regression").fit(X, np.zeros((len(X), 1))).input_spectrum_
                   if self.kind == "inputs" else _task_spectrum(X, y)}
        return self._finish(spectra, t0)


# ----------------------------------------------------------------------------- evaluation

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


# ----------------------------------------------------------------------------- use

def per_tolerance(study: Study, raw: float, measure: str = "participation_ratio") -> pd.DataFrame:
    """The predicted r* at each of the study's headline metric's tolerances (tight, headline, loose):
    ``raw`` (the max over layers of ``measure`` of the first gradient) times CALIBRATION[measure] at that
    level. One row per tolerance: level, eps (as reports state it), scale, predicted r*."""
    if measure not in CALIBRATION:
        raise ValueError(f"no calibration for measure {measure!r}; calibrated: {sorted(CALIBRATION)} "
                         "(pass an explicit scale instead)")
    m = metric_of(task_of(study.runs()[0].data().task).headline)
    return pd.DataFrame([{"level": level, "eps": m.eps_text(eps, m.tolerance == "relative"), "scale": scale,
                          "predicted r*": raw * scale}
                         for level, eps, scale in zip(LEVELS, m.eps, CALIBRATION[measure])])


def predict_study(study: Study, estimator: _Predictor | None = None, scale: float = 1.0):
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


# ----------------------------------------------------------------------------- per-layer ranks

def layer_dims(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each target weight W of a scaffolded ``model`` (W reshaped to (d_out, -1)), keyed
    as a predictor's ``per_layer_`` (the parameter names of merge(model))."""
    weights = target_weights(model, merge(model))
    if not weights:
        raise ValueError("the model has no scaffold weight (scaffold() it first)")
    return {n: (int(p[0].numel()), int(p.shape[0])) for n, p in weights.items()}


def _check_dims(name: str, d: Any) -> tuple[int, int]:
    ok = isinstance(d, (tuple, list)) and len(d) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in d)
    if not ok:
        raise ValueError(f"dims[{name!r}] must be (d_in, d_out), two ints >= 1, got {d!r}")
    return int(d[0]), int(d[1])


def allocate_ranks(per_layer: Mapping[str, float], dims: Mapping[str, tuple[int, int]], r: int) -> dict[str, int]:
    """Per-layer ranks r_l from per-layer predictions p_l at the adapter budget of uniform rank r.

    A layer of rank r_l trains r_l (d_in + d_out) adapter parameters (A: r_l x d_in, B: d_out x r_l) and
    r_l <= cap_l = min(d_in, d_out). The budget is that of every layer at min(r, cap_l):
    P = sum_l min(r, cap_l) (d_in + d_out). Target ranks t_l = min(lambda p_l, cap_l), with lambda set
    so that sum_l t_l (d_in + d_out) = P (water-filling over the caps; exact rational arithmetic). Then
    r_l = floor(t_l), and the leftover budget goes one rank at a time to the layer, among those below
    their cap that it still pays for, with the largest t_l - r_l (ties: the cheaper layer, then the
    larger p_l, then the name). So sum_l r_l (d_in + d_out) <= P, and the leftover is smaller than
    the cost of one more rank on any layer below its cap; a layer with p_i > p_j and
    d_in + d_out no larger than j's never gets fewer ranks than min(r_j, cap_i).
    Keys of ``per_layer`` and ``dims`` must be the same layers; p_l finite and >= 0 (all 0: every t_l = 0
    and the budget is spent by the leftover rule alone)."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"rank r must be an int >= 0, got {r!r}")
    if not isinstance(per_layer, Mapping) or not isinstance(dims, Mapping):
        raise ValueError(f"per_layer and dims must be mappings by layer name, got {type(per_layer).__name__} "
                         f"and {type(dims).__name__}")
    if not per_layer:
        raise ValueError("per_layer has no layer: nothing to allocate")
    unknown, missing = sorted(set(per_layer) - set(dims)), sorted(set(dims) - set(per_layer))
    if unknown or missing:
        raise ValueError(f"per_layer and dims must name the same layers: no dims for {unknown}, "
                         f"no prediction for {missing}")
    p: dict[str, Fraction] = {}
    for name, v in per_layer.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                or not math.isfinite(v) or v < 0:
            raise ValueError(f"per_layer[{name!r}] must be a finite number >= 0, got {v!r}")
        p[name] = Fraction(float(v))
    d = {name: _check_dims(name, dims[name]) for name in per_layer}
    cost = {n: d_in + d_out for n, (d_in, d_out) in d.items()}
    cap = {n: min(v) for n, v in d.items()}
    budget = sum(min(r, cap[n]) * cost[n] for n in d)
    # water-filling: layers whose share passes their cap are held at it, lambda refit on the rest
    capped: set[str] = set()
    while True:
        free = [n for n in d if n not in capped]
        weight = sum(p[n] * cost[n] for n in free)
        lam = (budget - sum(cap[n] * cost[n] for n in capped)) / weight if weight else Fraction(0)
        over = {n for n in free if lam * p[n] >= cap[n]}
        if not over:
            break
        capped |= over
    t = {n: Fraction(cap[n]) if n in capped else lam * p[n] for n in d}
    ranks = {n: math.floor(t[n]) for n in d}
    left = budget - sum(ranks[n] * cost[n] for n in d)
    while True:
        open_ = [n for n in d if ranks[n] < cap[n] and cost[n] <= left]
        if not open_:
            break
        n = min(open_, key=lambda n: (-(t[n] - ranks[n]), cost[n], -p[n], n))
        ranks[n] += 1
        left -= cost[n]
    return ranks


def ranks_config(ranks: Mapping[str, int], base: ScaffoldConfig | Mapping[str, Any] | None = None) -> ScaffoldConfig:
    """The ScaffoldConfig of per-layer ranks r_l (``allocate_ranks``; keys: the target weights' parameter
    names, "<module>.weight"): ``base`` (a ScaffoldConfig or its fields; default: the defaults) with
    r = max_l r_l and max_rank = {re.escape(module): r_l}, one exact pattern per layer. Each layer's
    scale is then s = alpha / r_l (alpha / sqrt(r_l) with rsLoRA): a layer given fewer ranks gets a
    larger s, as any capped layer does. A ``base`` with its own max_rank is refused."""
    caps = {}
    for name, v in ranks.items():
        if not (isinstance(name, str) and name.endswith(".weight")):
            raise ValueError(f"ranks are keyed by a target weight's parameter name '<module>.weight', got {name!r}")
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"ranks[{name!r}] must be an int >= 0, got {v!r}")
        caps[re.escape(name[:-len(".weight")])] = int(v)
    fields = base.to_dict() if isinstance(base, ScaffoldConfig) else dict(base or {})
    if isinstance(base, ScaffoldConfig):
        fields = {**fields, "spec": base.spec, "specs": dict(base.specs)}
    if fields.get("max_rank"):  # replacing them would drop a cap silently; keeping them, a layer has two
        raise ValueError(f"base already caps layers (max_rank={dict(fields['max_rank'])!r}): the allocated ranks "
                         f"set every layer's rank; give a base without max_rank")
    return ScaffoldConfig(**{**fields, "r": max(caps.values(), default=0), "max_rank": caps})
