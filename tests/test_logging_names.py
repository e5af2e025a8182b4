"""TensorBoard runs read by a person (issue 20.9): a sweep's run folders are named
<study>/<method>-r<r>-seed<seed>-<short id>, and every run logs its hyperparameters (the HParams tab)."""

from pathlib import Path

import pytest

from conftest import make_blobs
from reservoir_depth.models import build
from reservoir_depth.scaffold import ScaffoldConfig, scaffold
from reservoir_depth.study import Study
from reservoir_depth.run import Run
from reservoir_depth.sweep import execute, log_dir_of
from reservoir_depth.train import TrainConfig, train

event_file_loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")

TINY = {"study": "tiny_names", "dataset": "digits", "seeds": [3], "ranks": [2], "full": True,
        "arch": {"name": "mlp", "hidden": [8]}, "train": {"epochs": 1, "batch_size": 512}}


def logged_hparams(folder: Path) -> tuple[dict, list[str]]:
    """(hyperparameter -> value, metric tags) of the hparams summaries under folder."""
    values, metrics = {}, []
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        for event in event_file_loader.EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                for k, x in data.session_start_info.hparams.items():
                    values[k] = getattr(x, x.WhichOneof("kind"))
                metrics += [m.name.tag for m in data.experiment.metric_infos]
    return values, metrics


def test_a_sweeps_run_folders_name_method_rank_and_seed():
    full, lotta = Study.from_dict(TINY).runs()
    assert {full.method, lotta.method} == {"full", "lotta"}
    assert log_dir_of(lotta, "tb") == Path("tb", "tiny_names", f"lotta-r2-seed3-{lotta.run_id[:8]}")
    assert log_dir_of(full, "tb") == Path("tb", "tiny_names", f"full-seed3-{full.run_id[:8]}")


def test_train_logs_its_hyperparameters_and_the_metrics_they_are_judged_by(tmp_path):
    d = make_blobs()
    m = build("mlp", seed=0, d_in=d.d_in, n_out=d.n_classes, hidden=(8,))
    m = scaffold(m, ScaffoldConfig(target_modules=m.scaffold_targets, trainable=m.scaffold_trainable, r=2,
                                   alpha=8.0))
    train(m, d, TrainConfig(epochs=1, lr=2e-3, batch_size=64, progress=False, log_dir=str(tmp_path)))
    values, metrics = logged_hparams(tmp_path)
    assert values["lr"] == pytest.approx(2e-3) and values["epochs"] == 1 and values["batch_size"] == 64
    assert values["r"] == 2 and values["alpha"] == 8.0 and values["rslora"] == 0  # torch writes a bool as a number
    assert '"name": "normal"' in values["spec"]  # a nested setting, as its JSON text
    assert "log_dir" not in values and "progress" not in values
    assert {"epoch/test_acc", "epoch/test_loss", "epoch/train_loss"} <= set(metrics)


def test_a_sweep_run_logs_study_method_and_seed_beside_the_config(tmp_path):
    lotta = Study.from_dict(TINY).runs()[1]
    execute(lotta, log_dir=tmp_path)
    values, _ = logged_hparams(log_dir_of(lotta, tmp_path))
    assert values["study"] == "tiny_names" and values["method"] == "lotta" and values["seed"] == 3
    assert values["r"] == 2 and values["run_id"] == lotta.run_id and values["dataset"] == "digits"
