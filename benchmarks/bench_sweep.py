"""A study's CPU time: its runs one at a time, its runs trained together (group.py), and a hand-written
torch loop of the same runs, side by side in one process, on one torch thread.

The hand loop is what a researcher would write for the same runs as full training: an nn.Sequential of
the study's MLP (Linear, ReLU, Dropout), AdamW, the same batches and epochs and a test evaluation per
epoch, nothing recorded. Each of --repeat rounds runs the three in turn (on a fresh store each); the
median CPU seconds (time.process_time) and the ratios to the hand loop are printed. The default study
records activation and weight spectra per run (spectra = true), which the hand loop does not: the
line "of which spectra and records" says what that costs.

    python benchmarks/bench_sweep.py [--repeat 3]               # the default study (the README's main job)
    python benchmarks/bench_sweep.py --grid [--alone]           # 5 seeds x 8 ranks x 4 learning rates, LottaLoRA
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from reservoir_depth import sweep as sweep_module
from reservoir_depth.models.mlp import SIZES
from reservoir_depth.results import ResultsStore
from reservoir_depth.run import Run
from reservoir_depth.study import Study
from reservoir_depth.sweep import run_study, sweep

GRID = {"seeds": [0, 1, 2, 3, 4], "ranks": [1, 2, 4, 8, 16, 32, 48, 64], "lrs": [3e-4, 1e-3, 3e-3, 1e-2]}


def grid_runs(study: Study, spectra: bool) -> list[Run]:
    """LottaLoRA runs of the study's data, architecture and training over GRID (seeds x ranks x lrs)."""
    return [Run(study.study + "_grid", study.dataset, study.arch, "lotta", seed,
                train={**study.train, "lr": lr}, scaffold={**study.scaffold, "r": r}, spectra=spectra)
            for seed in GRID["seeds"] for r in GRID["ranks"] for lr in GRID["lrs"]]


def hand_loop(runs: list[Run]) -> None:
    """Each run as full training in plain torch: the study's MLP, AdamW, its batches, a test pass per epoch."""
    for run in runs:
        d = run.data()
        cfg = {"epochs": 20, "lr": 1e-3, "weight_decay": 0.01, "batch_size": 128, **run.train}
        hidden = run.arch.get("hidden", "medium")
        dims = (d.d_in, *(SIZES[hidden] if isinstance(hidden, str) else hidden))
        torch.manual_seed(run.seed)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(0.1)]
        net = nn.Sequential(nn.Flatten(), *layers, nn.Linear(dims[-1], d.n_out))
        opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        gen = torch.Generator().manual_seed(run.seed)
        X, y, n, bs = d.X_train, d.y_train, len(d.X_train), cfg["batch_size"]
        for _ in range(cfg["epochs"]):
            net.train()
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, bs):
                idx = perm[i:i + bs]
                loss = nn.functional.cross_entropy(net(X[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                (net(d.X_test).argmax(1) == d.y_test).float().mean().item()


class Timed:
    """CPU seconds spent inside sweep.measure_spectra and sweep.records while a block runs."""

    def __enter__(self):
        self.seconds, self.saved = 0.0, {}
        for name in ("measure_spectra", "records"):
            real = self.saved[name] = getattr(sweep_module, name)

            def timed(*a, _real=real, **k):
                t0 = time.process_time()
                try:
                    return _real(*a, **k)
                finally:
                    self.seconds += time.process_time() - t0

            setattr(sweep_module, name, timed)
        return self

    def __exit__(self, *exc):
        for name, real in self.saved.items():
            setattr(sweep_module, name, real)


def cpu(fn) -> tuple[float, float]:
    """(CPU seconds of fn(), of which in spectra and records)."""
    with Timed() as t:
        t0 = time.process_time()
        fn()
        return time.process_time() - t0, t.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--grid", action="store_true", help="the 5-seed x 8-rank x 4-lr LottaLoRA sweep instead")
    ap.add_argument("--alone", action="store_true", help="with --grid: also its runs one at a time (minutes)")
    ap.add_argument("--spectra", action="store_true", help="with --grid: also measure spectra per run")
    ap.add_argument("--epochs", type=int, default=None, help="override the study's epochs (a quick look)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    study = Study.default()
    if a.epochs:
        study = Study.of({**study.to_dict(), "train": {**study.train, "epochs": a.epochs}})
    runs = grid_runs(study, a.spectra) if a.grid else study.runs()
    ways = {"together": True}
    if not a.grid or a.alone:
        ways = {"one at a time": False, **ways}
    print(f"{len(runs)} runs of {study.study} ({'grid ' + str(GRID) if a.grid else 'the default study'}), "
          f"{study.train.get('epochs')} epochs, one torch thread; CPU seconds, median of {a.repeat}")
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in [*ways, "hand loop"]}
    for _ in range(a.repeat):
        for name, grouped in ways.items():
            with tempfile.TemporaryDirectory() as tmp:
                store = ResultsStore(Path(tmp) / "runs.sqlite", create=True)
                go = (lambda: run_study(study, store, progress=False, grouped=grouped)) if not a.grid else \
                    (lambda: sweep(runs, store, progress=False, grouped=grouped))
                times[name].append(cpu(go))
        times["hand loop"].append(cpu(lambda: hand_loop(runs)))
    hand = statistics.median(t for t, _ in times["hand loop"])
    for name, ts in times.items():
        total = statistics.median(t for t, _ in ts)
        extra = statistics.median(s for _, s in ts)
        print(f"  {name:14s} {total:7.1f} s  {total / hand:5.2f}x the hand loop"
              + (f"   (of which spectra and records {extra:.1f} s)" if name != "hand loop" else ""))


if __name__ == "__main__":
    main()
