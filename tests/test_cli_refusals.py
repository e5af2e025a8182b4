"""Hostile command lines end in one sentence and a documented exit code, never a traceback (issue 30, item 4)."""

from __future__ import annotations

import os

import pytest

from reservoir_depth import cli
from reservoir_depth.cli import main


def test_a_folder_given_for_a_study_file_is_one_sentence(tmp_path, capsys):
    assert main(["predict", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a study TOML file" in err and "Traceback" not in err


def test_more_threads_than_cpus_are_refused_naming_both(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--threads", "100000", "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"at most this machine's {os.cpu_count()} CPUs" in err and "100000" in err


def test_a_ridge_readout_on_a_model_without_states_is_one_sentence(capsys):
    code = main(["train", "--arch", "gru", "--data", "mackey-glass", "--readout", "ridge", "--epochs", "1",
                 "--no-progress", "--data-kw", "n_train=600", "--data-kw", "n_test=300"])
    err = capsys.readouterr().err
    assert code == 2 and "a ridge readout needs a model with states(x)" in err


def test_ctrl_c_exits_130_with_one_sentence(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_sweep", interrupted)
    assert main(["sweep", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "rerun the same command to resume" in err
