"""The README's main job (the default study) on busy cores: torch's default thread count per run (the
sweep before it set one thread per run) against one thread per run (the default now), side by side.

    python benchmarks/bench_threads.py                          # the whole default study, 2 busy loops
    python benchmarks/bench_threads.py --ranks 0 4 --seeds 0 --epochs 5 --busy 2

Each variant sweeps the study into a fresh store (``run_study(..., threads=T)``) while ``--busy``
processes spin (``while True: pass``), as other work on a shared machine; ``--busy 0`` measures a quiet
machine. The load average before each pass is printed: the machine may be shared, and a figure is
only worth its conditions. Prints a table and the ratio; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from reservoir_depth.results import ResultsStore
from reservoir_depth.study import Study
from reservoir_depth.sweep import run_study


def sweep_seconds(study: dict, threads: int, workers: int, busy: int) -> tuple[float, int, float]:
    """(wall seconds of the sweep, runs done, 1-minute load average before it) with ``busy`` spinning processes."""
    load = os.getloadavg()[0]
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(0.5 if busy else 0)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            counts = run_study(study, ResultsStore(Path(tmp) / "runs.sqlite", create=True), workers=workers,
                               progress=False, threads=threads)
            return time.perf_counter() - t0, counts.done, load
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--busy", type=int, default=2, help="busy loops running beside the sweep")
    p.add_argument("--ranks", type=int, nargs="*", default=None, help="ranks (default: the study's)")
    p.add_argument("--seeds", type=int, nargs="*", default=None, help="seeds (default: the study's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the study's)")
    p.add_argument("--workers", type=int, default=1, help="sweep processes (both variants)")
    p.add_argument("--before-threads", type=int, default=torch.get_num_threads(),
                   help="threads per run of the 'before' variant (default: torch's default here)")
    a = p.parse_args()
    study = Study.default().to_dict()
    study["study"] = "bench_threads"
    for key, value in (("ranks", a.ranks), ("seeds", a.seeds)):
        if value is not None:
            study[key] = value
    if a.epochs is not None:
        study["train"] = {**study["train"], "epochs": a.epochs}
    print(f"{os.cpu_count()} cores, {a.busy} busy loop(s), {a.workers} worker(s), torch {torch.__version__}; "
          f"study {Study.default().study} with ranks {study['ranks']}, seeds {study['seeds']}, "
          f"epochs {study['train']['epochs']}")
    rows = []
    for label, threads in (("before: torch default", a.before_threads), ("after: one per run", 1)):
        seconds, done, load = sweep_seconds(study, threads, a.workers, a.busy)
        rows.append(seconds)
        print(f"{label:24s} threads={threads:<3d} runs={done:<3d} {seconds:8.1f} s   (load average before: {load:.2f})")
    print(f"before / after: {rows[0] / rows[1]:.1f}x")


if __name__ == "__main__":
    main()
