"""Tests of reservoir_depth.data.series: Lorenz, Mackey-Glass (tau = 17) and NARMA-10 as forecasting Datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reservoir_depth import data
from reservoir_depth.data import series
from reservoir_depth.data.dataset import windows

SMALL = {"window": 50, "washout": 10, "n_train": 1000, "n_test": 300}


# ----------------------------------------------------------------------------- windows


@settings(max_examples=40, deadline=None)
@given(L=st.integers(2, 60), window=st.integers(1, 20), stride=st.integers(1, 25))
def test_windows_pair_each_step_with_the_next_one(L, window, stride):
    s = np.arange(L, dtype=float)[:, None] * np.array([1.0, -1.0])
    if L < window + 1:
        with pytest.raises(ValueError, match=f"hold no window of {window} \\+ 1 steps"):
            windows(s, s, window, stride, "toy", "train")
        return
    X, Y = windows(s, s, window, stride, "toy", "train")
    assert X.shape == Y.shape == ((L - window - 1) // stride + 1, window, 2)
    assert np.array_equal(Y[:, :-1], X[:, 1:]) and np.array_equal(Y[:, :, 0], X[:, :, 0] + 1)  # y[:, t] = s[t + 1]
    assert np.array_equal(X[:, 0, 0], np.arange(0, L - window, stride))  # starts every `stride` steps
    assert Y[-1, -1, 0] <= L - 1  # never reads past the part


def test_windows_of_an_input_output_pair_take_targets_one_step_later():
    u, out = np.arange(10.0)[:, None], 100 + np.arange(10.0)[:, None]
    X, Y = windows(u, out, 4, 4, "toy", "train")
    assert X[:, :, 0].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert Y[:, :, 0].tolist() == [[101, 102, 103, 104], [105, 106, 107, 108]]


# ----------------------------------------------------------------------------- the forecasting Datasets


@pytest.mark.parametrize("name", ["lorenz", "mackey-glass", "narma10"])
def test_series_are_forecasting_datasets_of_the_pinned_format(name):
    d = data.load(name, **SMALL)
    dim = 3 if name == "lorenz" else 1
    assert d.task == "forecasting" and d.n_classes == 0 and d.washout == 10 and d.vocab_size == 0
    assert d.X_train.shape == (19, 50, dim) and d.X_test.shape == (5, 50, dim)  # (1000 - 51) // 50 + 1 = 19
    assert d.y_train.shape == d.X_train.shape and d.d_in == dim and d.n_out == dim
    assert d.X_train.dtype == d.y_train.dtype == torch.float32


@pytest.mark.parametrize("name", ["lorenz", "mackey-glass"])
def test_autonomous_series_targets_are_the_next_input(name):
    d = data.load(name, **SMALL)
    for X, y in ((d.X_train, d.y_train), (d.X_test, d.y_test)):
        assert torch.equal(y[:, :-1], X[:, 1:])


@pytest.mark.parametrize("name", ["lorenz", "mackey-glass", "narma10"])
def test_series_are_standardised_with_training_statistics(name):
    d = data.load(name, window=50, washout=10, n_train=1000, n_test=300, stride=1)  # every training step is read
    first = torch.cat([d.X_train[0], d.X_train[1:, -1]])  # the training part's steps 0 .. 998
    assert torch.allclose(first.mean(0), torch.zeros(d.d_in), atol=0.01)
    assert torch.allclose(first.std(0), torch.ones(d.d_in), atol=0.01)
    assert not torch.allclose(d.X_test.mean((0, 1)), torch.zeros(d.d_in), atol=1e-3)  # test keeps its own offset


@pytest.mark.parametrize("name", ["lorenz", "mackey-glass", "narma10"])
def test_series_are_determined_by_their_seed(name):
    a, b, c = (data.load(name, **SMALL, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.allclose(a.X_train, c.X_train)


@pytest.mark.parametrize("name", ["lorenz", "mackey-glass", "narma10"])
def test_train_and_test_come_from_disjoint_parts_of_one_trajectory(name, monkeypatch):
    calls = []
    real = series.TRAJECTORIES[name]

    def spy(n, seed, **kw):
        calls.append(n)
        return real(n, seed, **kw)

    monkeypatch.setitem(series.TRAJECTORIES, name, spy)
    d = data.load(name, **SMALL, stride=1)
    assert calls == [1300]  # one trajectory: steps 0..999 train, 1000..1299 test
    u = real(1300, 0)[0].reshape(1300, -1)
    mu, sd = u[:1000].mean(0), u[:1000].std(0)
    assert np.allclose(d.X_train[-1, -1].numpy(), (u[998] - mu) / sd, atol=1e-5)  # last training input: step 998
    assert np.allclose(d.X_test[0, 0].numpy(), (u[1000] - mu) / sd, atol=1e-5)  # first test input: step 1000


def test_a_window_not_longer_than_the_washout_is_refused():
    with pytest.raises(ValueError, match="washout 50; allowed: washout < 50"):
        data.load("lorenz", window=50, washout=50, n_train=1000, n_test=300)


def test_a_part_too_short_for_one_window_is_refused():
    with pytest.raises(ValueError, match=r"'mackey-glass', test split: n_test = 40 steps hold no window of 50 \+ 1"):
        data.load("mackey-glass", window=50, washout=10, n_train=1000, n_test=40)


@pytest.mark.parametrize("bad", [{"window": 0}, {"stride": 0}, {"n_train": -5}])
def test_non_positive_sizes_are_refused(bad):
    with pytest.raises(ValueError, match=f"{next(iter(bad))} must be an int >= 1, got {next(iter(bad.values()))}"):
        data.load("narma10", **{**SMALL, **bad})


# ----------------------------------------------------------------------------- the systems


def test_lorenz_stays_on_the_known_attractor():
    s = series.lorenz_series(20_000, seed=1)
    x, y, z = s.T
    assert np.abs(x).max() < 25 and np.abs(y).max() < 30 and 0 < z.min() and z.max() < 55
    assert x.min() < -10 and x.max() > 10  # visits both wings
    assert 22 < z.mean() < 25  # the attractor's time-averaged z is about 23.5


@pytest.mark.parametrize("dt", [0.0, -0.01])
def test_lorenz_refuses_a_step_that_is_not_positive(dt):
    with pytest.raises(ValueError, match=f"dt must be > 0, got {dt}"):
        data.load("lorenz", **SMALL, dt=dt)


def test_lorenz_follows_its_equations():
    dt, sigma, rho, beta = 0.005, 10.0, 28.0, 8 / 3
    s = series.lorenz_series(2000, seed=2, dt=dt)
    ds = (s[2:] - s[:-2]) / (2 * dt)  # central difference, error O(dt^2)
    x, y, z = s[1:-1].T
    f = np.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z], axis=1)
    assert np.abs(ds - f).max() < 0.05 * np.abs(f).max()


def test_mackey_glass_tau_17_oscillates_in_its_known_range():
    s = series.mackey_glass_series(5000, seed=0)
    assert 0.2 < s.min() < 0.5 and 1.2 < s.max() < 1.45


def test_mackey_glass_follows_its_delay_equation():
    h = 0.1
    s = series.mackey_glass_series(3000, seed=5, dt=h)  # one sample per integration step
    D = round(17 / h)
    k = np.arange(D + 1, len(s) - 1)
    ds = (s[k + 1] - s[k - 1]) / (2 * h)
    f = 0.2 * s[k - D] / (1 + s[k - D] ** 10) - 0.1 * s[k]
    assert np.abs(ds - f).max() < 1e-3
    wrong_tau = 0.2 * s[k - D + 10] / (1 + s[k - D + 10] ** 10) - 0.1 * s[k]  # tau = 16 fits worse
    assert np.abs(ds - wrong_tau).max() > 10 * np.abs(ds - f).max()


def test_mackey_glass_refuses_a_delay_or_step_off_the_integration_grid():
    with pytest.raises(ValueError, match=r"tau = 17.05 must be a multiple of the integration step 0.1"):
        series.mackey_glass_series(100, seed=0, tau=17.05)
    with pytest.raises(ValueError, match=r"dt = 0.25 must be a multiple of the integration step 0.1"):
        data.load("mackey-glass", **SMALL, dt=0.25)


def test_narma10_recurrence_by_hand():
    u = np.array([0.1, 0.4, 0.2, 0.0, 0.5, 0.3, 0.1, 0.2, 0.4, 0.3, 0.2, 0.1, 0.5])
    y = series.narma10_output(u)
    expected = np.zeros(len(u))
    for t in range(len(u) - 1):  # y(t+1) = 0.3 y(t) + 0.05 y(t) sum_{i<10} y(t-i) + 1.5 u(t-9) u(t) + 0.1
        past = sum(expected[t - i] for i in range(10) if t - i >= 0)
        u9 = u[t - 9] if t >= 9 else 0.0
        expected[t + 1] = 0.3 * expected[t] + 0.05 * expected[t] * past + 1.5 * u9 * u[t] + 0.1
    assert np.allclose(y, expected, rtol=0, atol=1e-12)
    assert y[1] == pytest.approx(0.1) and y[2] == pytest.approx(0.3 * 0.1 + 0.05 * 0.01 + 0.1)
    assert y[10] - (0.3 * y[9] + 0.05 * y[9] * y[:10].sum() + 0.1) == pytest.approx(1.5 * u[0] * u[9])


def test_narma10_dataset_maps_the_input_to_the_system_output():
    u, out = series.narma10_series(1300, seed=0)
    assert u.min() >= 0 and u.max() <= 0.5
    d = data.load("narma10", **SMALL)
    mu_u, sd_u, mu_y, sd_y = u[:1000].mean(), u[:1000].std(), out[:1000].mean(), out[:1000].std()
    assert np.allclose(d.X_train[1, :, 0].numpy(), (u[50:100] - mu_u) / sd_u, atol=1e-5)  # X: the input u
    assert np.allclose(d.y_train[1, :, 0].numpy(), (out[51:101] - mu_y) / sd_y, atol=1e-5)  # y: output one step on
    assert not torch.allclose(d.y_train[:, :-1], d.X_train[:, 1:])  # not one step ahead of X


def test_narma10_replaces_a_diverging_draw_by_the_next_draw_of_its_seed():
    rng = np.random.default_rng(4)  # seed 4's first draw of 12,000 (+ 200) inputs diverges
    first, second = rng.uniform(0, 0.5, 12_200), rng.uniform(0, 0.5, 12_200)
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(series.narma10_output(first)).all()
    u, y = series.narma10_series(12_000, seed=4)
    assert np.array_equal(u, second[200:]) and np.abs(y).max() < 1
    assert np.array_equal(y, series.narma10_output(second)[200:])


def test_narma10_refuses_when_every_draw_diverges(monkeypatch):
    monkeypatch.setattr(series, "NARMA_DRAWS", 3)
    monkeypatch.setattr(series, "NARMA_BOUND", 0.05)  # every output exceeds it (y(1) = 0.1)
    with pytest.raises(ValueError, match="NARMA-10 diverged in all 3 input draws of seed 0 for n = 500 steps"):
        series.narma10_series(500, seed=0)
