"""Reservoir theory as code (reservoir_depth/esn.py): memory capacity, the echo-state property, forecast measures.

- A linear reservoir h_t = W h_{t-1} + w u(t), W = rho Q (Q orthogonal), generic w: its exact memory curve sums
  to N (Jaeger 2001), and the estimate from a finite run is close to N (hypothesis over N, rho and seeds).
- A tanh reservoir's memory capacity is at most N.
- The echo-state property: with sigma_max(W) < 1 two trajectories under the same input contract at least as fast
  as the Lipschitz bound ((1 - a) + a sigma_max)^t; with rho(W) = 3, zero input and zero bias they do not.
- Valid prediction time and NRMSE at a horizon on hand-made errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reservoir_depth import esn


def _orthogonal(n: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(g.normal(size=(n, n)))
    return rho * Q, g.normal(size=n)


def _linear_states(W: np.ndarray, w: np.ndarray, u: np.ndarray) -> np.ndarray:
    H, h = np.empty((len(u), len(w))), np.zeros(len(w))
    for t, u_t in enumerate(u):
        h = W @ h + w * u_t
        H[t] = h
    return H


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 30), rho=st.floats(0.8, 0.95), seed=st.integers(0, 2**16))  # C well conditioned
def test_linear_orthogonal_reservoir_has_memory_capacity_n_exactly(n, rho, seed):
    W, w = _orthogonal(n, rho, seed)
    k = int(np.ceil(np.log(1e-16) / np.log(rho))) + 1  # rho^(2k) < 1e-32: the tail is nothing
    curve = esn.linear_memory_curve(W, w, k)
    assert np.all(curve >= -1e-9) and np.all(curve <= 1 + 1e-9)
    assert curve.sum() == pytest.approx(n, rel=1e-6)


@settings(max_examples=8, deadline=None)
@given(n=st.integers(3, 16), rho=st.floats(0.8, 0.92), seed=st.integers(0, 2**16))
def test_memory_capacity_estimated_from_a_run_is_close_to_n(n, rho, seed):
    """The estimator (ridge readouts on one half of a run, MC_k on the other) finds MC within 10 % of N."""
    W, w = _orthogonal(n, rho, seed)
    k_max = int(np.searchsorted(np.cumsum(esn.linear_memory_curve(W, w, 400)), 0.995 * n)) + 1
    u = np.random.default_rng(seed + 1).uniform(-1, 1, 6000)
    mc = esn.memory_curve(_linear_states(W, w, u), u, k_max, washout=100).sum()
    assert abs(mc - n) <= 0.1 * n


def test_memory_capacity_of_a_tanh_reservoir_is_at_most_n():
    r = esn.reservoir(1, 1, units=20, rho=0.9, leak=1.0, input_scaling=0.5, bias_scaling=0.0, seed=3)
    mc = esn.memory_capacity(r, n_steps=3000, k_max=60, seed=1)
    assert 1 < mc.total <= 20 * 1.05 and mc.curve.shape == (60,) and mc.units == 20
    with pytest.raises(ValueError, match="scalar input"):
        esn.memory_capacity(esn.reservoir(2, 1, units=5))
    with pytest.raises(ValueError, match="k_max"):
        esn.memory_curve(np.zeros((100, 3)), np.zeros(100), 0)


def _with_w(units: int, leak: float, W: np.ndarray, seed: int = 0, bias: float = 1.0) -> torch.nn.Module:
    r = esn.reservoir(1, 1, units=units, leak=leak, bias_scaling=bias, seed=seed)
    with torch.no_grad():
        r.W.weight.copy_(torch.from_numpy(W))
    return r


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), leak=st.floats(0.1, 1.0), sigma=st.floats(0.3, 0.95))
def test_trajectories_contract_at_least_as_fast_as_the_lipschitz_bound(seed, leak, sigma):
    W = np.random.default_rng(seed).normal(size=(15, 15))
    W *= sigma / np.linalg.norm(W, 2)
    check = esn.echo_state(_with_w(15, leak, W, seed), n_steps=200, seed=seed)
    assert check.sigma_max == pytest.approx(sigma, rel=1e-9) and check.sufficient
    assert check.necessary  # rho((1 - a) I + a W) <= (1 - a) + a sigma_max < 1
    bound = check.lipschitz ** np.arange(201) * check.distances[0]
    assert np.all(check.distances <= bound * (1 + 1e-9) + 1e-13)  # + the roundoff floor of states ~ 1


def test_echo_state_fails_without_contraction():
    """rho(W) = 3, zero input, zero bias: h = 0 is unstable and the trajectories from two states stay apart."""
    W = np.random.default_rng(0).normal(size=(20, 20))
    W *= 3 / max(abs(np.linalg.eigvals(W)))
    r = _with_w(20, 1.0, W, bias=0.0)
    check = esn.echo_state(r, x=torch.zeros(1, 300, 1), seed=1)
    assert check.rho == pytest.approx(3, rel=1e-6) and not check.necessary and not check.sufficient
    assert not check.empirical and check.contraction > 1e-2
    ok = esn.echo_state(esn.reservoir(1, 1, units=20, rho=0.5, leak=0.5), n_steps=500)
    assert ok.empirical and ok.rho == pytest.approx(0.5, rel=1e-6)


def test_valid_prediction_time_and_horizon_nrmse():
    y = np.zeros((2, 10, 2))
    pred = y.copy()
    pred[0, 7:] = 1.0  # window 0: the normalised error jumps to 1 at step 7; window 1: never wrong
    vpt = esn.valid_prediction_time(pred, y, std=1.0, dt=0.02, lyapunov=0.9, threshold=0.4)
    assert vpt == pytest.approx([7 * 0.02 * 0.9, 10 * 0.02 * 0.9])
    pred[1, 3, 0] = 2.0  # at horizon 4: squared errors 0 + 0 (window 0), 4 + 0 (window 1) over 4 entries
    assert esn.horizon_nrmse(pred, y, std=2.0, k=4) == pytest.approx(1.0 / 2.0)
    with pytest.raises(ValueError, match="horizon k"):
        esn.horizon_nrmse(pred, y, std=1.0, k=11)
