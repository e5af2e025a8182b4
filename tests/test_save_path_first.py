"""No lost work (issue 20.11): `train --save PATH` checks that PATH can be written before the first
epoch (a path under a regular file, an existing regular file, an unwritable folder): exit 2 with a
sentence, nothing trained, nothing left behind."""

import os

import pytest

from reservoir_depth import cli, io

TRAIN = ["train", "--hidden", "8", "--epochs", "1", "--no-progress"]


@pytest.fixture
def no_training(monkeypatch):
    """Training is not reached: cmd_train's train() fails the test."""
    def train(*args, **kwargs):
        raise AssertionError("training started before --save was checked")
    monkeypatch.setattr(cli, "train", train)


def unwritable(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere on a read-write file system; /proc takes no folders
        return "/proc/reservoir-depth-adapter"
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    return str(folder / "out")


@pytest.mark.parametrize("where", ["under a file", "a file", "unwritable"])
def test_train_refuses_a_save_path_before_training(where, tmp_path, capsys, no_training):
    (tmp_path / "f").write_text("x")
    path = {"under a file": str(tmp_path / "f" / "out"), "a file": str(tmp_path / "f"),
            "unwritable": unwritable(tmp_path)}[where]
    assert cli.main([*TRAIN, "--save", path]) == cli.BAD_INPUT
    err = capsys.readouterr().err
    assert f"cannot save to {path}" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"] + (["ro"] if (tmp_path / "ro").exists() else [])


def test_check_writable_leaves_no_folder_behind(tmp_path):
    io.check_writable(tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    io.check_writable(tmp_path / "kept")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


def test_a_writable_save_path_still_trains_and_saves(tmp_path):
    assert cli.main([*TRAIN, "--save", str(tmp_path / "a" / "b")]) == 0
    assert (tmp_path / "a" / "b" / io.CONFIG).is_file()
