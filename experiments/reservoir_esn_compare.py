"""A classic echo-state network (reservoirpy: sparse random reservoir, ridge readout) beside our
reservoir study, on exactly the same series, split, washout and horizon.

The data are the study's own (``Run.data()`` of its runs: the same Dataset object the sweep trains
on): training windows X_train -> y_train, test windows X_test -> y_test, the first ``washout``
steps of every window excluded. The ESN has the study's units, leak and spectral radius
(reservoirpy's Reservoir(units, lr=leak, sr=rho)), a zero state at the start of every window,
and a ridge readout fitted on the states of steps t >= washout of every training window.

NRMSE is the trainer's (train.Forecasting): sqrt(MSE) / std(y) over every test window, step
t >= washout and output dimension. One-step: the ESN reads the true x_t. Free-running (as
train.free_run): the first ``washout`` steps read the true x_t, every later step its own previous
prediction, for the remaining window - washout steps (the horizon).

    python experiments/reservoir_esn_compare.py experiments/reservoir_mackey_glass.toml \
        [--results docs/results/reservoir_mackey_glass] [--out DIR] [--ridge 1e-6]

Prints the ESN's NRMSE per seed and its mean, and ours read from the study's results store
(``reservoir-depth run STUDY --out RESULTS``) per method and rank; writes esn_compare.csv and
esn_provenance.json to --out (default: --results). reservoirpy is a benchmark dependency only
(`pip install reservoirpy`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from reservoir_depth.results import Columns
from reservoir_depth.study import Study
from reservoir_depth.train import target_std

DEFAULT_RIDGE = 1e-6
SPLITS = ("X_train", "y_train", "X_test", "y_test")


def split(study: Study) -> dict[str, Any]:
    """The study's forecasting data as numpy arrays: X_train, y_train, X_test, y_test (n, T, d) and
    washout, read from ``Run.data()`` (every run of a study shares one data set; refused otherwise)."""
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
    return {**{k: getattr(d, k).double().numpy() for k in SPLITS}, "washout": int(d.washout), "name": d.name}


def nrmse(pred: np.ndarray, y: np.ndarray, washout: int) -> float:
    """sqrt(MSE) / std(y) over windows, steps t >= washout and outputs (train.Forecasting's NRMSE)."""
    mse = float(((pred[:, washout:] - y[:, washout:]) ** 2).mean())
    return math.sqrt(mse) / target_std(torch.from_numpy(np.ascontiguousarray(y)), washout)


def esn(arch: dict[str, Any], d_in: int, seed: int):
    """A reservoirpy Reservoir with the study's units, leak (lr) and spectral radius (sr)."""
    from reservoirpy.nodes import Reservoir

    return Reservoir(units=int(arch.get("units", 200)), lr=float(arch.get("leak", 0.3)),
                     sr=float(arch.get("rho", 0.9)), input_dim=d_in, seed=seed)


def reset(res) -> None:
    """A zero state (a node not yet initialised starts from zeros)."""
    if res.initialized:
        res.reset()


def states(res, X: np.ndarray) -> np.ndarray:
    """Reservoir states (n, T, units), each window from a zero state."""
    out = []
    for w in X:
        reset(res)
        out.append(res.run(w))
    return np.stack(out)


def esn_run(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, washout: int,
            arch: dict[str, Any], seed: int, ridge: float = DEFAULT_RIDGE) -> dict[str, float]:
    """Fit one ESN (reservoir from ``seed``, ridge readout) and return its test NRMSE, one-step and free-running."""
    from reservoirpy.nodes import Ridge

    d_in = X_train.shape[-1]
    res = esn(arch, d_in, seed)
    H = states(res, X_train)[:, washout:]
    readout = Ridge(ridge=ridge)
    readout.fit(H.reshape(-1, H.shape[-1]), y_train[:, washout:].reshape(-1, y_train.shape[-1]))
    Wout, b = np.asarray(readout.Wout), np.asarray(readout.bias).reshape(-1)
    read = lambda h: h @ Wout + b
    one_step = read(states(res, X_test))
    free = np.empty_like(y_test)
    for i, w in enumerate(X_test):  # train.free_run: teacher-force t < max(washout, 1), then feed back
        reset(res)
        prev = None
        for t in range(w.shape[0]):
            x_t = w[t] if t < max(washout, 1) else prev
            prev = read(res.step(x_t))
            free[i, t] = prev
    return {"esn_nrmse": nrmse(one_step, y_test, washout), "esn_nrmse_free": nrmse(free, y_test, washout)}


def esn_table(study: Study, ridge: float = DEFAULT_RIDGE) -> pd.DataFrame:
    """The ESN's NRMSE for each of the study's seeds (the seed draws the reservoir)."""
    s = split(study)
    rows = [{"seed": seed, **esn_run(s["X_train"], s["y_train"], s["X_test"], s["y_test"], s["washout"],
                                     dict(study.arch), seed, ridge)} for seed in study.seeds]
    return pd.DataFrame(rows)


def ours(study: Study, results: Path) -> pd.DataFrame:
    """Our NRMSE by method and rank (mean, std, n over seeds) from the study's results store."""
    from reservoir_depth.results import ResultsStore

    df = study.frame(ResultsStore(results / "runs.sqlite"))
    if not len(df):
        return pd.DataFrame()
    df = df.assign(rank=df[Columns.RANK] if Columns.RANK in df else np.nan)
    g = df.groupby([Columns.METHOD, "rank"], dropna=False)[["test_nrmse", "test_nrmse_free"]]
    out = g.agg(["mean", "std", "count"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    return out.reset_index().rename(columns={Columns.METHOD: "method"})


def main() -> None:
    from _common import parser, write_provenance

    p = parser(__doc__, out="")
    p.add_argument("study", type=Path, help="a forecasting study TOML (experiments/reservoir_*.toml)")
    p.add_argument("--results", type=Path, default=None,
                   help="the study's output folder holding runs.sqlite (default: docs/results/<study>)")
    p.add_argument("--ridge", type=float, default=DEFAULT_RIDGE, help=f"ridge penalty (default {DEFAULT_RIDGE})")
    args = p.parse_args()
    study = Study.load(args.study)
    results = args.results or Path("docs/results") / study.study
    out = Path(str(args.out)) if str(args.out) not in ("", ".") else results
    s = split(study)
    T = s["X_test"].shape[1]
    print(f"{study.study}: {s['name']}, {len(s['X_train'])} training and {len(s['X_test'])} test windows of {T} "
          f"steps, washout {s['washout']}, free-running horizon {T - s['washout']} steps")
    esn_df = esn_table(study, args.ridge)
    print(f"\nreservoirpy ESN (units {study.arch.get('units', 200)}, leak {study.arch.get('leak', 0.3)}, "
          f"rho {study.arch.get('rho', 0.9)}, ridge {args.ridge:g}):")
    print(esn_df.to_string(index=False, float_format="%.4f"))
    mean = esn_df[["esn_nrmse", "esn_nrmse_free"]].agg(["mean", "std"])
    print(mean.to_string(float_format="%.4f"))
    if (results / "runs.sqlite").exists():
        ours_df = ours(study, results)
        print(f"\nours ({results / 'runs.sqlite'}):")
        print(ours_df.to_string(index=False, float_format="%.4f") if len(ours_df) else "  no finished runs yet")
    else:
        ours_df = pd.DataFrame()
        print(f"\nours: no results store at {results / 'runs.sqlite'}; run "
              f"`reservoir-depth run {args.study} --out {results}` first")
    out.mkdir(parents=True, exist_ok=True)
    esn_df.assign(method="esn_ridge").to_csv(out / "esn_compare.csv", index=False)
    if len(ours_df):
        ours_df.to_csv(out / "esn_compare_ours.csv", index=False)
    write_provenance(out, config={"study": study.to_dict(), "ridge": args.ridge, "esn": "reservoirpy.nodes.Reservoir"
                                  " + Ridge"}, seeds=study.seeds,
                     metrics={k: float(v) for k, v in mean.loc["mean"].items()}, filename="esn_provenance.json",
                     reservoirpy=reservoirpy_version())


def reservoirpy_version() -> str:
    import reservoirpy

    return reservoirpy.__version__


if __name__ == "__main__":
    main()
