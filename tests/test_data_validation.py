"""Dataset.validation: a validation split carved from the training split, never from the test split."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from reservoir_depth import data
from reservoir_depth.data.dataset import Dataset, windows


def _classification(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g)
    y = torch.arange(n) % 3
    return Dataset("toy", X, y, torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), n_classes=3)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(10, 200), fraction=st.floats(0.05, 0.5), seed=st.integers(0, 2**31))
def test_rows_partition_the_training_split(n, fraction, seed):
    d = _classification(n)
    v = d.validation(fraction, seed=seed)
    rows = torch.cat([v.X_train, v.X_test])
    assert len(v.X_test) == max(1, round(fraction * n))
    assert len(v.X_train) + len(v.X_test) == n
    # every training row lands exactly once, with its own label; the test split is not used
    order = lambda t: t[torch.argsort(t[:, 0])]
    assert torch.equal(order(rows), order(d.X_train))
    labels = {float(x[0]): int(c) for x, c in zip(d.X_train, d.y_train)}
    assert all(labels[float(x[0])] == int(c) for x, c in zip(v.X_test, v.y_test))


def test_seeded_and_named():
    d = _classification()
    a, b, c = d.validation(0.2, seed=0), d.validation(0.2, seed=0), d.validation(0.2, seed=1)
    assert torch.equal(a.X_test, b.X_test) and not torch.equal(a.X_test, c.X_test)
    assert a.name == "toy[validation 0.2, seed 0]"


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), True])
def test_refuses_a_fraction_outside_the_open_interval(fraction):
    with pytest.raises(ValueError, match="fraction"):
        _classification().validation(fraction)


def test_refuses_a_split_that_leaves_nothing_to_train_on():
    with pytest.raises(ValueError, match="rows"):
        _classification(n=2).validation(0.9)


def _series_dataset(T=8, stride=3, n=200):
    s = np.arange(n, dtype=np.float32)[:, None]
    X, Y = windows(s, s, T, stride, "ramp", "train")
    return Dataset("ramp", torch.tensor(X), torch.tensor(Y), torch.tensor(X[:2]), torch.tensor(Y[:2]),
                   n_classes=0, task="forecasting", washout=2)


@pytest.mark.parametrize("stride", [1, 3, 8, 20])
def test_sequences_take_the_tail_with_no_overlap(stride):
    """Windows overlap in time: the validation windows are the last ones, and no training window shares a
    time step (input or target) with them."""
    d = _series_dataset(stride=stride)
    v = d.validation(0.2)
    assert v.washout == d.washout and v.task == "forecasting"
    last_train_step = float(v.y_train[:, -1].max())  # targets reach one step past the inputs
    first_val_step = float(v.X_test[:, 0].min())
    assert last_train_step < first_val_step
    assert torch.equal(v.X_test, d.X_train[-len(v.X_test):])  # the tail, in order
    # nothing more than the overlap is dropped
    gap = len(d.X_train) - len(v.X_train) - len(v.X_test)
    T = d.X_train.shape[1]
    assert gap == (T // stride if stride < T else 1)  # stride >= T: one window, to be safe


def test_loaded_dataset():
    d = data.load("digits")
    v = d.validation(0.1, seed=3)
    assert len(v.X_train) + len(v.X_test) == len(d.X_train)
    assert v.n_classes == d.n_classes and v.X_test.shape[1:] == d.X_test.shape[1:]


@pytest.mark.parametrize("seed", [1.7, "1", True, None, -1])
def test_a_validation_seed_that_is_not_an_int_is_refused_not_truncated(seed):
    """seed = 1.7 was silently seed 1 (int(1.7)): a different split than the one asked for."""
    from conftest import make_blobs

    with pytest.raises(ValueError, match=r"seed .*must be an int >= 0"):
        make_blobs().validation(0.2, seed=seed)
