"""Worker pools survive a CUDA-initialised parent: a forked child cannot use CUDA, so the pool spawns."""

from __future__ import annotations

import multiprocessing

import torch

from reservoir_depth import sweep as sweep_module
from reservoir_depth.results import ResultsStore
from reservoir_depth.sweep import run_study


def test_pool_spawns_once_cuda_is_initialised(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert sweep_module._pool_context().get_start_method() == "spawn"
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert sweep_module._pool_context().get_start_method() == multiprocessing.get_start_method()


def test_spawned_workers_run_a_study(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # as after training on a GPU
    study = {"study": "pool", "dataset": "digits", "seeds": [0], "full": True, "ranks": [0, 2],
             "arch": {"name": "mlp", "hidden": "tiny"}, "train": {"epochs": 1, "batch_size": 256, "device": "cpu"},
             "scaffold": {"alpha": 16.0}}
    counts = run_study(study, ResultsStore(tmp_path / "runs.sqlite", create=True), workers=2, progress=False)
    assert (counts.done, counts.failed) == (3, 0), counts.errors
