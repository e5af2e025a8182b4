"""Our reservoir as an echo-state network beside reservoirpy's, judged as reservoir computing (issue 29).

One protocol for both sides (reservoir_depth.esn.grid_search): every configuration is scored on validation
windows by the median over 3 reservoir draws (tuning seeds 100, 101, 102); ONE configuration per method and
series is selected, by closed-loop validation NRMSE (Lorenz, Mackey-Glass: 150 steps fed back after a
50-step teacher-forced washout) or one-step NRMSE (NARMA-10, a driven system with no closed loop); it is
then refitted on all training windows with 5 fresh draws (seeds 0-4) and the test split is read once per
draw, on every measure:

- one-step NRMSE and closed-loop NRMSE over the study's 9 test windows (the numbers of the earlier table);
- Lorenz: valid prediction time (VPT), in Lyapunov times (lambda_max = 0.906, dt = 0.02: 1 LT = 55.2 steps),
  of 10 closed-loop runs of 1000 steps after a 50-step warmup: the first step whose error normalised by the
  training std per coordinate exceeds 0.4 (esn.valid_prediction_time); median over the runs per draw;
- Mackey-Glass (tau = 17, sampled every 1): NRMSE_84 (Jaeger & Haas 2004) over 30 closed-loop runs of 84
  steps after a 50-step warmup (esn.horizon_nrmse);
- NARMA-10: one-step NRMSE.

Data: the reservoir studies' arrays (experiments/reservoir_{lorenz,mackey_glass}.toml; NARMA-10 with the same
split: 10,000 training steps in 49 windows of 200, washout 50): the last 10 training windows validate, the
first 39 fit. The long test runs continue the same trajectories past the 10,000 training steps (standardised
with the training part), so they hold no training step.

Methods (200 units, zero state per window, ridge readout with an unpenalised intercept, float64):
- esn: reservoirpy 0.4.2's Reservoir draws (W normal at rc_connectivity rescaled to spectral radius sr,
  W_in Bernoulli +-1 at input_connectivity times input scaling, bias Bernoulli +-1 times the bias
  scaling); the states and the ridge readout are computed by our code from its matrices, which
  tests/test_readout.py shows equal to reservoirpy's Reservoir and Ridge (states, and predictions at every
  lambda used here); checked again here on one window per series.
- ours_r0: our reservoir family at r = 0 (esn.reservoir: W_seed normal rescaled to rho, W_in normal fan-in,
  bias uniform) with the ridge readout (readout.py).
- ours_lora (Mackey-Glass; --lora-series adds Lorenz, about 5 more minutes): LoRA (r = 4, alpha 16) on W_in
  and W from ours_r0's selected configuration, trained by AdamW on
  the teacher-forced MSE with the ridge readout re-solved after every epoch; the learning rate and the
  number of epochs (early stopping, epoch 0 = ours_r0 included) chosen on the same validation metric by the
  median over the 3 tuning draws; a learning rate on the grid's edge extends the grid (at most twice).

Grids (sizes in the provenance): shared knobs esn.GRID less bias 0.3 (rho {0.6, 0.9, 1.2}, leak {0.1, 0.3, 1},
input scaling {0.1, 0.3, 1}, bias scaling {0, 1}: 54 points) x lambda esn.RIDGES {1e-8, 1e-6, 1e-4, 1e-2}; the
esn also over its input and recurrent connectivity together, {0.1 (its default), 1 (dense, as ours)} (108
points). A lambda whose ridge system has
condition number > readout.COND_MAX on a draw is not eligible. A choice on an edge of an axis (not at a bound:
leak 1, bias 0, connectivity 1) adds one step beyond it, scored from the chosen point with the other knobs fixed,
up to 3 times (both methods alike; every added point is in esn_search.csv). Also measured: memory capacity (Jaeger 2001)
of our reservoir against the spectral radius, and of the Mackey-Glass test models, r = 0 against LoRA.

    python experiments/reservoir_esn_compare.py [--out docs/results/reservoir_esn]

Writes esn_compare.csv (per series, method and draw: every measure and the selected configuration),
esn_search.csv (every validation row of every search), esn_lora.csv (validation curves), esn_memory.csv,
esn_compare.md and esn_provenance.json to --out.
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from reservoir_depth import esn
from reservoir_depth.data.series import forecasting, narma10
from reservoir_depth.models import build, scaffold_defaults
from reservoir_depth.models.reservoir import Reservoir
from reservoir_depth.readout import Gram
from reservoir_depth.scaffold import ScaffoldConfig, scaffold
from reservoir_depth.study import Study
from reservoir_depth.train import TrainConfig, train

UNITS, WASHOUT, VAL_WINDOWS = 200, 50, 10
TUNE_SEEDS, TEST_SEEDS = (100, 101, 102), (0, 1, 2, 3, 4)
GRID = {**esn.GRID, "bias_scaling": [0.0, 1.0]}
# reservoirpy's connectivity: its default (0.1: W_in and W 10 % dense) or matched to ours (1: dense), both axes at once
PEER_GRID = {**GRID, "connectivity": [0.1, 1.0]}
LYAPUNOV, DT, VPT_THRESHOLD = 0.906, 0.02, 0.4  # Lorenz's largest Lyapunov exponent; the study's step
LONG = {"lorenz": (1000, 10), "mackey-glass": (84, 30)}  # closed-loop horizon, number of runs
LORA = {"r": 4, "alpha": 16.0, "lrs": [3e-4, 1e-3, 3e-3], "max_epochs": 10, "batch_size": 8, "extensions": 2}
SERIES = ("mackey-glass", "lorenz", "narma10")
EXTEND = 3  # a choice on a grid's edge extends that knob by one step from the choice, up to 3 times (esn.grid_search)
PUBLISHED = {  # only figures we are sure of; the protocols differ (units, training length, sampling)
    "mackey-glass": "NRMSE_84 = 10^-4.2 (6.3e-5): Jaeger & Haas 2004, Science 304:78, 1000 units",
    "lorenz": "none quoted (VPT thresholds and step sizes differ between papers)",
    "narma10": "none quoted",
}


def series(name: str) -> dict[str, Any]:
    """Training / validation / test windows (float64) of one series, and the long closed-loop runs."""
    if name == "narma10":
        d = narma10(window=200, washout=WASHOUT, n_train=10_000, n_test=2_000, seed=0)
        kw = {}
    else:
        study = Study.load(Path(__file__).parent / f"reservoir_{name.replace('-', '_')}.toml")
        d = study.runs()[0].data()
        kw = {k: v for k, v in study.dataset.items() if k in ("dt", "tau")}
    X, y = d.X_train.double(), d.y_train.double()
    n = len(X) - VAL_WINDOWS
    s = {"name": name, "fit": (X[:n], y[:n]), "val": (X[n:], y[n:]), "train": (X, y),
         "test": (d.X_test.double(), d.y_test.double()), "data": d, "select": "nrmse" if name == "narma10"
         else "nrmse_free"}
    if name in LONG:
        horizon, runs = LONG[name]
        long = forecasting(name, window=WASHOUT + horizon, washout=WASHOUT, n_train=10_000,
                           n_test=(WASHOUT + horizon) * runs, seed=0, **kw)
        k = min(long.X_test.shape[1], d.X_test.shape[1])
        assert torch.equal(long.X_test[0, :k], d.X_test[0, :k]), "the long runs must continue the study's trajectory"
        s["long"] = (long.X_test.double(), long.y_test.double(), horizon)
    return s


# ----------------------------------------------------------------------------- the two reservoirs


def peer(cfg: dict[str, float], seed: int, d_in: int, n_out: int) -> Reservoir:
    """reservoirpy's Reservoir of ``cfg`` drawn from ``seed``, its W, W_in and bias placed in our module."""
    from reservoirpy.mat_gen import bernoulli
    from reservoirpy.nodes import Reservoir as RpyReservoir

    res = RpyReservoir(units=UNITS, lr=cfg["leak"], sr=cfg["rho"], input_scaling=cfg["input_scaling"],
                       input_connectivity=cfg["connectivity"], rc_connectivity=cfg["connectivity"],
                       bias=partial(bernoulli, input_scaling=cfg["bias_scaling"]) if cfg["bias_scaling"] else 0.0,
                       seed=seed)
    res.initialize(np.zeros((1, d_in)))
    dense = lambda a: np.asarray(a.toarray() if hasattr(a, "toarray") else a, dtype=np.float64)
    m = Reservoir(d_in, n_out, units=UNITS, leak=cfg["leak"], rho=cfg["rho"]).double()
    with torch.no_grad():
        m.W.weight.copy_(torch.from_numpy(dense(res.W)))
        m.W_in.weight.copy_(torch.from_numpy(dense(res.Win)))
        m.W_in.bias.copy_(torch.from_numpy(np.broadcast_to(dense(res.bias), (UNITS,)).copy()))
    m.rpy = res
    return m


def check_peer(s: dict[str, Any]) -> float:
    """The largest |state difference| between reservoirpy's own run and our module holding its draws."""
    X = s["val"][0][0].numpy()
    cfg = {"rho": 0.9, "leak": 0.3, "input_scaling": 0.3, "bias_scaling": 1.0, "connectivity": 0.1}
    m = peer(cfg, 0, X.shape[-1], s["val"][1].shape[-1])
    gap = float(np.abs(m.states(torch.from_numpy(X)[None])[0].detach().numpy() - m.rpy.run(X)).max())
    assert gap < 1e-10, f"{s['name']}: our module with reservoirpy's draws departs from reservoirpy by {gap:g}"
    return gap


def model_of(method: str, cfg: dict[str, float], seed: int, d_in: int, n_out: int) -> torch.nn.Module:
    if method == "esn":
        return peer(cfg, seed, d_in, n_out)
    knobs = {k: cfg[k] for k in esn.KNOBS}
    return esn.reservoir(d_in, n_out, UNITS, seed=seed, **knobs)


def scorer(method: str, s: dict[str, Any]):
    (Xf, yf), (Xv, yv) = s["fit"], s["val"]
    free = s["select"] == "nrmse_free"
    return lambda cfg, seed, lams: esn.ridge_scores(model_of(method, cfg, seed, Xf.shape[-1], yf.shape[-1]),
                                                    Xf, yf, Xv, yv, WASHOUT, lams, free)


# ----------------------------------------------------------------------------- test measures


@torch.no_grad()
def measures(m: torch.nn.Module, s: dict[str, Any]) -> dict[str, float]:
    """Test measures of a fitted reservoir (its readout solved): one-step and closed-loop NRMSE on the study's
    test windows, VPT (Lorenz) or NRMSE_84 (Mackey-Glass) on the long runs."""
    from reservoir_depth.train import evaluate, generate

    X, y = s["test"]
    free = s["select"] == "nrmse_free"
    ev = evaluate(m, X, y, task="forecasting", washout=WASHOUT, free=free)
    out = {"nrmse": ev["nrmse"], "nrmse_free": ev.get("nrmse_free", math.nan), "cond": math.nan}
    if "long" in s:
        XL, yL, horizon = s["long"]
        pred = generate(m, XL[:, :WASHOUT], horizon)
        target = yL[:, WASHOUT - 1:WASHOUT - 1 + horizon]
        pred = torch.where(torch.isfinite(pred), pred, torch.full_like(pred, 1e6))  # a diverged run is wrong
        if s["name"] == "lorenz":
            out["vpt"] = float(np.median(esn.valid_prediction_time(pred, target, 1.0, DT, LYAPUNOV, VPT_THRESHOLD)))
        else:
            out["nrmse84"] = esn.horizon_nrmse(pred, target, 1.0, horizon)
    return out


def fit_ridge(m: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, lam: float) -> float:
    """Solve m's readout on (X, y) after the washout; the ridge system's condition number."""
    with torch.no_grad():
        gram = Gram().add(m.states(X)[:, WASHOUT:], y[:, WASHOUT:])
        W, c = gram.solve(lam)
        m.readout.weight.copy_(W), m.readout.bias.copy_(c)
    return gram.condition(lam)


# ----------------------------------------------------------------------------- LoRA at convergence


def lora_model(cfg: dict[str, float], seed: int, d_in: int, n_out: int) -> torch.nn.Module:
    """ours_r0's reservoir (same W_seed for the same seed) scaffolded with LoRA of rank r on W_in and W."""
    knobs = {k: cfg[k] for k in esn.KNOBS}
    model = build("reservoir", seed=seed, d_in=d_in, n_out=n_out, units=UNITS, **{
        "rho": knobs["rho"], "leak": knobs["leak"], "input_scaling": knobs["input_scaling"],
        "bias_scaling": knobs["bias_scaling"]})
    return scaffold(model, ScaffoldConfig(**scaffold_defaults(model), r=LORA["r"], alpha=LORA["alpha"],
                                          root_seed=seed)).double()


def lora_train(cfg: dict[str, float], lr: float, epochs: int, seed: int, s: dict[str, Any], split: str):
    """LoRA + ridge readout trained on the fit windows (``split`` "val": scored on validation every epoch) or on
    all training windows (``split`` "test": the test split is read afterwards, by ``measures``); returns
    (model, per-epoch rows)."""
    (Xf, yf), (Xe, ye) = (s["fit"], s["val"]) if split == "val" else (s["train"], s["val"])  # test: read once, later
    data = dataclasses.replace(s["data"], X_train=Xf, y_train=yf, X_test=Xe, y_test=ye)
    m = lora_model(cfg, seed, Xf.shape[-1], yf.shape[-1])
    hist = train(m, data, TrainConfig(epochs=epochs, lr=lr, batch_size=LORA["batch_size"], seed=seed,
                                      readout="ridge", ridge=cfg["ridge"], dtype="float64", progress=False,
                                      free_run=s["select"] == "nrmse_free"))
    return m, hist.epochs


def lora_search(cfg: dict[str, float], s: dict[str, Any], log: list[str]) -> tuple[dict[str, float], list[dict]]:
    """(lr, epochs) with the smallest median validation metric over the tuning draws; epoch 0 is r = 0."""
    metric, lrs, rows = f"test_{s['select']}", list(LORA["lrs"]), []
    done: set[float] = set()
    for _ in range(LORA["extensions"] + 1):
        for lr in lrs:
            if lr in done:
                continue
            for seed in TUNE_SEEDS:
                try:
                    _, hist = lora_train(cfg, lr, LORA["max_epochs"], seed, s, "val")
                except FloatingPointError as e:  # a diverged run scores inf from where it broke
                    hist = [{"epoch": 0, metric: math.inf}]
                    log.append(f"{s['name']} lora lr {lr:g} seed {seed}: {e}")
                rows += [{"lr": lr, "seed": seed, "epoch": h["epoch"],
                          "val": h[metric] if math.isfinite(h[metric]) else math.inf} for h in hist]
            done.add(lr)
        curve = pd.DataFrame(rows).groupby(["lr", "epoch"])["val"].median().reset_index()
        best = curve.loc[curve["val"].idxmin()]
        i = lrs.index(best["lr"])
        if best["epoch"] > 0 and i in (0, len(lrs) - 1):
            new = lrs[0] ** 2 / lrs[1] if i == 0 else lrs[-1] ** 2 / lrs[-2]
            log.append(f"{s['name']} lora: lr {best['lr']:g} on the grid's edge {lrs}; adding {new:g}")
            lrs = sorted({*lrs, new})
            continue
        break
    else:
        log.append(f"{s['name']} lora: lr still on the grid's edge after {LORA['extensions']} extensions")
    if best["epoch"] == LORA["max_epochs"]:
        log.append(f"{s['name']} lora: validation still improving at the last epoch ({LORA['max_epochs']})")
    return {"lr": float(best["lr"]), "epochs": int(best["epoch"]), "val": float(best["val"]), "lrs": lrs}, rows


# ----------------------------------------------------------------------------- memory capacity


def memory(models: dict[str, list[torch.nn.Module]]) -> pd.DataFrame:
    """MC of our reservoir against rho, and of the Mackey-Glass test models (r = 0, LoRA)."""
    rows = []
    for rho in (0.3, 0.6, 0.9, 1.2, 1.5):
        for seed in TEST_SEEDS[:3]:
            r = esn.reservoir(1, 1, UNITS, rho=rho, leak=1.0, input_scaling=0.1, bias_scaling=0.0, seed=seed)
            rows.append({"what": "rho sweep (leak 1, input scaling 0.1, no bias)", "rho": rho, "seed": seed,
                         "mc": esn.memory_capacity(r, n_steps=3000, k_max=300, seed=seed).total})
    for method, ms in models.items():
        for seed, m in zip(TEST_SEEDS, ms):
            rows.append({"what": f"mackey-glass test model: {method}", "rho": m.rho, "seed": seed,
                         "mc": esn.memory_capacity(m, n_steps=3000, k_max=300, seed=seed).total})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the run


def run(names: list[str], lora_series: list[str], out: Path | None = None
        ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    rows, searches, lora_rows, info, log = [], [], [], {"chosen": {}, "peer_check": {}}, []
    mg_models: dict[str, list] = {}
    for name in names:
        t0 = time.perf_counter()
        s = series(name)
        info["peer_check"][name] = check_peer(s)
        chosen = {}
        for method, grid in (("esn", PEER_GRID), ("ours_r0", GRID)):
            found = esn.grid_search(scorer(method, s), grid, esn.RIDGES, TUNE_SEEDS, s["select"], extend=EXTEND)
            searches.append(found.table.assign(series=name, method=method))
            chosen[method] = {**found.best, "val": found.score, "edges": found.edges}
            print(f"{name} {method}: {found.best} val {s['select']} {chosen[method]['val']:.3g} edges {found.edges} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if name in lora_series:
            lora, curves = lora_search(chosen["ours_r0"], s, log)
            lora_rows += [{**r, "series": name} for r in curves]
            chosen["ours_lora"] = {**chosen["ours_r0"], **lora}
            print(f"{name} ours_lora: {lora} ({time.perf_counter() - t0:.0f} s)", flush=True)
        info["chosen"][name] = chosen
        for method, cfg in chosen.items():
            for seed in TEST_SEEDS:
                X, y = s["train"]
                if method == "ours_lora":
                    m, _ = lora_train(cfg, cfg["lr"], cfg["epochs"], seed, s, "test")
                    got = {**measures(m, s), "cond": math.nan}
                else:
                    m = model_of(method, cfg, seed, X.shape[-1], y.shape[-1])
                    cond = fit_ridge(m, X, y, cfg["ridge"])
                    got = {**measures(m, s), "cond": cond}
                if name == "mackey-glass" and method != "esn":
                    mg_models.setdefault(method, []).append(m)
                rows.append({"series": name, "method": method, "seed": seed, "selected_by": f"val {s['select']}",
                             **got, **{k: v for k, v in cfg.items() if k not in ("edges", "lrs")}})
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
        if out is not None:  # what is finished survives an interrupted run
            out.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(out / "esn_compare.partial.csv", index=False)
    mem = memory(mg_models) if mg_models else pd.DataFrame()
    info["log"] = log
    for line in log:
        print(line)
    return pd.DataFrame(rows), pd.concat(searches), pd.DataFrame(lora_rows), mem, info


MEASURES = {"nrmse": "one-step NRMSE", "nrmse_free": "closed-loop NRMSE (150 steps)", "vpt": "VPT (Lyapunov times)",
            "nrmse84": "NRMSE_84"}


def markdown(df: pd.DataFrame, mem: pd.DataFrame, info: dict) -> str:
    fmt = lambda v: f"{v:.3g}"
    lines = [f"Test measures over {len(TEST_SEEDS)} fresh reservoir draws (seeds {list(TEST_SEEDS)}): median "
             f"[min, max] over the draws; one configuration per method and series, selected on validation by the "
             f"median over 3 tuning draws {list(TUNE_SEEDS)} (metric in 'selected by').", ""]
    for name, g in df.groupby("series", sort=False):
        cols = [k for k in MEASURES if k in g and g[k].notna().any()]
        lines += [f"### {name}", "", "| method | selected by | " + " | ".join(MEASURES[k] for k in cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for method, h in g.groupby("method", sort=False):
            cells = [f"{fmt(h[k].median())} [{fmt(h[k].min())}, {fmt(h[k].max())}]" for k in cols]
            lines.append(f"| {method} | {h['selected_by'].iloc[0]} | " + " | ".join(cells) + " |")
        lines += ["", f"Published echo-state figure: {PUBLISHED[name]}.", ""]
        for method, cfg in info["chosen"][name].items():
            shown = {k: v for k, v in cfg.items() if k not in ("lrs",)}
            lines.append(f"- {method}: {shown}")
        lines.append("")
    if not mem.empty:
        lines += ["### memory capacity (Jaeger 2001; 200 units, delays 0-299, MC <= 200)", "",
                  "| reservoir | rho | MC median [min, max] over draws |", "|---|---|---|"]
        for (what, rho), h in mem.groupby(["what", "rho"], sort=False):
            lines.append(f"| {what} | {rho:g} | {fmt(h['mc'].median())} [{fmt(h['mc'].min())}, {fmt(h['mc'].max())}] |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from _common import parser, write_provenance

    p = parser(__doc__, out="docs/results/reservoir_esn")
    p.add_argument("--series", nargs="+", default=list(SERIES), choices=SERIES)
    p.add_argument("--lora-series", nargs="*", default=["mackey-glass"], choices=SERIES[:2],
                   help="series on which LoRA is tuned and tested (default: mackey-glass; each adds about 5 min)")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    df, search_rows, lora_rows, mem, info = run(args.series, args.lora_series, args.out)
    (args.out / "esn_compare.partial.csv").unlink(missing_ok=True)
    md = markdown(df, mem, info)
    print("\n" + md)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "esn_compare.csv", index=False)
    search_rows.to_csv(args.out / "esn_search.csv", index=False)
    lora_rows.to_csv(args.out / "esn_lora.csv", index=False)
    mem.to_csv(args.out / "esn_memory.csv", index=False)
    (args.out / "esn_compare.md").write_text(md)
    summary = {}
    for (name, method), h in df.groupby(["series", "method"]):
        summary.update({f"{name}/{method}/{k}": float(h[k].median()) for k in MEASURES
                        if k in h and h[k].notna().any()})
    grids = {"ours_r0": GRID, "esn": PEER_GRID, "ridges": list(esn.RIDGES), "lora": LORA,
             "points": {"ours_r0": math.prod(map(len, GRID.values())),
                        "esn": math.prod(map(len, PEER_GRID.values()))}}
    write_provenance(args.out, config={"grids": grids, "units": UNITS, "washout": WASHOUT, "val_windows": VAL_WINDOWS,
                                       "tune_seeds": TUNE_SEEDS, "long": LONG, "lyapunov": LYAPUNOV, "dt": DT,
                                       "vpt_threshold": VPT_THRESHOLD, "series": args.series,
                                       "lora_series": args.lora_series, **info,
                                       "seconds": time.perf_counter() - t0},
                     seeds=list(TEST_SEEDS), metrics=summary, filename="esn_provenance.json",
                     reservoirpy=reservoirpy_version())


def reservoirpy_version() -> str:
    import reservoirpy

    return reservoirpy.__version__


if __name__ == "__main__":
    main()
