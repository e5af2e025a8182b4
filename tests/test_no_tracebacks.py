"""No raw tracebacks (issue 20.14): each of these is a sentence and exit status 2 (a ValueError from the
Python API), not a traceback."""

import socket

import pytest

from reservoir_depth import cli, data, ray_sweep
from reservoir_depth.study import Study
from reservoir_depth.train import TrainConfig

STUDY = '''study = "tb"
dataset = "digits"
seeds = [0]
ranks = [1]
full = false
arch = {name = "mlp", hidden = [8]}
train = {epochs = 1, batch_size = 512}
'''
TRAIN = ["train", "--hidden", "8", "--epochs", "1", "--no-progress"]


def bad_input(argv, capsys, *phrases):
    assert cli.main(argv) == cli.BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("reservoir-depth: error: "), err
    for phrase in phrases:
        assert phrase in err, err
    return err


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "FILE"
    path.write_text("x")
    return path


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(STUDY)
    return path


def free_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unknown_data_keyword_names_the_allowed_ones(capsys):
    with pytest.raises(ValueError, match=r"--data-kw|digits\(\) takes no keyword 'bogus'; allowed: "):
        data.load("digits", bogus=1)
    bad_input([*TRAIN, "--data-kw", "bogus=1"], capsys, "'bogus'", "digits")


def test_a_diverging_run_is_a_sentence(capsys):
    bad_input([*TRAIN, "--lr", "1e6"], capsys, "try a lower lr")


def test_sweep_out_and_log_dir_that_are_files(study, a_file, capsys):
    bad_input(["sweep", str(study), "--out", str(a_file), "--no-progress"], capsys, str(a_file), "is a file")
    bad_input(["run", str(study), "--out", str(a_file), "--no-progress"], capsys, str(a_file), "is a file")
    bad_input(["sweep", str(study), "--out", str(a_file.parent / "out"), "--no-progress", "--log-dir", str(a_file)],
              capsys, str(a_file), "is a file")


def test_train_log_dir_that_is_a_file(a_file, capsys):
    bad_input([*TRAIN, "--log-dir", str(a_file)], capsys, str(a_file), "is a file")
    bad_input([*TRAIN, "--log-dir", str(a_file / "under")], capsys, str(a_file), "is a file")


def test_train_config_refuses_a_log_dir_that_is_a_file(a_file):
    for path in (a_file, a_file / "under", str(a_file)):
        with pytest.raises(ValueError, match=rf"log_dir {str(path)!r}: {str(a_file)} is a file"):
            TrainConfig(log_dir=path)


def test_ray_address_with_nothing_there_is_a_sentence_at_once(study, tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    started = []
    monkeypatch.setattr(ray_sweep._ray(), "init", lambda *a, **k: started.append(k))  # never reached
    address = f"127.0.0.1:{free_port()}"
    bad_input(["sweep", str(study), "--out", str(tmp_path / "out"), "--backend", "ray", "--address", address,
               "--no-progress"], capsys, f"--address {address}", "ray start --head")
    assert started == []


def test_ray_init_connection_errors_are_bad_input(study, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")

    def init(*args, **kwargs):
        raise ConnectionError("Could not find any running Ray instance.")
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(ValueError, match=r"--address auto: no Ray cluster.*Could not find any running Ray instance"):
        ray_sweep.run_study_ray(Study.load(study), None, address="auto", progress=False)
