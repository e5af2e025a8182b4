"""Grids of runs: full training, LottaLoRA at each rank, over seeds, into a ResultsStore.

A study is a TOML file (see experiments/). Each run's resolved config is a
plain dict; its hash is the run id, so rerunning a study skips finished runs.
"""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from tqdm.auto import tqdm

from . import __version__, data
from .distributions import torch_rng
from .models import ARCHITECTURES, build
from .results import ResultsStore
from .scaffold import ScaffoldConfig, scaffold
from .train import TrainConfig, train


@dataclass(frozen=True)
class Run:
    """One training run. method: 'full' (all weights trained from the usual init) or 'lotta'."""

    study: str
    dataset: str
    arch: Mapping[str, Any]
    method: str
    seed: int
    train: Mapping[str, Any] = field(default_factory=dict)
    scaffold: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in ("full", "lotta"):
            raise ValueError(f"method must be 'full' or 'lotta', got {self.method!r}")

    def config(self) -> dict[str, Any]:
        """The resolved config: every default filled in, as recorded in the store."""
        tc = TrainConfig(**{**self.train, "seed": self.seed, "progress": False}).__dict__
        cfg = {"study": self.study, "dataset": self.dataset, "arch": dict(self.arch), "method": self.method,
               "seed": self.seed, "train": {k: v for k, v in tc.items() if k != "progress"}}
        if self.method == "lotta":
            cfg["scaffold"] = self.scaffold_config().to_dict()
        return cfg

    def scaffold_config(self) -> ScaffoldConfig:
        """The study's scaffold settings over the architecture's declared targets and extras."""
        family = ARCHITECTURES[self.arch["name"]]
        defaults = {"target_modules": family.scaffold_targets, "trainable": family.scaffold_trainable}
        return ScaffoldConfig(**{**defaults, **self.scaffold, "root_seed": self.seed})

    @property
    def run_id(self) -> str:
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()[:16]


@lru_cache(maxsize=4)
def _dataset(name: str) -> data.Dataset:
    return data.load(name)


def build_model(run: Run, d: data.Dataset):
    """The run's model: plain for 'full', scaffolded for 'lotta' (seeded either way)."""
    arch = dict(run.arch)
    name = arch.pop("name")
    with torch_rng(run.seed):
        model = build(name, d_in=d.d_in, n_out=d.n_classes, **arch)
    if run.method == "lotta":
        model = scaffold(model, run.scaffold_config())
    return model


def execute(run: Run, progress: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train one run; returns (metrics, history)."""
    d = _dataset(run.dataset)
    model = build_model(run, d)
    hist = train(model, d, TrainConfig(**{**run.train, "seed": run.seed, "progress": progress}))
    final = hist.final
    metrics = {"test_acc": final["test_acc"], "test_loss": final["test_loss"], "train_loss": final["train_loss"],
               "best_test_acc": max(e["test_acc"] for e in hist.epochs), "trainable": hist.trainable,
               "total": hist.total, "trainable_fraction": hist.trainable / hist.total, "device": hist.device,
               **{k: v for k, v in final.items() if k.startswith("beta/")}}
    return metrics, hist.to_dict()


def load_study(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return tomllib.load(f)


def runs_of(study: Mapping[str, Any]) -> list[Run]:
    """Expand a study: full training (if ``full``) and LottaLoRA at each of ``ranks``, per seed."""
    common = dict(study=study["study"], dataset=study["dataset"], arch=study["arch"],
                  train=study.get("train", {}))
    runs = []
    for seed in study["seeds"]:
        if study.get("full", True):
            runs.append(Run(method="full", seed=seed, **common))
        for r in study.get("ranks", []):
            runs.append(Run(method="lotta", seed=seed, scaffold={**study.get("scaffold", {}), "r": r}, **common))
    return runs


def sweep(runs: Iterable[Run], store: ResultsStore, progress: bool = True) -> dict[str, int]:
    """Run every run not already done in ``store``; returns counts of done / skipped / failed."""
    runs = list(runs)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    bar = tqdm(runs, desc="sweep", disable=not progress, dynamic_ncols=True)
    for run in bar:
        cfg = run.config()
        cfg["version"] = __version__
        if not store.claim(run.run_id, run.study, cfg, run.seed):
            counts["skipped"] += 1
            continue
        label = f"{run.method} r={run.scaffold.get('r', '-')} seed={run.seed}"
        bar.set_postfix_str(label)
        t0 = time.perf_counter()
        try:
            metrics, history = execute(run, progress=progress)
        except Exception as e:  # recorded, and the sweep goes on
            store.fail(run.run_id, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            counts["failed"] += 1
            continue
        store.finish(run.run_id, metrics, history, metrics["trainable"], metrics["total"],
                     time.perf_counter() - t0)
        counts["done"] += 1
    return counts
