"""CPU sweeps train each run on one torch thread by default (a run of two threads beside busy cores
took 579 s instead of 29 s); ``threads=`` chooses another count, and the caller's setting is restored."""

from __future__ import annotations

import pytest
import torch

from reservoir_depth import sweep as sweep_module
from reservoir_depth.results import ResultsStore
from reservoir_depth.sweep import run_study

STUDY = {"study": "threads", "dataset": "digits", "seeds": [0], "full": True, "ranks": [0],
         "arch": {"name": "mlp", "hidden": "tiny"}, "train": {"epochs": 1, "batch_size": 256, "device": "cpu"},
         "scaffold": {"alpha": 16.0}}


@pytest.mark.parametrize("threads, expected", [(None, 1), (2, 2)])
def test_runs_train_on_one_thread_by_default(tmp_path, monkeypatch, threads, expected):
    seen = []

    def spy(name):  # one run alone (train) or the runs trained together (train_group)
        real = getattr(sweep_module, name)

        def wrapped(*args, **kw):
            seen.append(torch.get_num_threads())
            return real(*args, **kw)

        monkeypatch.setattr(sweep_module, name, wrapped)

    spy("train")
    spy("train_group")
    torch.set_num_threads(3)  # as torch's default on a 3-core machine (the tests' fixture sets 1)
    kw = {} if threads is None else {"threads": threads}
    counts = run_study(STUDY, ResultsStore(tmp_path / "runs.sqlite", create=True), progress=False, **kw)
    assert (counts.done, counts.failed) == (2, 0), counts.errors
    assert seen == [expected]  # the two runs trained together
    assert torch.get_num_threads() == 3


def test_threads_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="threads must be a positive integer, got 0"):
        run_study(STUDY, ResultsStore(tmp_path / "runs.sqlite", create=True), progress=False, threads=0)


@pytest.mark.parametrize("flag, expected", [([], 1), (["--threads", "2"], 2)])
def test_cli_threads_reach_the_runs(tmp_path, monkeypatch, flag, expected):
    from reservoir_depth.cli import main

    seen = []
    real = sweep_module.train
    monkeypatch.setattr(sweep_module, "train", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    study = tmp_path / "s.toml"
    study.write_text('study = "t"\ndataset = "digits"\nseeds = [0]\nranks = [1]\nfull = false\n'
                     '[arch]\nname = "mlp"\nhidden = [8]\n[train]\nepochs = 1\n')
    torch.set_num_threads(3)
    assert main(["sweep", str(study), "--out", str(tmp_path / "out"), "--no-progress", *flag]) == 0
    assert seen == [expected]
