import math

import pandas as pd

import pytest
import torch
from torch import nn

from reservoir_depth.distributions import torch_rng
from reservoir_depth import data as data_mod
from reservoir_depth.models import build, scaffold_defaults
from reservoir_depth.scaffold import ScaffoldConfig, scaffold
from reservoir_depth.train import TrainConfig, evaluate, train


def lotta_mlp(d, r=2, seed=0, **kw):
    with torch_rng(seed):
        m = build("mlp", d_in=d.d_in, n_out=d.n_classes, hidden=(32, 16))
    return scaffold(m, ScaffoldConfig(target_modules=m.scaffold_targets, trainable=m.scaffold_trainable, r=r,
                                      root_seed=seed, **kw))


CFG = TrainConfig(epochs=3, batch_size=32, progress=False, lr=3e-3)


def test_cpu_training_is_deterministic_for_a_seed(blobs):
    h1 = train(lotta_mlp(blobs), blobs, CFG)
    h2 = train(lotta_mlp(blobs), blobs, CFG)
    pd.testing.assert_frame_equal(h1.to_frame().drop(columns="seconds"), h2.to_frame().drop(columns="seconds"))
    h3 = train(lotta_mlp(blobs), blobs, TrainConfig(**{**CFG.__dict__, "seed": 1}))
    assert h3.final["train_loss"] != h1.final["train_loss"]


def test_training_does_not_touch_global_rng(blobs):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(lotta_mlp(blobs), blobs, CFG)
    assert torch.equal(torch.rand(3), expected)


def test_learns_and_records_history(blobs):
    m = lotta_mlp(blobs)
    h = train(m, blobs, TrainConfig(epochs=5, batch_size=32, progress=False, lr=1e-2))
    assert [e["epoch"] for e in h.epochs] == list(range(6))
    assert math.isnan(h.epochs[0]["train_loss"])
    assert h.final["test_acc"] > 0.9 and h.final["test_acc"] > h.epochs[0]["test_acc"]
    assert {"beta/layers.0", "beta/layers.1"} <= set(h.final)
    assert h.epochs[0]["beta/layers.0"] == 1.0 and h.final["beta/layers.0"] != 1.0
    df = h.to_frame()
    assert len(df) == 6 and "test_acc" in df
    assert h.trainable < h.total


def test_beta_every_records_steps(blobs):
    h = train(lotta_mlp(blobs), blobs, TrainConfig(epochs=1, batch_size=32, progress=False, beta_every=2))
    assert [s["step"] for s in h.beta_steps] == [2, 4, 6, 8]
    assert set(h.beta_steps[0]) == {"step", "layers.0", "layers.1"}


def test_nan_loss_is_a_clear_error(blobs):
    m = lotta_mlp(blobs)
    m.head.register_forward_hook(lambda mod, args, out: out * float("nan") if mod.training else out)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, step 0"):
        train(m, blobs, CFG)


def test_non_finite_output_at_init_is_a_clear_error(blobs):
    m = lotta_mlp(blobs)
    with torch.no_grad():
        m.head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"test loss on 'blobs' is nan before training"):
        train(m, blobs, CFG)


def test_full_training_of_plain_model(blobs):
    with torch_rng(0):
        m = build("mlp", d_in=blobs.d_in, n_out=blobs.n_classes, hidden=(32, 16))
    h = train(m, blobs, CFG)
    assert h.trainable == h.total == sum(p.numel() for p in m.parameters())


def test_no_trainable_parameter_is_an_error(blobs):
    m = nn.Linear(blobs.d_in, blobs.n_classes).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        train(m, blobs, CFG)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"lr": float("inf")}])
def test_bad_train_config(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad)


def test_evaluate_counts_correct(blobs):
    m = nn.Linear(blobs.d_in, blobs.n_classes)
    with torch.no_grad():
        m.weight.zero_()
        m.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    ev = evaluate(m, blobs.X_test, blobs.y_test)
    assert ev["acc"] == pytest.approx((blobs.y_test == 1).float().mean().item())


@pytest.mark.parametrize("schedule,k", [("epoch", 1), ("step", 3), ("batch", 2)])
def test_destabilised_schedules_train(blobs, schedule, k):
    """Every schedule trains to a finite loss and moves beta; that W_seed is really redrawn during training
    (per epoch, cycling k, k per batch) is checked in tests/test_schedules.py."""
    h = train(lotta_mlp(blobs, schedule=schedule, k=k), blobs, CFG)
    assert all(math.isfinite(e["train_loss"]) for e in h.epochs[1:])
    assert h.final["beta/layers.0"] != 1.0 and h.final["train_loss"] < h.epochs[1]["train_loss"]


# ----------------------------------------------------------------------------- data from a DataLoader

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from reservoir_depth.data.dataset import Dataset  # noqa: E402


def loader(X, y, batch_size=50, **kw):
    return DataLoader(TensorDataset(X, y), batch_size=batch_size, **kw)


def test_training_from_a_dataloader_equals_training_from_its_tensors(blobs):
    d = Dataset.from_loader("blobs", loader(blobs.X_train, blobs.y_train), loader(blobs.X_test, blobs.y_test),
                            n_classes=blobs.n_classes)
    assert torch.equal(d.X_train, blobs.X_train) and torch.equal(d.y_test, blobs.y_test)
    assert (d.d_in, d.n_out, d.task) == (blobs.d_in, blobs.n_out, "classification")
    h1, h2 = train(lotta_mlp(blobs), blobs, CFG), train(lotta_mlp(d), d, CFG)
    pd.testing.assert_frame_equal(h1.to_frame().drop(columns="seconds"), h2.to_frame().drop(columns="seconds"))


def test_a_dataset_from_plain_generators_of_batches_any_task():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 5, 2, generator=g), torch.randn(40, 5, 1, generator=g)

    def batches(lo, hi):  # a plain generator of (X, y) tuples, e.g. numpy arrays
        for i in range(lo, hi, 7):
            yield X[i:min(i + 7, hi)].numpy(), y[i:min(i + 7, hi)].numpy()

    d = Dataset.from_loader("series", batches(0, 30), batches(30, 40), n_classes=0, task="forecasting", washout=2)
    assert torch.equal(d.X_train, X[:30]) and torch.equal(d.y_test, y[30:]) and d.washout == 2
    assert (d.d_in, d.n_out) == (2, 1)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 45))
def test_any_batching_gives_back_the_same_tensors(n, batch_size):
    X, y = torch.arange(3 * n, dtype=torch.float32).reshape(n, 3), torch.arange(n) % 2
    d = Dataset.from_loader("t", loader(X, y, batch_size), [(X, y)], n_classes=2)
    assert torch.equal(d.X_train, X) and torch.equal(d.y_train, y)


def test_loader_problems_are_clear_errors_naming_split_and_batch():
    X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    ok = [(X, y)]
    with pytest.raises(ValueError, match=r"dataset 'd', test split: the loader yielded no batch"):
        Dataset.from_loader("d", ok, loader(X[:0], y[:0]), n_classes=2)
    used = iter(ok)
    list(used)
    with pytest.raises(ValueError, match="train split: the loader yielded no batch .*used up"):
        Dataset.from_loader("d", used, ok, n_classes=2)
    with pytest.raises(ValueError, match=r"train split: batch 1 has X float32 of shape \(5, 4\), but batch 0 "
                                         r"float32 of shape \(5, 3\)"):
        Dataset.from_loader("d", [(X[:5], y[:5]), (torch.randn(5, 4), y[5:])], ok, n_classes=2)
    with pytest.raises(ValueError, match=r"batch 1 has y int32 .* but batch 0 int64"):
        Dataset.from_loader("d", [(X[:5], y[:5]), (X[5:], y[5:].int())], ok, n_classes=2)
    with pytest.raises(ValueError, match=r"test split: batch 0 has X of shape \(10, 3\) and y of shape \(9,\)"):
        Dataset.from_loader("d", ok, [(X, y[:9])], n_classes=2)
    with pytest.raises(ValueError, match=r"train split: batch 0 is a 3-item tuple; each batch must be an \(X, y\)"):
        Dataset.from_loader("d", [(X, y, y)], ok, n_classes=2)
    with pytest.raises(ValueError, match=r"batch 0 is a dict"):
        Dataset.from_loader("d", [{"x": X, "y": y}], ok, n_classes=2)
    with pytest.raises(TypeError, match="got a single Tensor"):
        Dataset.from_loader("d", X, ok, n_classes=2)
    with pytest.raises(ValueError, match=r"dataset 'd', train split: y_train holds label 1 .* n_classes = 1"):
        Dataset.from_loader("d", ok, ok, n_classes=1)  # the Dataset's own checks apply


def test_seed_dtype_holds_every_w_seed_in_it_while_training(blobs):
    """TrainConfig(seed_dtype="bfloat16"): the scaffolds' W_seed are held in bf16 (the float32 draw rounded),
    what trains stays float32, and a full-training model is left as it is."""
    from reservoir_depth.scaffold import scaffold_layers

    model = lotta_mlp(blobs)
    drawn = {n: m.W_seed.clone() for n, m in scaffold_layers(model)}
    h = train(model, blobs, TrainConfig(**{**CFG.__dict__, "epochs": 1, "seed_dtype": "bfloat16"}))
    assert math.isfinite(h.final["test_loss"])
    for n, m in scaffold_layers(model):
        assert m.W_seed.dtype == torch.bfloat16 and torch.equal(m.W_seed, drawn[n].to(torch.bfloat16)), n
        assert m.lora_A.dtype == m.beta.dtype == torch.float32
    with torch_rng(0):
        full = build("mlp", d_in=blobs.d_in, n_out=blobs.n_classes, hidden=(32, 16))
    train(full, blobs, TrainConfig(**{**CFG.__dict__, "epochs": 1, "seed_dtype": "bfloat16"}))
    assert {p.dtype for p in full.parameters()} == {torch.float32}


@pytest.mark.parametrize("bad", ["bf16", "float64", torch.bfloat16, 16])
def test_seed_dtype_names_what_is_allowed(bad):
    with pytest.raises(ValueError, match=r"seed_dtype must be one of \(None, 'bfloat16', 'float16'\), got"):
        TrainConfig(seed_dtype=bad)


def test_seed_dtype_enters_a_runs_config_only_when_set():
    from reservoir_depth.run import Run

    run = Run("s", "digits", {"name": "mlp"}, "lotta", 0)
    assert "seed_dtype" not in run.config()["train"]
    held = Run("s", "digits", {"name": "mlp"}, "lotta", 0, train={"seed_dtype": "bfloat16"})
    assert held.config()["train"]["seed_dtype"] == "bfloat16" and held.run_id != run.run_id


def test_compile_trains_the_compiled_module(blobs, monkeypatch):
    """TrainConfig(compile=True) runs the training steps through torch.compile(net); with a compiler that
    returns the module itself the run is the eager run exactly."""
    compiled = []

    def spy(module, *args, **kwargs):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", spy)
    model = lotta_mlp(blobs)
    h = train(model, blobs, TrainConfig(**{**CFG.__dict__, "compile": True}))
    assert compiled == [model]
    ref = train(lotta_mlp(blobs), blobs, CFG)
    pd.testing.assert_frame_equal(h.to_frame().drop(columns="seconds"), ref.to_frame().drop(columns="seconds"))


@pytest.mark.slow
def test_compiled_training_follows_eager_training(blobs):
    """A real torch.compile (no dropout, so only rounding differs): the first epochs' losses agree with eager."""
    def model():
        with torch_rng(0):
            m = build("mlp", d_in=blobs.d_in, n_out=blobs.n_classes, hidden=(32, 16), dropout=0.0)
        return scaffold(m, ScaffoldConfig(target_modules=m.scaffold_targets, trainable=m.scaffold_trainable, r=2))

    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 2})
    eager = train(model(), blobs, cfg).to_frame()
    comp = train(model(), blobs, TrainConfig(**{**cfg.__dict__, "compile": True})).to_frame()
    for col in ("train_loss", "test_loss"):
        assert comp[col].iloc[1:].to_numpy() == pytest.approx(eager[col].iloc[1:].to_numpy(), rel=1e-3), col


def test_compile_setting_is_checked_and_enters_a_runs_config_only_when_set():
    from reservoir_depth.run import Run

    with pytest.raises(ValueError, match="compile must be True or False, got 'yes'"):
        TrainConfig(compile="yes")
    run = Run("s", "digits", {"name": "mlp"}, "lotta", 0)
    assert "compile" not in run.config()["train"]
    on = Run("s", "digits", {"name": "mlp"}, "lotta", 0, train={"compile": True})
    assert on.config()["train"]["compile"] is True and on.run_id != run.run_id


@pytest.mark.parametrize("scaffolded", [False, True])
def test_a_model_whose_first_layer_does_not_fit_the_data_is_named(scaffolded):
    """A model built for 20 inputs on digits (64 features) failed inside the fused op ('mat1 and mat2 shapes
    cannot be multiplied'); the error names the first layer and both sizes."""
    d = data_mod.load("digits")
    model = build("mlp", d_in=20, n_out=d.n_out, hidden="tiny")
    if scaffolded:
        model = scaffold(model, ScaffoldConfig(**scaffold_defaults(model), r=2))
    with pytest.raises(ValueError, match=r"'layers\.0' .*takes 20 input features.*\(1, 8, 8\).*64"):
        train(model, d, TrainConfig(epochs=1, progress=False))
