"""Predict r* before training (reservoir_depth.predict): every predictor on every benchmark, at init.

Reads r* at each study's headline tolerance from its committed store (predict.targets, through
report.saturation), builds each study's model at init (first seed), runs each predictor on it
(seconds; the probe trains a copy at the grid's largest rank for 2 % of one run's steps), and
evaluates them leaving one benchmark out (predict.evaluate: one scale factor fit on the others).
Writes targets.csv, evaluation.csv (one row per benchmark and predictor), summary.csv, calibration.csv
and levels.csv (the gradient predictors at each tolerance level: their scale, leave-one-out), search.csv (the
adaptive search replayed on each stored curve from the best predictor's leave-one-out prediction, from
the grid's start, and the whole grid: runs needed and r* found), predict.md, predict.png (log-log,
predicted vs measured) and provenance.json.

    python experiments/predict_rank.py [--out docs/results/predict] [--only digits_mlp ...]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from reservoir_depth.predict import (LEVELS, DataSpectrum, GradientSpectrum, LayerTaskSpectrum,  # noqa: E402
                                     ProbeSpectrum, calibrate, evaluate, init_model, search_replay, study_of,
                                     targets)
from reservoir_depth.report import markdown, save_figure  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import parser, write_provenance  # noqa: E402

PROBE_FRACTION = 0.02  # of one run's optimiser steps
PROBE_RANK = 64  # the probe's rank (the grid's largest where that is smaller)


def predictors(study, d) -> dict:
    """name -> (estimator, rank of the model it reads: 0 for the model at init, else the probe rank)."""
    seq = d.X_train.ndim > 2 or bool(d.vocab_size)  # sequences / images: fewer rows per batch
    bs = 32 if seq else 256
    train = {"epochs": 20, "batch_size": 128, "lr": 1e-3, **study.train}
    steps = math.ceil(PROBE_FRACTION * train["epochs"] * math.ceil(len(d.X_train) / train["batch_size"]))
    out = {}
    for m in ("participation_ratio", "stable_rank", "k_0.9"):
        out[f"gradient ({m})"] = (GradientSpectrum(k=4, batch_size=bs, measure=m), 0)
        out[f"probe s B A ({m})"] = (ProbeSpectrum(steps=max(steps, 5), lr=train["lr"],
                                                   batch_size=train["batch_size"], measure=m),
                                    min(PROBE_RANK, max(study.ranks)))
        out[f"layer inputs, task ({m})"] = (LayerTaskSpectrum(n_rows=256 if seq else 1000, measure=m), 0)
        out[f"data, inputs PCA ({m})"] = (DataSpectrum("inputs", measure=m), 0)
        out[f"data, task ({m})"] = (DataSpectrum("task", measure=m), 0)
    return out


def measure(row: dict) -> list[dict]:
    study = study_of(Path("docs/results") / row["benchmark"])
    model, d = init_model(study)
    probe_model = None
    rows = []
    for name, (est, rank) in predictors(study, d).items():
        if rank:
            probe_model = probe_model or init_model(study, rank=rank)[0]
        try:
            est.fit(probe_model if rank else model, d)
            raw, seconds, per_layer = est.r_, est.seconds_, est.per_layer_
        except ValueError as e:
            raw, seconds, per_layer = math.nan, math.nan, {"error": str(e)}
        rows.append({**row, "predictor": name, "raw": raw, "seconds": seconds, "C": d.n_classes if d.task ==
                     "classification" else math.nan, "per_layer": per_layer})
        print(f"{row['benchmark']:32s} {name:38s} raw {raw:8.3g}  {seconds:6.2f} s", flush=True)
    return rows


def figure(ev: pd.DataFrame, path: Path, chosen: list[str]) -> None:
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 4), squeeze=False)
    for ax, name in zip(axes[0], chosen):
        g = ev[ev["predictor"] == name]
        fin = np.isfinite(g["r_star"])
        y = np.where(fin, np.maximum(g["r_star"], 1), g["max_rank"] * 1.5)
        ax.scatter(g["pred"][fin], y[fin], c="C0", label="r* (0 read as 1)")
        ax.scatter(g["pred"][~fin], y[~fin], c="C3", marker="^", label="r* > max rank (drawn at 1.5 max)")
        lim = [0.5, 128]
        ax.plot(lim, lim, "k-", lw=0.8)
        ax.fill_between(lim, [v / 2 for v in lim], [v * 2 for v in lim], color="0.9")
        ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel="predicted r* (leave one out)",
               ylabel="measured r*", title=name)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path, dpi=110)


def per_level(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The gradient predictors at each tolerance level: (calibration: one scale per measure and level, fit
    on every benchmark with a finite r* at that level, what predict.CALIBRATION holds; the leave-one-out
    summary of the gradient predictors and the constants at that level)."""
    grad = table[table["predictor"].str.startswith("gradient")].drop(columns=["per_layer"])
    cal, summaries = [], []
    for i, level in enumerate(LEVELS):
        t = targets(level=i).set_index("benchmark")
        g = grad[grad["benchmark"].isin(t.index)].copy()
        for col in ("r_star", "max_rank", "eps", "censored"):
            g[col] = t.loc[g["benchmark"], col].to_numpy()
        for name, gm in g.groupby("predictor"):
            cal.append({"measure": name[len("gradient ("):-1], "level": level, "scale": float(f"{calibrate(gm['raw'], gm['r_star']):.3g}"),
                        "finite r*": int(np.isfinite(gm["r_star"]).sum()), "benchmarks": len(gm)})
        summaries.append(evaluate(g)[1].assign(level=level))
    return pd.DataFrame(cal), pd.concat(summaries, ignore_index=True)


def main() -> None:
    p = parser(__doc__, out="docs/results/predict")
    p.add_argument("--only", nargs="*", help="benchmarks to measure (default: all with a store)")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tgt = targets()
    tgt.to_csv(out / "targets.csv", index=False)
    if args.only:
        tgt = tgt[tgt["benchmark"].isin(args.only)]
    table = pd.DataFrame([r for row in tgt.to_dict("records") for r in measure(row)])
    ev, summary = evaluate(table.drop(columns=["per_layer"]))
    ev.to_csv(out / "evaluation.csv", index=False)
    summary = summary.sort_values(["fraction within 2x", "rho"], ascending=False)
    summary.to_csv(out / "summary.csv", index=False)
    table[["benchmark", "predictor", "per_layer"]].to_json(out / "per_layer.json", orient="records", indent=1)
    calibration, levels = per_level(table)
    calibration.to_csv(out / "calibration.csv", index=False)
    levels.to_csv(out / "levels.csv", index=False)
    best = [n for n in summary["predictor"] if not n.startswith("constant")][:2]
    preds = ev[ev["predictor"] == best[0]].set_index("benchmark")["pred"]
    search = pd.DataFrame([search_replay(Path("docs/results") / b, float(preds[b]) if np.isfinite(preds[b]) else None)
                           for b in tgt["benchmark"]])
    search.to_csv(out / "search.csv", index=False)
    same = (search["r_star, from prediction"] == search["r_star"]).sum()
    figure(ev, out / "predict.png", best + ["constant: median r* of the others"])
    fmt = tgt.assign(r_star=[(("> %d" % m) + (" (full rank)" if m >= f else "")) if c else "%d" % r for r, m, f, c in
                             zip(tgt["r_star"], tgt["max_rank"], tgt["full_rank"], tgt["censored"])])
    text = ["# Predicting r* at init: leave one benchmark out", "",
            f"{len(tgt)} benchmarks, {int((~tgt['censored']).sum())} with a finite r* at the headline "
            f"tolerance; {summary['predictor'].nunique()} predictors (Bonferroni over all of them).", "",
            markdown(fmt[["benchmark", "arch", "metric", "eps", "tolerance", "r_star", "lo", "hi", "n_seeds",
                          "max_rank", "full_rank", "run_seconds"]]), "", markdown(summary), "",
            "![predicted vs measured](predict.png)", "",
            f"**The search started from a prediction.** The adaptive search (rank.adaptive_search over each study's "
            f"grid) replayed on the stored curves, started at {best[0]}'s leave-one-out prediction: "
            f"{int(search['runs, from prediction'].sum())} runs in all, against {int(search['runs, doubling'].sum())} "
            f"for the search from the grid's start and {int(search['runs, grid'].sum())} for the whole grid; it finds "
            f"the grid scan's r* on {same} of {len(search)} benchmarks (the search assumes saturation is monotone in r; "
            "where a curve is not, it may stop at another rank).", "",
            markdown(search.drop(columns=["grid"])), "",
            "**Per tolerance.** `reservoir-depth predict` prints r* at each of the metric's tolerances (tight, "
            "headline, loose: accuracy 0.5 / 1 / 2 pp absolute; losses, bpc, NRMSE 2 / 5 / 10 % relative), the "
            "gradient's max over layers times that level's scale (calibration.csv, fit on every benchmark with a "
            "finite r* at that level; predict.CALIBRATION holds the same numbers). Leave one out at each level "
            "(levels.csv):", "",
            markdown(levels[levels["predictor"].isin(["gradient (participation_ratio)", "constant: C - 1",
                                                      "constant: median r* of the others"])]
                     [["level", "predictor", "finite r*", "within 2x of finite r*", "fraction within 2x",
                       "censored hits", "rho", "p"]]),
            "", markdown(calibration)]
    (out / "predict.md").write_text("\n".join(text) + "\n")
    write_provenance(out, config={"probe_fraction": PROBE_FRACTION, "benchmarks": list(tgt["benchmark"])},
                     seeds=[0], metrics={"summary": summary.to_dict("records"), "search": search.to_dict("records")})
    print(markdown(summary))


if __name__ == "__main__":
    main()
