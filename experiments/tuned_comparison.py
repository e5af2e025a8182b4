"""Full training vs LottaLoRA vs the no-scaffold control, each with its own learning rate chosen on a
validation split (issue 18, item 5: tuned peers and tuned us).

For each benchmark (the study files digits_mlp, mnist1d_mlp and mnist5k_mlp, their architecture,
epochs and batch size unchanged, so every method has the same step budget) and each method
(full training; LottaLoRA at r in {1, 4, 16}; the no-scaffold control W_seed = 0 at r = 16):

1. select: train at each learning rate of LR_GRID on the training split less a validation split
   (Dataset.validation(0.1, seed=0): the same rows for every method and seed), for the selection
   seeds; the learning rate with the highest mean final-epoch validation accuracy is chosen. If it lies
   on the grid's edge, the grid is extended by one factor of about 3 in that direction, until it does
   not (or LR_LIMITS is reached, which the table then says);
2. test: train on the whole training split at the chosen learning rate and at the studies' own
   lr = 1e-3, for the test seeds; the test split is read once per final run.

Writes tuned.csv (every run: benchmark, method, r, lr, seed, split, accuracy), tuned.md (the chosen
learning rates, test accuracy at the tuned and the default learning rate, recovery), and
provenance.json. Runs are cached in runs.jsonl, so a rerun only trains what is missing.

    python experiments/tuned_comparison.py --out docs/results/tuned_comparison --workers 2
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import parser, write_provenance
from reservoir_depth.study import Study
from reservoir_depth.run import Run
from reservoir_depth.sweep import build_model
from reservoir_depth.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent
BENCHMARKS = ("digits_mlp", "mnist1d_mlp", "mnist5k_mlp")
METHODS = {"full": ("full", None, None), "lotta r=1": ("lotta", 1, None), "lotta r=4": ("lotta", 4, None),
           "lotta r=16": ("lotta", 16, None), "no scaffold r=16": ("lotta", 16, {"name": "zeros"})}
LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2)
LR_LIMITS = (1e-5, 1.0)
DEFAULT_LR = 1e-3
SELECT_SEEDS = (0, 1)
TEST_SEEDS = (0, 1, 2)
VALIDATION = 0.1


def run_of(bench: str, method: str, lr: float, seed: int) -> Run:
    study = Study.load(ROOT / f"{bench}.toml")
    kind, r, spec = METHODS[method]
    scaffold = {} if kind == "full" else {**study.scaffold, "r": r, **({"spec": spec} if spec else {})}
    return Run(study=study.study, dataset=study.dataset, arch=study.arch, method=kind, seed=seed,
               train={**study.train, "lr": lr}, scaffold=scaffold)


def key(bench: str, method: str, lr: float, seed: int, split: str) -> str:
    return json.dumps([bench, method, float(lr), seed, split])


def execute(job: str) -> tuple[str, dict]:
    bench, method, lr, seed, split = json.loads(job)
    torch.set_num_threads(1)
    run = run_of(bench, method, lr, seed)
    d = run.data()
    d = d.validation(VALIDATION, seed=0) if split == "validation" else d
    model = build_model(run, d)
    hist = train(model, d, TrainConfig(**{**run.train, "seed": seed, "progress": False}))
    f = hist.final
    return job, {"acc": f["test_acc"], "loss": f["test_loss"], "train_loss": f["train_loss"],
                 "trainable": hist.trainable, "total": hist.total}


class Cache:
    def __init__(self, path: Path, workers: int):
        self.path, self.workers = path, workers
        self.done = {}
        if path.exists():
            for line in path.read_text().splitlines():
                k, v = json.loads(line)
                self.done[k] = v

    def get(self, jobs: list[str]) -> dict[str, dict]:
        todo = sorted({j for j in jobs if j not in self.done})
        if todo:
            with ProcessPoolExecutor(self.workers) as pool, self.path.open("a") as f:
                for i, (k, v) in enumerate(pool.map(execute, todo)):
                    self.done[k] = v
                    f.write(json.dumps([k, v]) + "\n")
                    f.flush()
                    print(f"  {i + 1}/{len(todo)} {k}: {v['acc']:.4f}", flush=True)
        return {j: self.done[j] for j in jobs}


def select(cache: Cache, bench: str, method: str) -> tuple[float, dict[float, float], bool]:
    """The learning rate with the best mean validation accuracy, the grid it searched, and whether it
    is interior (False: at LR_LIMITS)."""
    grid = list(LR_GRID)
    while True:
        res = cache.get([key(bench, method, lr, s, "validation") for lr in grid for s in SELECT_SEEDS])
        score = {lr: float(np.mean([res[key(bench, method, lr, s, "validation")]["acc"] for s in SELECT_SEEDS]))
                 for lr in grid}
        best = max(grid, key=lambda lr: (score[lr], -lr))
        if best == grid[0] and grid[0] / 3 >= LR_LIMITS[0]:
            grid.insert(0, float(f"{grid[0] / 3:.1g}"))
        elif best == grid[-1] and grid[-1] * 3 <= LR_LIMITS[1]:
            grid.append(float(f"{grid[-1] * 3:.1g}"))
        else:
            return best, score, grid[0] < best < grid[-1]


def main() -> None:
    args = parser(__doc__, out="docs/results/tuned_comparison", workers=True).parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = Cache(args.out / "runs.jsonl", args.workers)
    rows, summary = [], []
    for bench in BENCHMARKS:
        for method in METHODS:
            best, score, interior = select(cache, bench, method)
            print(f"{bench} {method}: lr {best:g} (validation {score[best]:.4f}, {'inside' if interior else 'EDGE'})")
            test = cache.get([key(bench, method, lr, s, "test") for lr in (best, DEFAULT_LR) for s in TEST_SEEDS])
            acc = {lr: [test[key(bench, method, lr, s, "test")]["acc"] for s in TEST_SEEDS] for lr in (best, DEFAULT_LR)}
            one = next(iter(test.values()))
            summary.append({"benchmark": bench, "method": method, "lr": best, "interior": interior,
                            "grid": sorted(score), "validation_acc": score[best],
                            "test_acc": np.mean(acc[best]), "test_sd": np.std(acc[best], ddof=1),
                            "test_acc_default_lr": np.mean(acc[DEFAULT_LR]),
                            "test_sd_default_lr": np.std(acc[DEFAULT_LR], ddof=1),
                            "trainable_fraction": one["trainable"] / one["total"]})
    for k, v in cache.done.items():
        bench, method, lr, seed, split = json.loads(k)
        rows.append({"benchmark": bench, "method": method, "lr": lr, "seed": seed, "split": split, **v})
    pd.DataFrame(rows).sort_values(["benchmark", "method", "split", "lr", "seed"]).to_csv(args.out / "tuned.csv",
                                                                                          index=False)
    df = pd.DataFrame(summary)
    lines = [f"# Tuned comparison: every method's learning rate chosen on a validation split",
             "", f"Validation: {VALIDATION:g} of the training split (seed 0, the same rows for every method); "
             f"selection seeds {list(SELECT_SEEDS)}, mean final-epoch validation accuracy; test seeds "
             f"{list(TEST_SEEDS)} (mean +- sd over seeds, the test split read once per run). Same epochs and batch "
             f"size for every method (the study file's). Recovery = method / full training, each at its own "
             f"tuned lr (default: both at lr = {DEFAULT_LR:g}).", "",
             "| benchmark | method | trainable | lr grid | chosen lr | test acc, tuned | recovery, tuned | "
             f"test acc, lr = {DEFAULT_LR:g} | recovery, lr = {DEFAULT_LR:g} |", "|---|---|---|---|---|---|---|---|---|"]
    for bench, g in df.groupby("benchmark", sort=False):
        full = g[g.method == "full"].iloc[0]
        for _, r in g.iterrows():
            edge = "" if r.interior else " (edge: at the limit)"
            lines.append(f"| {bench} | {r.method} | {100 * r.trainable_fraction:.2f} % | "
                         f"{', '.join(f'{x:g}' for x in r.grid)} | {r.lr:g}{edge} | "
                         f"{100 * r.test_acc:.2f} +- {100 * r.test_sd:.2f} | {r.test_acc / full.test_acc:.3f} | "
                         f"{100 * r.test_acc_default_lr:.2f} +- {100 * r.test_sd_default_lr:.2f} | "
                         f"{r.test_acc_default_lr / full.test_acc_default_lr:.3f} |")
    (args.out / "tuned.md").write_text("\n".join(lines) + "\n")
    df.to_csv(args.out / "summary.csv", index=False)
    write_provenance(args.out, config={"benchmarks": BENCHMARKS, "methods": METHODS, "lr_grid": LR_GRID,
                                       "lr_limits": LR_LIMITS, "validation": VALIDATION, "default_lr": DEFAULT_LR},
                     seeds=sorted(set(SELECT_SEEDS) | set(TEST_SEEDS)),
                     metrics={f"{r['benchmark']}/{r['method']}": r["test_acc"] for r in summary})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
