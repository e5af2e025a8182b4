"""The closed-form ridge readout (reservoir_depth/readout.py) and its hook in training.

- ridge / Gram: the solution of the centred normal equations is the minimiser (the objective's
  gradient vanishes there, hypothesis), batches add up to one pass, bad lambdas are refused.
- TrainConfig(readout="ridge"): the reservoir's readout is the ridge readout of its states after
  training (AdamW never moves it); at r = 0 with nothing else trained it is one row, an ESN.
- Run ids: readout and ridge at their defaults leave a run's config and id as stored.
- The reservoir equals reservoirpy's ESN given the same W, W_in, bias and leak on the same arrays
  (states, and ridge readout predictions at every lambda of esn.RIDGES, where the solve is well
  conditioned); skipped without reservoirpy.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reservoir_depth import data
from reservoir_depth.cli import main
from reservoir_depth.models.reservoir import Reservoir
from reservoir_depth.esn import RIDGES
from reservoir_depth.readout import COND_MAX, Gram, fit_readout, ridge
from reservoir_depth.study import Study
from reservoir_depth.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
TINY_MG = dict(window=60, washout=10, n_train=600, n_test=240, seed=0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 40), units=st.integers(1, 6), d=st.integers(1, 3), lam=st.floats(1e-3, 10.0),
       seed=st.integers(0, 2**16))
def test_ridge_solution_is_the_minimiser(n, units, d, lam, seed):
    """d/dW and d/dc of sum ||y - W h - c||^2 + lambda ||W||^2 vanish at the solution (c unpenalised)."""
    g = torch.Generator().manual_seed(seed)
    H, Y = torch.randn(n, units, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    W, c = ridge(H, Y, lam)
    R = H @ W.T + c - Y
    assert torch.allclose(R.T @ H + lam * W, torch.zeros_like(W), atol=1e-8)
    assert torch.allclose(R.sum(0), torch.zeros(d, dtype=torch.float64), atol=1e-8)


def test_gram_adds_batches_and_refuses_bad_lambdas():
    g = torch.Generator().manual_seed(0)
    H, Y = torch.randn(5, 30, 4, generator=g), torch.randn(5, 30, 2, generator=g)
    W, c = ridge(H, Y, 0.1)
    W2, c2 = Gram().add(H[:2], Y[:2]).add(H[2:], Y[2:]).solve(0.1)
    assert torch.allclose(W, W2) and torch.allclose(c, c2)
    for bad in (-1.0, float("nan"), float("inf"), True, "1e-6"):
        with pytest.raises(ValueError, match="ridge"):
            ridge(H, Y, bad)
        with pytest.raises(ValueError, match="ridge"):
            TrainConfig(readout="ridge", ridge=bad)
    with pytest.raises(ValueError, match="readout must be one of"):
        TrainConfig(readout="lsq")
    with pytest.raises(ValueError, match="no rows"):
        Gram().solve(1.0)


def test_input_and_bias_scalings_scale_the_drive():
    """u_t = sigma_in W_in x_t + sigma_b b; at sigma = 1 the states are as before."""
    torch.manual_seed(0)
    m = Reservoir(2, 1, units=5, input_scaling=0.3, bias_scaling=2.0)
    x = torch.randn(3, 2)
    assert torch.allclose(m._drive(x), 0.3 * x @ m.W_in.weight.T + 2.0 * m.W_in.bias)
    m.input_scaling = m.bias_scaling = 1.0
    assert torch.equal(m._drive(x), m.W_in(x))
    for k in ("input_scaling", "bias_scaling"):
        with pytest.raises(ValueError, match=k):
            Reservoir(2, 1, **{k: -1.0})


def _reservoir(d, units=20, seed=0):
    torch.manual_seed(seed)
    return Reservoir(d.d_in, d.n_out, units=units, leak=0.5, rho=0.9)


def test_training_with_a_ridge_readout_leaves_the_ridge_solution():
    """After training (W trained by AdamW, the head solved), the head is the ridge readout of the final
    states; with nothing but the head trainable, one row (epoch 0: an ESN) and the same readout."""
    d = data.load("mackey-glass", **TINY_MG)
    m = _reservoir(d)
    m.W_in.requires_grad_(False)
    hist = train(m, d, TrainConfig(epochs=2, lr=1e-2, batch_size=4, readout="ridge", ridge=1e-4, progress=False))
    assert [r["epoch"] for r in hist.epochs] == [0, 1, 2]
    W, c = ridge(m.states(d.X_train)[:, d.washout:].detach(), d.y_train[:, d.washout:], 1e-4)
    assert torch.allclose(m.readout.weight.double(), W, atol=1e-4) and torch.allclose(m.readout.bias.double(), c,
                                                                                      atol=1e-4)
    esn = _reservoir(d)
    for p in (*esn.W_in.parameters(), *esn.W.parameters()):
        p.requires_grad_(False)
    hist = train(esn, d, TrainConfig(epochs=5, readout="ridge", ridge=1e-4, progress=False))
    assert len(hist.epochs) == 1 and hist.final["test_nrmse"] < 0.1
    ref = fit_readout(_reservoir(d), d.X_train, d.y_train, 1e-4, d.washout)
    assert torch.allclose(esn.readout.weight, ref.readout.weight) and torch.allclose(esn.readout.bias, ref.readout.bias)


def test_ridge_readout_refuses_models_and_tasks_it_does_not_fit():
    d = data.load("mackey-glass", **TINY_MG)
    with pytest.raises(ValueError, match="states"):
        train(nn.Sequential(nn.Linear(1, 1)), d, TrainConfig(epochs=1, readout="ridge", free_run=False,
                                                             progress=False))
    digits = data.load("digits")
    with pytest.raises(ValueError, match="forecasting task"):
        train(nn.Linear(digits.d_in, digits.n_out), digits, TrainConfig(epochs=1, readout="ridge", progress=False))


def test_defaults_keep_stored_run_ids_and_a_set_readout_is_recorded():
    study = Study.load(ROOT / "experiments" / "reservoir_mackey_glass.toml")
    with sqlite3.connect(ROOT / "docs" / "results" / "reservoir_mackey_glass" / "runs.sqlite") as db:
        stored = {r for (r,) in db.execute("SELECT run_id FROM runs")}
    assert stored and stored <= {r.run_id for r in study.runs()}
    run = study.runs()[0]
    assert "readout" not in run.config()["train"] and "ridge" not in run.config()["train"]
    ridged = Study.from_dict({**study.to_dict(), "train": {**study.train, "readout": "ridge", "ridge": 1e-8}})
    cfg = ridged.runs()[0].config()["train"]
    assert cfg["readout"] == "ridge" and cfg["ridge"] == 1e-8 and ridged.runs()[0].run_id != run.run_id


def test_cli_readout_flags_reach_training(monkeypatch, capsys):
    seen = {}
    from reservoir_depth import cli

    real = cli.train

    def spy(model, d, cfg):
        seen.update(readout=cfg.readout, ridge=cfg.ridge)
        return real(model, d, cfg)

    monkeypatch.setattr(cli, "train", spy)  # the name the command calls
    kw = [f"--data-kw={k}={v}" for k, v in TINY_MG.items()]
    assert main(["train", "--data", "mackey-glass", *kw, "--arch", "reservoir", "--arch-kw", "units=10", "--rank", "0",
                 "--epochs", "1", "--readout", "ridge", "--ridge", "1e-5", "--no-progress"]) == 0
    assert seen == {"readout": "ridge", "ridge": 1e-5}


# ----------------------------------------------------------------------------- reservoirpy's ESN

def test_reservoir_equals_reservoirpys_esn():
    """Given the same W, W_in, bias and leak, reservoirpy's Reservoir (x[t+1] = (1 - lr) x[t] + lr tanh(W x[t] +
    Win u[t+1] + bias), zero initial state) gives our states, and its Ridge (fit_bias=True) our readout's
    predictions, on the project's Lorenz windows."""
    rpy = pytest.importorskip("reservoirpy.nodes", reason="the comparison needs `pip install reservoirpy`")
    d = data.load("lorenz", **TINY_MG)
    m = Reservoir(d.d_in, d.n_out, units=30, leak=0.37, rho=1.1, input_scaling=0.5, bias_scaling=0.8).double()
    g = np.random.default_rng(0)
    W, Win, b = g.normal(size=(30, 30)) * 0.2, g.uniform(-1, 1, size=(30, d.d_in)), g.uniform(-1, 1, size=30)
    with torch.no_grad():
        m.W.weight.copy_(torch.from_numpy(W))
        m.W_in.weight.copy_(torch.from_numpy(Win))
        m.W_in.bias.copy_(torch.from_numpy(b))
    res = rpy.Reservoir(W=W, Win=0.5 * Win, bias=0.8 * b, lr=0.37, input_dim=d.d_in)
    X, y = d.X_train.double(), d.y_train.double()

    def theirs(windows):
        out = []
        for w in windows:
            if res.initialized:
                res.reset()
            out.append(res.run(w.numpy()))
        return np.stack(out)

    ours = m.states(X).detach().numpy()
    assert np.allclose(ours, theirs(X), rtol=1e-10, atol=1e-12)
    H = torch.from_numpy(ours[:, d.washout:])
    Xt = d.X_test.double()
    for lam in (1e-3, *RIDGES):  # every lambda the ESN comparison and esn.search use, in float64
        assert Gram().add(H, y[:, d.washout:]).condition(lam) <= COND_MAX  # where the solve is trusted
        head = rpy.Ridge(ridge=lam)
        head.fit(theirs(X)[:, d.washout:].reshape(-1, 30), y[:, d.washout:].reshape(-1, d.n_out).numpy())
        fit_readout(m, X, y, lam, d.washout)
        pred_theirs = theirs(Xt) @ np.asarray(head.Wout) + np.asarray(head.bias).reshape(-1)
        assert np.allclose(m(Xt).detach().numpy(), pred_theirs, rtol=1e-7, atol=1e-9), lam


def test_a_non_finite_target_or_state_is_named_not_read_as_degenerate_states():
    """A NaN target was diagnosed as "the states are degenerate: raise lambda", which no lambda fixes."""
    from reservoir_depth.readout import Gram

    H, Y = torch.randn(20, 4), torch.randn(20, 1)
    Y[3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"targets .*1 non-finite"):
        Gram().add(H, Y)
    H[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"states hold 1 non-finite"):
        Gram().add(H, torch.randn(20, 1))
