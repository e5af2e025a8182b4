"""The no-scaffold control run to convergence, beside the static scaffold (issue 18, item 4).

The stored no-scaffold figures (W_seed = 0) were read at the scaffolded model's step budget. Here every
variant trains for a long budget with the same optimiser, and the report gives test accuracy against
optimiser steps side by side, the train loss's relative fall over the last fifth of the run (a plateau
is a fall below PLATEAU), and the dead units (spectra.DeadUnits: <= 0 on every training input, so
silent under ReLU) at init and at the end. Variants, at r = 8, root seeds SEEDS:

- static: the study's scaffold (N(0, 1/fan_in));
- no scaffold: W_seed = 0, B = 0 (LoRA's init): units whose seeded bias is negative start dead;
- no scaffold, random B: W_seed = 0, B seeded like A (ScaffoldConfig(init_B="kaiming")).

Benchmarks: digits (small MLP, the README's main job, 300 epochs: 10x its study) and Fashion-MNIST
(medium MLP on 20,000 images, the profile of the destabilised / no-scaffold studies, 60 epochs: 6x).

    python experiments/budget_fair_controls.py --out docs/results/budget_fair_controls --workers 2

Writes curves.csv (every epoch of every run), controls.csv / controls.md, accuracy.png, provenance.json;
runs are cached in runs.jsonl.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch

from _common import parser, write_provenance
from reservoir_depth.spectra import DeadUnits
from reservoir_depth.study import Study
from reservoir_depth.run import Run
from reservoir_depth.sweep import build_model
from reservoir_depth.train import TrainConfig, train

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent
BENCHMARKS = {"digits_mlp": ("digits_mlp.toml", 300), "fashion_mnist_mlp_width_medium": (
    "fashion_mnist_mlp_width_medium.toml", 60)}
VARIANTS = {"static": {}, "no scaffold": {"spec": {"name": "zeros"}},
            "no scaffold, random B": {"spec": {"name": "zeros"}, "init_B": "kaiming"}}
R = 8
SEEDS = {"digits_mlp": (0, 1, 2), "fashion_mnist_mlp_width_medium": (0, 1)}
PLATEAU = 0.05
DEAD_ROWS = 2048


def run_of(bench: str, variant: str, seed: int) -> Run:
    study = Study.load(ROOT / BENCHMARKS[bench][0])
    return Run(study=study.study, dataset=study.dataset, arch=study.arch, method="lotta", seed=seed,
               train={**study.train, "epochs": BENCHMARKS[bench][1]},
               scaffold={**study.scaffold, "r": R, **VARIANTS[variant]})


def execute(job: str) -> tuple[str, dict]:
    bench, variant, seed = json.loads(job)
    torch.set_num_threads(1)
    run = run_of(bench, variant, seed)
    d = run.data()
    model = build_model(run, d)
    X = d.X_train[:DEAD_ROWS]
    dead0 = DeadUnits().fit(model, X).fraction_
    hist = train(model, d, TrainConfig(**{**run.train, "seed": seed, "progress": False}))
    dead1 = DeadUnits().fit(model, X).fraction_
    steps_per_epoch = -(-len(d.X_train) // run.train.get("batch_size", 128))
    curve = [{"epoch": e["epoch"], "step": e["epoch"] * steps_per_epoch, "test_acc": e["test_acc"],
              "train_loss": e["train_loss"]} for e in hist.epochs]
    return job, {"curve": curve, "dead_init": dead0, "dead_end": dead1, "trainable": hist.trainable}


def main() -> None:
    args = parser(__doc__, out="docs/results/budget_fair_controls", workers=True).parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache_path = args.out / "runs.jsonl"
    done = dict(json.loads(line) for line in cache_path.read_text().splitlines()) if cache_path.exists() else {}
    jobs = [json.dumps([b, v, s]) for b in BENCHMARKS for v in VARIANTS for s in SEEDS[b]]
    todo = [j for j in jobs if j not in done]
    if todo:
        with ProcessPoolExecutor(args.workers) as pool, cache_path.open("a") as f:
            for i, (k, v) in enumerate(pool.map(execute, todo)):
                done[k] = v
                f.write(json.dumps([k, v]) + "\n")
                f.flush()
                print(f"{i + 1}/{len(todo)} {k}: {v['curve'][-1]['test_acc']:.4f}", flush=True)
    rows, summary = [], []
    for j in jobs:
        b, v, s = json.loads(j)
        rows += [{"benchmark": b, "variant": v, "seed": s, **c} for c in done[j]["curve"]]
    curves = pd.DataFrame(rows)
    curves.to_csv(args.out / "curves.csv", index=False)
    for (b, v), g in curves.groupby(["benchmark", "variant"], sort=False):
        E = BENCHMARKS[b][1]
        study_epochs = Study.load(ROOT / BENCHMARKS[b][0]).train.get("epochs")
        at = lambda e: g[g.epoch == e].test_acc
        last = g[g.epoch == E].train_loss.to_numpy()
        before = g[g.epoch == int(0.8 * E)].train_loss.to_numpy()
        fall = float(np.max((before - last) / before))
        runs = [done[json.dumps([b, v, s])] for s in SEEDS[b]]
        summary.append({"benchmark": b, "variant": v, "seeds": len(SEEDS[b]), "epochs": E,
                        "study_epochs": study_epochs, "acc_at_study_budget": at(study_epochs).mean(),
                        "sd_at_study_budget": at(study_epochs).std(ddof=1), "acc_final": at(E).mean(),
                        "sd_final": at(E).std(ddof=1), "train_loss_fall_last_fifth": fall,
                        "plateau": fall < PLATEAU,
                        "dead_init": np.mean([np.mean(list(r["dead_init"].values())) for r in runs]),
                        "dead_end": np.mean([np.mean(list(r["dead_end"].values())) for r in runs])})
    df = pd.DataFrame(summary)
    df.to_csv(args.out / "controls.csv", index=False)
    lines = ["# The no-scaffold control run to convergence", "",
             f"r = {R}; accuracy in %, mean +- sd over seeds (unpaired sd; the variants share seeds). 'fall' is the "
             f"largest relative fall of the train loss over the last fifth of the run among the seeds (plateau: "
             f"< {PLATEAU:g}). Dead units: mean over layers of the fraction <= 0 on {DEAD_ROWS} training inputs.", "",
             "| benchmark | variant | seeds | acc at the study's epochs | acc at the end (epochs) | fall, last fifth | "
             "plateau | dead at init | dead at end |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        lines.append(f"| {r.benchmark} | {r.variant} | {r.seeds} | {100 * r.acc_at_study_budget:.2f} +- "
                     f"{100 * r.sd_at_study_budget:.2f} ({r.study_epochs}) | {100 * r.acc_final:.2f} +- "
                     f"{100 * r.sd_final:.2f} ({r.epochs}) | {r.train_loss_fall_last_fifth:.3f} | "
                     f"{'yes' if r.plateau else 'no'} | {r.dead_init:.2f} | {r.dead_end:.2f} |")
    (args.out / "controls.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, len(BENCHMARKS), figsize=(5 * len(BENCHMARKS), 3.6))
    for ax, (b, g) in zip(np.atleast_1d(axes), curves.groupby("benchmark", sort=False)):
        for i, (v, gv) in enumerate(g.groupby("variant", sort=False)):
            m = gv.groupby("step").test_acc.agg(["mean", "min", "max"])
            ax.plot(m.index, 100 * m["mean"], label=v, color=f"C{i}")
            ax.fill_between(m.index, 100 * m["min"], 100 * m["max"], color=f"C{i}", alpha=0.2)
        study_epochs = Study.load(ROOT / BENCHMARKS[b][0]).train.get("epochs")
        ax.axvline(g[g.epoch == study_epochs].step.iloc[0], color="k", ls=":", lw=1, label="the study's budget")
        ax.set(title=b, xlabel="optimiser steps", ylabel="test accuracy (%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "accuracy.png", dpi=120)
    write_provenance(args.out, config={"benchmarks": BENCHMARKS, "variants": VARIANTS, "r": R,
                                       "plateau": PLATEAU}, seeds=sorted({s for v in SEEDS.values() for s in v}),
                     metrics={f"{r['benchmark']}/{r['variant']}": r["acc_final"] for r in summary})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
