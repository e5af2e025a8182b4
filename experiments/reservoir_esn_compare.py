"""A tuned echo-state network (reservoirpy) beside our reservoir family, each tuned by the same search,
on the project's Mackey-Glass and Lorenz arrays (issue 18, items 5 and 6).

Data: the reservoir studies' own arrays (experiments/reservoir_{mackey_glass,lorenz}.toml, ``Run.data()``):
49 training windows and 9 test windows of 200 steps, washout 50. The last 10 training windows (``VAL`` = 20 %) are the validation split; the first 39 fit. Hyper-parameters are chosen on validation with a tuning seed
(``--tune-seed``, not among the reported seeds); the chosen configuration is then refitted on all 49
training windows for each reported seed and the test split is read once per seed and method.

Methods (units 200, zero state at the start of every window, ridge readout with an unpenalised intercept):
- esn: reservoirpy's Reservoir (its own sparse draws: W normal at connectivity 0.1 rescaled to the spectral
  radius; W_in and bias Bernoulli +-1 times the input / bias scaling) + reservoirpy's Ridge.
- ours_r0: our reservoir family at r = 0 (B = 0, beta = 1: W_seed as drawn by the study's scaffold,
  W at spectral radius rho, W_in normal fan-in, seeded bias U(-1/sqrt(d_in), 1/sqrt(d_in))) with the
  ridge readout (reservoir_depth.readout): an ESN.
- ours_lora: the same scaffold with LoRA on W_in and W (alpha 16), trained by AdamW on the teacher-forced
  MSE with the ridge readout solved in closed form after every epoch (TrainConfig(readout="ridge")),
  from ours_r0's configuration chosen for free-running; search over rank and learning rate.
Shared grid (esn and ours_r0): spectral radius, leak, input scaling, bias scaling, ridge lambda. A value chosen
on an edge of its axis extends the axis by one step and the search reruns (leak stops at 1, bias at 0: edges
of their domains); the extensions are printed and recorded. Each metric selects its own configuration.

Metrics are the trainer's (tasks.Forecasting): NRMSE = sqrt(MSE) / std(y) over every test window, step
t >= washout and output; one-step reads the true x_t; free-running (train.free_run) reads the true x_t for
t < washout, then its own previous prediction for the 150 remaining steps.

    python experiments/reservoir_esn_compare.py [--out docs/results/reservoir_esn] [--seeds 0 1 2]

Writes esn_compare.csv (per dataset, method, metric, seed), esn_compare.md and esn_provenance.json to --out.
reservoirpy is a benchmark dependency only (`pip install reservoirpy`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from reservoir_depth.distributions import DistributionSpec, torch_rng
from reservoir_depth.models import build, scaffold_defaults
from reservoir_depth.readout import Gram
from reservoir_depth.scaffold import ScaffoldConfig, merge, scaffold
from reservoir_depth.study import Study
from reservoir_depth.train import TrainConfig, evaluate, train
from reservoir_depth.tasks import target_std

SPLITS = ("X_train", "y_train", "X_test", "y_test")
STUDIES = ("reservoir_mackey_glass", "reservoir_lorenz")
VAL = 0.2  # the validation windows: this fraction (at least one) of the training windows, the last ones
METRICS = ("nrmse", "nrmse_free")
# the shared grid; ridge is solved for every lambda from one pass over the states
GRID: dict[str, list[float]] = {"rho": [0.6, 0.9, 1.2], "leak": [0.1, 0.3, 0.6], "input_scaling": [0.1, 0.3, 1.0],
                                "bias": [0.0, 0.3, 1.0], "ridge": [1e-10, 1e-8, 1e-6, 1e-4]}
DOMAIN = {"leak": (0.0, 1.0), "bias": (0.0, math.inf), "r": (1, math.inf)}  # a choice at these bounds is final
INTEGER = ("r",)  # axes of whole numbers
LORA_GRID: dict[str, list[float]] = {"r": [1, 4], "lr": [1e-3, 3e-3]}
LORA = {"epochs": 2, "batch_size": 8, "alpha": 16.0}
UNITS = 200


def split(study: Study) -> dict[str, Any]:
    """The study's forecasting data as float64 tensors X_train, y_train, X_test, y_test (n, T, d) and washout,
    read from ``Run.data()`` (every run of a study shares one data set; refused otherwise)."""
    runs = study.runs()
    d = runs[0].data()
    if d.task != "forecasting":
        raise ValueError(f"{study.source}: dataset {d.name!r} is a {d.task!r} task; the ESN comparison needs "
                         f"a forecasting study (lorenz, mackey-glass)")
    for r in runs[1:]:
        e = r.data()
        if e is not d and not all(torch.equal(getattr(d, k), getattr(e, k)) for k in SPLITS):
            raise ValueError(f"{study.source}: runs of seed {r.seed} read another data set than seed "
                             f"{runs[0].seed}; pin the dataset's seed in the study")
    return {**{k: getattr(d, k).double() for k in SPLITS}, "washout": int(d.washout), "name": d.name, "data": d}


def folds(s: dict[str, Any]) -> dict[str, tuple]:
    """(X_fit, y_fit, X_eval, y_eval): "val" = first windows -> last VAL training windows; "test" = all
    training windows -> the test windows."""
    n_train = len(s["X_train"])
    if n_train < 2:
        raise ValueError(f"{s['name']}: {n_train} training window(s); a validation split needs at least 2")
    n = n_train - max(1, round(VAL * n_train))
    return {"val": (s["X_train"][:n], s["y_train"][:n], s["X_train"][n:], s["y_train"][n:]),
            "test": (s["X_train"], s["y_train"], s["X_test"], s["y_test"])}


def nrmse(pred: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, washout: int) -> float:
    """sqrt(MSE) / std(y) over windows, steps t >= washout and outputs (tasks.Forecasting's NRMSE)."""
    pred, y = torch.as_tensor(np.asarray(pred)).double(), torch.as_tensor(np.asarray(y)).double()
    mse = float(((pred[:, washout:] - y[:, washout:]) ** 2).mean())
    return math.sqrt(mse) / target_std(y, washout)


# ----------------------------------------------------------------------------- the peer: reservoirpy


def esn_states(res, X: torch.Tensor) -> np.ndarray:
    """reservoirpy states (n, T, units), each window from a zero state."""
    out = []
    for w in X.numpy():
        if res.initialized:
            res.reset()
        out.append(res.run(w))
    return np.stack(out)


def esn_free(res, W: np.ndarray, c: np.ndarray, X: torch.Tensor, washout: int) -> np.ndarray:
    """train.free_run for a reservoirpy node and readout y = W h + c."""
    out = np.empty((*X.shape[:2], len(c)))
    for i, w in enumerate(X.numpy()):
        res.reset()
        prev = None
        for t in range(w.shape[0]):
            prev = W @ res.step(w[t] if t < max(washout, 1) else prev).reshape(-1) + c
            out[i, t] = prev
    return out


def esn_scores(cfg: dict[str, float], ridges: list[float], fold: tuple, washout: int, seed: int) -> list[dict]:
    """reservoirpy's ESN of ``cfg`` and ``seed``: the eval NRMSEs (one-step, free-running) for every lambda."""
    from functools import partial

    from reservoirpy.mat_gen import bernoulli
    from reservoirpy.nodes import Reservoir, Ridge

    X_fit, y_fit, X_ev, y_ev = fold
    res = Reservoir(units=UNITS, lr=cfg["leak"], sr=cfg["rho"], input_scaling=cfg["input_scaling"],
                    bias=partial(bernoulli, input_scaling=cfg["bias"]) if cfg["bias"] else 0.0,
                    input_dim=X_fit.shape[-1], seed=seed)
    H, H_ev = esn_states(res, X_fit)[:, washout:], esn_states(res, X_ev)
    rows = []
    for lam in ridges:
        head = Ridge(ridge=lam).fit(H.reshape(-1, UNITS), y_fit[:, washout:].reshape(-1, y_fit.shape[-1]).numpy())
        W, c = np.asarray(head.Wout).T, np.asarray(head.bias).reshape(-1)
        rows.append({"nrmse": nrmse(H_ev @ W.T + c, y_ev, washout),
                     "nrmse_free": nrmse(esn_free(res, W, c, X_ev, washout), y_ev, washout)})
    return rows


# ----------------------------------------------------------------------------- ours


def reservoir(study: Study, seed: int, cfg: dict[str, float], r: int = 0) -> torch.nn.Module:
    """Our reservoir family as the study builds it (its scaffold spec, alpha 16), with ``cfg``'s rho, leak and
    scalings, at rank r; float64."""
    arch = {**study.arch, "rho": cfg["rho"], "leak": cfg["leak"], "input_scaling": cfg["input_scaling"],
            "bias_scaling": cfg["bias"], "units": UNITS}
    d = study.runs()[0].data()
    with torch_rng(seed):
        model = build(arch.pop("name"), d_in=d.d_in, n_out=d.n_out, **arch)
    spec = DistributionSpec(**study.scaffold["spec"]) if "spec" in study.scaffold else DistributionSpec("normal")
    return scaffold(model, ScaffoldConfig(**scaffold_defaults(model), r=r, alpha=LORA["alpha"], root_seed=seed,
                                          spec=spec)).double()


@functools.lru_cache(maxsize=8)
def _merged(study_json: str, seed: int, rho: float) -> torch.nn.Module:
    cfg = {"rho": rho, "leak": 1.0, "input_scaling": 1.0, "bias": 1.0}
    return merge(reservoir(Study.from_dict(json.loads(study_json)), seed, cfg))


def ours_scores(study: Study, cfg: dict[str, float], ridges: list[float], fold: tuple, washout: int,
                seed: int) -> list[dict]:
    """Our reservoir at r = 0 (merged: the plain reservoir with W_seed; drawn once per seed and rho, the leak
    and scalings then set) with the ridge readout, every lambda."""
    X_fit, y_fit, X_ev, y_ev = fold
    model = copy.deepcopy(_merged(json.dumps(study.to_dict(), sort_keys=True), seed, cfg["rho"]))
    model.leak, model.input_scaling, model.bias_scaling = cfg["leak"], cfg["input_scaling"], cfg["bias"]
    with torch.no_grad():
        gram = Gram().add(model.states(X_fit)[:, washout:], y_fit[:, washout:])
    rows = []
    for lam in ridges:
        W, c = gram.solve(lam)
        with torch.no_grad():
            model.readout.weight.copy_(W), model.readout.bias.copy_(c)
        ev = evaluate(model, X_ev, y_ev, task="forecasting", washout=washout, free=True)
        rows.append({k: ev[k] for k in METRICS})
    return rows


def lora_scores(study: Study, cfg: dict[str, float], lora: dict[str, float], fold: tuple, s: dict[str, Any],
                seed: int) -> list[dict]:  # one row: lambda is cfg's
    """LoRA on W_in and W + ridge readout, trained on the fold's fit windows; its eval NRMSEs after training."""
    X_fit, y_fit, X_ev, y_ev = fold
    data = dataclasses.replace(s["data"], X_train=X_fit, y_train=y_fit, X_test=X_ev, y_test=y_ev)
    model = reservoir(study, seed, cfg, r=int(lora["r"]))
    hist = train(model, data, TrainConfig(epochs=LORA["epochs"], lr=lora["lr"], batch_size=LORA["batch_size"],
                                          seed=seed, readout="ridge", ridge=cfg["ridge"], progress=False))
    return [{k: hist.final[f"test_{k}"] for k in METRICS}]


# ----------------------------------------------------------------------------- the search


def extend(axis: str, values: list[float], i: int) -> list[float] | None:
    """``values`` grown by one step beyond index i when i is an edge (geometric steps; arithmetic from 0),
    or None when i is inside or the edge is the domain's bound."""
    lo, hi = DOMAIN.get(axis, (0.0, math.inf))
    if 0 < i < len(values) - 1 or len(values) < 2:
        return None
    a, b = (values[0], values[1]) if i == 0 else (values[-1], values[-2])
    if a in (lo, hi):
        return None
    new = a * a / b if a > 0 and b > 0 else 2 * a - b
    new = min(max(round(new) if axis in INTEGER else new, lo), hi)
    return sorted({*values, new}) if new not in values else None


def search(score: Callable[[dict, list], list[dict]], grid: dict[str, list[float]], log: list[str],
           what: str, rounds: int = 4) -> dict[str, dict]:
    """Grid search over every axis of ``grid``, choosing per metric on the validation score. ``score(config,
    lambdas)`` scores one configuration for each ridge lambda (a list aligned with ``lambdas``; [None] for a grid
    without "ridge"). A choice on an edge extends its axis (``extend``) and the search goes on over the new points,
    at most ``rounds`` times. Returns {metric: {"config", "val", "grid"}}."""
    grid = {k: list(v) for k, v in grid.items()}
    shared = [k for k in grid if k != "ridge"]
    cache: dict[tuple, dict] = {}  # (point, lambda) -> scores
    for _ in range(rounds + 1):
        lams = grid.get("ridge", [None])
        points = list(itertools.product(*(grid[k] for k in shared)))
        for point in points:
            missing = [lam for lam in lams if (point, lam) not in cache]
            if missing:
                cache.update({(point, lam): r for lam, r in zip(missing, score(dict(zip(shared, point)), missing))})
        rows = [{**dict(zip(shared, p)), "ridge": lam, **cache[(p, lam)]} for p in points for lam in lams]
        best = {m: min((r for r in rows if math.isfinite(r[m])), key=lambda r: r[m]) for m in METRICS}
        grown = False
        for m, b in best.items():
            for k in grid:
                new = extend(k, grid[k], grid[k].index(b[k]))
                if new is not None:
                    log.append(f"{what}: {m} chose {k} = {b[k]:g} on the grid's edge {grid[k]}; extended to {new}")
                    grid[k], grown = new, True
        if not grown:
            break
    else:
        log.append(f"{what}: still on an edge after {rounds} extensions: {best}")
    return {m: {"config": {k: b[k] for k in grid}, "val": b[m], "grid": dict(grid)} for m, b in best.items()}


def run(names: tuple[str, ...], seeds: list[int], tune_seed: int, out: Path) -> tuple[pd.DataFrame, dict]:
    rows, chosen, log, done = [], {}, [], {}
    for name in names:
        study = Study.load(Path(__file__).parent / f"{name}.toml")
        s = split(study)
        f, w = folds(s), s["washout"]
        t0 = time.perf_counter()
        esn = search(lambda c, lams: esn_scores(c, lams, f["val"], w, tune_seed), GRID, log, f"{name} esn")
        ours = search(lambda c, lams: ours_scores(study, c, lams, f["val"], w, tune_seed), GRID, log,
                      f"{name} ours_r0")
        base = ours["nrmse_free"]["config"]
        lora = search(lambda c, lams: lora_scores(study, base, c, f["val"], s, tune_seed), LORA_GRID, log,
                      f"{name} ours_lora")
        chosen[name] = {"esn": esn, "ours_r0": ours, "ours_lora": {m: {**v, "config": {**base, **v["config"]}}
                                                                   for m, v in lora.items()}}
        print(f"{name}: tuned in {time.perf_counter() - t0:.0f} s")
        for method, by_metric in chosen[name].items():
            for m, ch in by_metric.items():
                cfg = ch["config"]
                print(f"  {method:10s} {m:10s} val {ch['val']:.3g}  {cfg}")
                for seed in seeds:
                    key = (method, seed, tuple(sorted(cfg.items())))
                    if key in done:
                        got = done[key]
                    elif method == "esn":
                        got = esn_scores(cfg, [cfg["ridge"]], f["test"], w, seed)[0]
                    elif method == "ours_r0":
                        got = ours_scores(study, cfg, [cfg["ridge"]], f["test"], w, seed)[0]
                    else:
                        got = lora_scores(study, cfg, cfg, f["test"], s, seed)[0]
                    done[key] = got
                    rows.append({"dataset": s["name"], "method": method, "metric": m, "seed": seed,
                                 "test": got[m], "val": ch["val"], **{k: cfg.get(k) for k in (*GRID, *LORA_GRID)}})
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s")
    for line in log:
        print(line)
    return pd.DataFrame(rows), {"chosen": chosen, "extensions": log}


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """mean +- sd over seeds per dataset, metric and method; and the ratio to the ESN's mean."""
    g = df.groupby(["dataset", "metric", "method"], sort=False)["test"].agg(["mean", "std", "count"]).reset_index()
    esn = g[g["method"] == "esn"].set_index(["dataset", "metric"])["mean"]
    g["vs_esn"] = [m / esn[(d, k)] for d, k, m in zip(g["dataset"], g["metric"], g["mean"])]
    return g


def markdown(df: pd.DataFrame, g: pd.DataFrame, seeds: list[int], tune_seed: int) -> str:
    lines = ["| dataset | metric | method | test NRMSE mean +- sd | n | / ESN | per seed |", "|---|---|---|---|---|---|---|"]
    for r in g.itertuples():
        per = ", ".join(f"{v:.3g}" for v in df[(df.dataset == r.dataset) & (df.metric == r.metric)
                                                & (df.method == r.method)].sort_values("seed")["test"])
        lines.append(f"| {r.dataset} | {r.metric} | {r.method} | {r.mean:.3g} +- {r.std:.2g} | {r.count} | "
                     f"{r.vs_esn:.2f} | {per} |")
    return (f"Test NRMSE over seeds {seeds} (sd over seeds: the spread of reservoir draws, fixed data); "
            f"hyper-parameters chosen on the validation windows with tuning seed {tune_seed}.\n\n"
            + "\n".join(lines) + "\n")


def main() -> None:
    from _common import parser, write_provenance

    p = parser(__doc__, out="docs/results/reservoir_esn")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="reported seeds (default: 0 1 2)")
    p.add_argument("--tune-seed", type=int, default=100, help="the seed of the reservoirs the search uses")
    p.add_argument("--studies", nargs="+", default=list(STUDIES), choices=STUDIES)
    args = p.parse_args()
    if args.tune_seed in args.seeds:
        p.error(f"--tune-seed {args.tune_seed} is a reported seed; pick another")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    df, info = run(tuple(args.studies), args.seeds, args.tune_seed, args.out)
    g = summary(df)
    md = markdown(df, g, args.seeds, args.tune_seed)
    print("\n" + md)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "esn_compare.csv", index=False)
    (args.out / "esn_compare.md").write_text(md)
    write_provenance(args.out, config={"grid": GRID, "lora_grid": LORA_GRID, "lora": LORA, "units": UNITS,
                                       "val_windows": VAL, "tune_seed": args.tune_seed, "studies": args.studies,
                                       "chosen": info["chosen"], "extensions": info["extensions"],
                                       "seconds": time.perf_counter() - t0},
                     seeds=args.seeds, metrics={f"{r.dataset}/{r.metric}/{r.method}": r.mean for r in g.itertuples()},
                     filename="esn_provenance.json", reservoirpy=reservoirpy_version())


def reservoirpy_version() -> str:
    import reservoirpy

    return reservoirpy.__version__


if __name__ == "__main__":
    main()
