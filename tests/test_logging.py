"""TensorBoard logging: TrainConfig(log_dir=...), the study runner and --log-dir.

Event files are read back with tensorboard's EventAccumulator and compared with the History's
numbers; without log_dir nothing is written, tensorboard is not imported and run ids are unchanged.
"""

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from conftest import TRAIN_TINY, torchrun
from reservoir_depth import cli, distributed
from reservoir_depth.identity import identity
from reservoir_depth.models import build
from reservoir_depth.results import ResultsStore
from reservoir_depth.scaffold import ScaffoldConfig, scaffold
from reservoir_depth.study import Study
from reservoir_depth.run import Run
from reservoir_depth.sweep import execute, log_dir_of, run_study
from reservoir_depth.train import TensorBoardLog, TrainConfig, train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

CFG = TrainConfig(epochs=2, batch_size=64, progress=False, lr=3e-3, beta_every=2)
TINY = {"study": "tiny_log", "dataset": "digits", "seeds": [0], "ranks": [2], "full": False,
        "spectra": ["lotta"], "arch": {"name": "mlp", "hidden": [16, 8]}, "train": {"epochs": 1, "batch_size": 256}}


def lotta_mlp(d, r=2, seed=0):
    m = build("mlp", seed=seed, d_in=d.d_in, n_out=d.n_classes, hidden=(32, 16))
    return scaffold(m, ScaffoldConfig(target_modules=m.scaffold_targets, trainable=m.scaffold_trainable, r=r,
                                      root_seed=seed))


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file under log_dir (one run's folder)."""
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def same(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> bool:
    """The same steps, and values equal up to the event files' float32."""
    return [s for s, _ in got] == [s for s, _ in expected] and \
        [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)


def files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_events_hold_the_historys_numbers(blobs, tmp_path):
    h = train(lotta_mlp(blobs), blobs, TrainConfig(**{**CFG.__dict__, "log_dir": str(tmp_path)}))
    got = scalars(tmp_path)
    for key in h.epochs[0]:  # every key of the epoch rows: losses, test metrics, seconds, beta per layer
        if key == "epoch":
            continue
        expected = [(e["epoch"], e[key]) for e in h.epochs if math.isfinite(e[key])]
        assert same(got[f"epoch/{key}"], expected), key
    assert [s for s, _ in got["epoch/train_loss"]] == [1, 2]  # epoch 0 has no train loss (NaN): not written
    assert {"epoch/beta/layers.0", "epoch/beta/layers.1"} <= set(got)
    for layer in ("layers.0", "layers.1"):  # beta trajectories per layer, every beta_every steps
        assert same(got[f"step/beta/{layer}"], [(b["step"], b[layer]) for b in h.beta_steps])
    steps = got["step/train_loss"]  # one per optimiser step: 256 rows / 64 = 4 per epoch
    assert [s for s, _ in steps] == list(range(1, 9))
    for epoch in (1, 2):  # equal batches: the epoch's train_loss is the mean of its steps' losses
        mean = sum(v for _, v in steps[4 * (epoch - 1):4 * epoch]) / 4
        assert mean == pytest.approx(h.epochs[epoch]["train_loss"], rel=1e-5)


def test_logging_changes_no_number(blobs, tmp_path):
    plain = train(lotta_mlp(blobs), blobs, CFG)
    logged = train(lotta_mlp(blobs), blobs, TrainConfig(**{**CFG.__dict__, "log_dir": str(tmp_path)}))
    pd.testing.assert_frame_equal(plain.to_frame().drop(columns="seconds"), logged.to_frame().drop(columns="seconds"))
    assert plain.beta_steps == logged.beta_steps


def test_without_log_dir_nothing_is_written_and_tensorboard_is_not_imported(tmp_path):
    script = textwrap.dedent("""
        import sys, torch
        from reservoir_depth.data.dataset import Dataset
        from reservoir_depth.train import TrainConfig, train
        g = torch.Generator().manual_seed(0)
        X, y = torch.randn(64, 4, generator=g), torch.randint(0, 2, (64,), generator=g)
        train(torch.nn.Linear(4, 2), Dataset("d", X, y, X, y, 2), TrainConfig(epochs=1, progress=False))
        print("tensorboard" in " ".join(sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert files(tmp_path) == []  # no ./runs folder (SummaryWriter's default) or anything else


def test_an_unset_log_dir_leaves_run_configs_and_ids_as_they_were():
    assert TrainConfig().log_dir is None and "log_dir" not in identity(TrainConfig(log_dir="runs"))  # never an id
    assert TrainConfig() == TrainConfig(log_dir=None)
    run = Run("s", "digits", {"name": "mlp"}, "full", 0)
    assert "log_dir" not in run.config()["train"]
    assert Run("s", "digits", {"name": "mlp"}, "full", 0, train={"log_dir": "runs"}).run_id == run.run_id
    assert run.run_id == "9b6deba50583354a"  # the id this run was stored under before log_dir existed


def test_log_dir_setting_is_checked():
    with pytest.raises(ValueError, match="log_dir must be a folder path .* got 3"):
        TrainConfig(log_dir=3)
    with pytest.raises(ValueError, match="log_dir must be a folder path .* got ''"):
        TrainConfig(log_dir="")
    assert TrainConfig(log_dir=Path("x")).log_dir == Path("x")


def test_missing_tensorboard_is_a_clear_import_error(blobs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install tensorboard"):
        train(lotta_mlp(blobs), blobs, TrainConfig(epochs=1, progress=False, log_dir=str(tmp_path)))
    assert files(tmp_path) == []
    code = cli.main(["train", "--epochs", "1", "--no-progress", "--log-dir", str(tmp_path)])
    assert code == cli.BAD_INPUT


def test_only_the_main_process_writes(blobs, tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "is_main", lambda: False)  # as rank 1 under torchrun
    train(lotta_mlp(blobs), blobs, TrainConfig(epochs=1, progress=False, log_dir=str(tmp_path / "tb")))
    assert not (tmp_path / "tb").exists()


def test_a_study_run_is_logged_under_its_name_with_its_spectra(tmp_path):
    run = Study.from_dict(TINY).runs()[0]
    metrics, history = execute(run, log_dir=tmp_path)
    folder = log_dir_of(run, tmp_path)
    assert folder.parent == tmp_path / "tiny_log" and folder.name.endswith(run.run_id[:8])
    got = scalars(folder)
    assert same(got["epoch/test_acc"], [(e["epoch"], e["test_acc"]) for e in history["epochs"]])
    spectra = {k: v for k, v in metrics.items() if k.split("/")[0] in ("act", "adapter", "init")}
    assert any(k.startswith("adapter/") for k in spectra) and any(k.startswith("init/") for k in spectra)
    for k, v in spectra.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
            step = 0 if k.startswith("init/") else history["epochs"][-1]["epoch"]
            assert same(got[f"spectra/{k}"], [(step, v)]), k
    assert run.run_id == Run(**{**run.__dict__}).run_id  # logging left the run's config alone


def test_a_studys_train_table_cannot_set_log_dir(tmp_path):
    run = Run("s", "digits", {"name": "mlp", "hidden": [8]}, "full", 0, train={"epochs": 1, "log_dir": str(tmp_path)})
    with pytest.raises(ValueError, match=r"log_dir is not a \[train\] setting of a study; pass --log-dir DIR"):
        execute(run)
    assert files(tmp_path) == []


def test_cli_log_dir_for_train_and_sweep(tmp_path, capsys):
    assert cli.main(["train", "--epochs", "1", "--hidden", "16", "--no-progress", "--log-dir",
                     str(tmp_path / "one")]) == 0
    assert "epoch/test_acc" in scalars(tmp_path / "one")
    study = tmp_path / "tiny.toml"
    study.write_text('study = "tiny_cli"\ndataset = "digits"\nseeds = [0]\nranks = [1]\nfull = false\n'
                     'arch = {name = "mlp", hidden = [8]}\ntrain = {epochs = 1, batch_size = 512}\n')
    assert cli.main(["sweep", str(study), "--out", str(tmp_path / "out"), "--no-progress",
                     "--log-dir", str(tmp_path / "tb")]) == 0
    (run,) = Study.load(study).runs()
    assert "step/train_loss" in scalars(log_dir_of(run, tmp_path / "tb"))
    assert cli.main(["sweep", str(study), "--backend", "ray", "--log-dir", str(tmp_path / "tb")]) == cli.BAD_INPUT
    assert "--log-dir is for the local backend" in capsys.readouterr().err


def test_run_study_with_workers_logs_each_run(tmp_path):
    study = Study.from_dict({**TINY, "study": "tiny_workers", "spectra": [], "seeds": [0, 1]})
    counts = run_study(study, ResultsStore(tmp_path / "runs.sqlite", create=True), workers=2, progress=False,
                       log_dir=tmp_path / "tb")
    assert counts.failed == 0
    for run in study.runs():
        assert "epoch/test_loss" in scalars(log_dir_of(run, tmp_path / "tb"))


def test_tensorboard_log_writes_finite_numbers_only(tmp_path):
    with TensorBoardLog(tmp_path) as log:
        log.scalars("x", {"a": 1.5, "b": float("nan"), "c": "text", "d": True, "e": 2}, 3)
    assert scalars(tmp_path) == {"x/a": [(3, 1.5)], "x/e": [(3, 2.0)]}


def test_under_torchrun_rank_0_alone_writes_events(tmp_path):
    torchrun([*TRAIN_TINY, "--log-dir", tmp_path / "tb"], cwd=tmp_path)
    (events,) = files(tmp_path / "tb")  # one event file: two writers would leave two
    assert "epoch/test_acc" in scalars(tmp_path / "tb")
