import math

import pandas as pd

import pytest
import torch
from torch import nn

from reservoir_depth.distributions import torch_rng
from reservoir_depth.models import build
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
