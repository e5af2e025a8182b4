import gzip
import struct

import numpy as np
import pytest

from reservoir_depth import data
from reservoir_depth.cli import main


def write_idx(path, arr):
    header = b"\x00\x00\x08" + bytes([arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))
    return tmp_path


def test_fashion_mnist_reads_idx_from_env_folder(fake_fashion):
    d = data.fashion_mnist()
    assert d.X_train.shape == (12, 1, 28, 28) and d.X_test.shape == (5, 1, 28, 28) and d.d_in == 784
    assert abs(float(d.X_train.mean())) < 1e-5 and abs(float(d.X_train.std()) - 1) < 1e-3
    raw = data._read_idx(fake_fashion / "train-labels-idx1-ubyte.gz")
    assert d.y_train.tolist() == raw.tolist()


def test_missing_fashion_mnist_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist()


def test_bad_idx_magic(tmp_path):
    p = tmp_path / "x.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        data._read_idx(p)


def test_digits_and_mnist5k():
    d = data.load("digits")
    assert d.X_train.shape == (1437, 1, 8, 8) and d.n_classes == 10
    m = data.load("mnist5k")
    assert len(m.X_train) == 4000 and len(m.X_test) == 1000 and m.d_in == 784
    assert set(m.y_train.unique().tolist()) == set(range(10))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*digits"):
        data.load("cifar")


def test_cli_distributions_lists_families(capsys):
    assert main(["distributions"]) == 0
    out = capsys.readouterr().out
    assert "orthogonal" in out and "zeros" in out and "spectral_radius" in out


def test_cli_run_writes_table_figure_and_provenance(tmp_path, capsys):
    study = tmp_path / "s.toml"
    study.write_text('study = "tiny"\ndataset = "digits"\nseeds = [0]\nranks = [0, 2]\n'
                     '[arch]\nname = "mlp"\nhidden = "tiny"\n[train]\nepochs = 1\n')
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out), "--no-progress"]) == 0
    for f in ("runs.sqlite", "report.md", "table.csv", "runs.csv", "rank.png", "study.json"):
        assert (out / f).exists(), f
    assert "| LottaLoRA | 2 |" in (out / "report.md").read_text()
    assert main(["sweep", str(study), "--out", str(out), "--no-progress"]) == 0
    assert "0 run, 3 already done" in capsys.readouterr().out


def test_cli_workers_share_the_store(tmp_path, capsys):
    study = tmp_path / "s.toml"
    study.write_text('study = "tiny"\ndataset = "digits"\nseeds = [0, 1]\nranks = [1]\nfull = false\n'
                     '[arch]\nname = "mlp"\nhidden = "tiny"\n[train]\nepochs = 1\n')
    assert main(["sweep", str(study), "--out", str(tmp_path), "--no-progress", "--workers", "2"]) == 0
    assert "2 run, 0 already done" in capsys.readouterr().out


def test_cli_reports_bad_input_cleanly(capsys, tmp_path):
    assert main(["train", "--dist", "gaussian", "--epochs", "1"]) == 2
    assert "unknown distribution 'gaussian'" in capsys.readouterr().err


def test_cli_spectra_of_a_saved_adapter(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--hidden", "tiny", "--rank", "2", "--epochs", "1",
                 "--save", str(tmp_path / "ad")]) == 0
    capsys.readouterr()
    assert main(["spectra", "--data", "digits", "--adapter", str(tmp_path / "ad"), "--csv", str(tmp_path / "s.csv")]) == 0
    out = capsys.readouterr().out
    assert "between-class scatter (rank 9 <= C-1 = 9)" in out and "intrinsic dimension (twonn)" in out
    import pandas as pd

    table = pd.read_csv(tmp_path / "s.csv")
    adapters = table[table["spectrum"] == "adapter s B A"]
    assert list(adapters["layer"]) == ["layers.0", "layers.1"] and (adapters["rank"] <= 2).all()


def test_spectra_uses_the_data_set_an_adapter_was_trained_on(tmp_path, capsys):
    """`train --data X --save DIR` records X in DIR; `spectra --adapter DIR` uses it (it used digits, silently),
    and refuses another --data naming both."""
    ad = tmp_path / "ad"
    assert main(["train", "--data", "planted", "--data-kw", "n_train=64", "--hidden", "8", "--rank", "1",
                 "--epochs", "1", "--no-progress", "--save", str(ad)]) == 0
    capsys.readouterr()
    assert main(["spectra", "--adapter", str(ad), "--rows", "64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Dataset('planted") and "digits" not in out
    assert main(["spectra", "--adapter", str(ad), "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert "'planted'" in err and "'digits'" in err and str(ad) in err
