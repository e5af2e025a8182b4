"""Settings that would fail in every run are refused before anything runs (issue 20.13):
[train] device = "tpu" at load; a [scaffold] target_modules or max_rank pattern that matches nothing
in the study's model when `run` / `sweep` start (the model built once, on the meta device), naming the
file and the key, with no run stored."""

import pytest

from reservoir_depth import cli, sweep
from reservoir_depth.study import Study, StudyError
from reservoir_depth.train import TrainConfig

STUDY = '''study = "refused"
dataset = "digits"
seeds = [0]
ranks = [2]
full = true
arch = {{name = "mlp", hidden = [8]}}
train = {{epochs = 1, batch_size = 512{train}}}
{scaffold}
'''


def write(tmp_path, train="", scaffold=""):
    path = tmp_path / "s.toml"
    path.write_text(STUDY.format(train=train, scaffold=scaffold))
    return path


@pytest.fixture
def nothing_runs(monkeypatch):
    def execute(*args, **kwargs):
        raise AssertionError("a run started")
    monkeypatch.setattr(sweep, "execute", execute)


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:x"])
def test_an_unknown_device_is_refused_at_load_naming_file_and_key(device, tmp_path):
    path = write(tmp_path, train=f', device = "{device}"')
    with pytest.raises(StudyError, match=rf"{path}: \[train\] device must be 'auto' or a torch device .* got "
                                         rf"'{device}'"):
        Study.load(path)


def test_train_config_refuses_an_unknown_device():
    with pytest.raises(ValueError, match="device must be 'auto' or a torch device"):
        TrainConfig(device="tpu")
    for ok in ("auto", "cpu", "cuda", "cuda:1", "mps", "meta"):
        TrainConfig(device=ok)


@pytest.mark.parametrize("scaffold, key", [('scaffold = {target_modules = "layerz"}', "target_modules"),
                                           ("scaffold = {max_rank = {nope = 0}}", "max_rank")])
def test_scaffold_patterns_matching_nothing_are_refused_before_any_run(scaffold, key, tmp_path, nothing_runs,
                                                                        capsys):
    path = write(tmp_path, scaffold=scaffold)
    with pytest.raises(StudyError, match=rf"{path}: \[scaffold\] {key} patterns .*match no"):
        sweep.check_study(Study.load(path))
    assert cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == cli.BAD_INPUT
    err = capsys.readouterr().err
    assert str(path) in err and key in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # no store: nothing ran


def test_a_study_that_fits_its_model_is_not_refused(tmp_path):
    sweep.check_study(Study.load(write(tmp_path, scaffold='scaffold = {max_rank = {"layers.0" = 1}}')))


def test_a_rank_caps_pattern_matching_no_layer_is_refused_before_any_run(tmp_path, nothing_runs, capsys):
    """It passed loading and then failed every run at a rank above its cap."""
    path = write(tmp_path, scaffold='rank_caps = {"nolayer" = 4}')
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: rank_caps" in err and "'nolayer'" in err and "match no scaffold layer" in err
    assert not (tmp_path / "out" / "runs.sqlite").exists()


def test_a_ridge_readout_on_a_classification_study_is_refused_before_any_run(tmp_path, nothing_runs, capsys):
    """readout = "ridge" passed loading and then failed every run, full training's too."""
    path = write(tmp_path, train=', readout = "ridge"')
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: [train] readout='ridge'" in err and "'classification'" in err
    assert not (tmp_path / "out" / "runs.sqlite").exists()


def test_all_linear_with_spectra_measures_the_layers_it_scaffolds(tmp_path):
    """target_modules = "all-linear" with spectra = true failed every LottaLoRA run ("layers ['all-linear']
    match no module"): the spectra read the modules all-linear replaces, for LottaLoRA and the twin alike."""
    from reservoir_depth.results import ResultsStore

    study = Study.from_dict({"study": "al", "dataset": "digits", "seeds": [0], "ranks": [2], "twin": True,
                             "spectra": True, "arch": {"name": "mlp", "hidden": [8, 8]},
                             "train": {"epochs": 1, "batch_size": 512},
                             "scaffold": {"target_modules": "all-linear"}})
    store = ResultsStore(tmp_path / "runs.sqlite", create=True)
    counts = sweep.run_study(study, store, progress=False)
    assert counts.failed == 0, [r["error"] for r in store.rows() if r["error"]]
    df = store.frame("al")
    acts = {c.split("/")[1] for c in df.columns if c.startswith("act/")}
    assert acts == {"layers.0", "layers.1"}  # the head is all-linear's declared output layer, left out
