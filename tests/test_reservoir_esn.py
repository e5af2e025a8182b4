"""What a reservoirpy user expects (reservoir_depth/esn.py, train.py, readout.py, cli.py).

- ESN(...).fit is the ridge readout of our reservoir at r = 0, the same as train() with epochs = 0 and
  readout = "ridge" (allowed now; refused with readout = "gradient").
- generate(n_steps, warmup) is a closed loop: its first output is the one-step prediction after the warmup,
  each later one the model's step fed with the previous output; refused when d_out != d_in.
- dtype = "float64" reaches training, a study's [train] table and the CLI; the CLI prints significant digits.
- The ridge system's condition number is numpy's; an ill-conditioned solve warns; a search never picks it.
- grid_search chooses by the median over draws (a diverged draw counts as inf); search runs end to end.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from reservoir_depth import data, esn
from reservoir_depth.cli import main
from reservoir_depth.readout import COND_MAX, Gram, RidgeConditionWarning
from reservoir_depth.study import Study
from reservoir_depth.train import TrainConfig, evaluate, free_run, generate, train

TINY_MG = dict(window=60, washout=10, n_train=600, n_test=240, seed=0)
TINY_LORENZ = dict(window=80, washout=20, n_train=800, n_test=320, seed=0)


def test_one_call_fit_is_train_with_zero_epochs():
    d = data.load("mackey-glass", **TINY_MG)
    fitted = esn.ESN(units=30, rho=0.8, leak=0.5, ridge=1e-6, seed=4).fit(d.X_train, d.y_train, washout=d.washout)
    model = esn.reservoir(1, 1, units=30, rho=0.8, leak=0.5, seed=4)
    model.readout.weight.requires_grad_(False)
    hist = train(model, d, TrainConfig(epochs=0, readout="ridge", ridge=1e-6, dtype="float64", progress=False))
    assert len(hist.epochs) == 1 and model.readout.weight.dtype == torch.float64
    assert torch.allclose(model.readout.weight, fitted.model_.readout.weight, rtol=1e-9, atol=1e-12)
    assert hist.final["test_nrmse"] == pytest.approx(fitted.score(d.X_test, d.y_test, d.washout), rel=1e-9)
    assert 1 < fitted.cond_ < COND_MAX and fitted.n_features_in_ == 1
    one = fitted.predict(d.X_test[0].numpy())  # one series (T, d) in, numpy out
    assert isinstance(one, np.ndarray) and one.shape == (d.X_test.shape[1], 1)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        TrainConfig(epochs=-1, readout="ridge")
    with pytest.raises(RuntimeError, match="not fitted"):
        esn.ESN().predict(d.X_test)
    with pytest.raises(ValueError, match="dtype must be one of"):
        esn.ESN(dtype="float16").fit(d.X_train, d.y_train)


def test_generate_is_a_closed_loop():
    d = data.load("lorenz", **TINY_LORENZ)
    fitted = esn.ESN(units=40, rho=0.9, leak=0.5, ridge=1e-6).fit(d.X_train, d.y_train, washout=d.washout)
    m, warm = fitted.model_, d.X_test[:, :30].double()
    out = generate(m, warm, 5)
    assert out.shape == (len(warm), 5, 3)
    assert torch.allclose(out[:, 0], m(warm)[:, -1])  # the first forecast: one step after the warmup
    state = m.states(warm)[:, -1]
    for k in range(1, 5):  # every later one: the model's step fed with the previous forecast
        y_k, state = m.step(out[:, k - 1], state)
        assert torch.allclose(y_k, out[:, k])
    assert torch.allclose(generate(m, warm, 3), out[:, :3])
    ref = free_run(m, torch.cat([warm, d.X_test[:, 30:34].double()], 1), 30)[:, 29:]
    assert torch.allclose(ref, out)
    series = fitted.generate(5, d.X_test[0, :30].numpy())  # reservoirpy-style: one series, numpy
    assert isinstance(series, np.ndarray) and np.allclose(series, out[0].numpy())
    narma = data.load("narma10", **TINY_MG)
    driven = esn.ESN(units=10).fit(narma.X_train, narma.y_train)
    assert driven.model_.d_in == 1
    lor = esn.ESN(units=10).fit(d.X_train, d.y_train[..., :1])
    with pytest.raises(ValueError, match="predicts 1 outputs but reads 3 inputs"):
        lor.generate(4, d.X_test[:, :10])
    with pytest.raises(ValueError, match="n_steps must be an int >= 1"):
        fitted.generate(0, d.X_test[:, :10])


def test_float64_training_study_and_cli(capsys, monkeypatch):
    d = data.load("mackey-glass", **TINY_MG)
    m = esn.reservoir(1, 1, units=10, dtype="float32")
    hist = train(m, d, TrainConfig(epochs=0, readout="ridge", dtype="float64", progress=False))
    assert next(m.parameters()).dtype == torch.float64 and math.isfinite(hist.final["test_nrmse"])
    with pytest.raises(ValueError, match="dtype must be one of"):
        TrainConfig(dtype="bfloat16")
    study = Study.from_dict({"study": "s", "dataset": {"name": "mackey-glass", **TINY_MG}, "seeds": [0],
                             "arch": {"name": "reservoir", "units": 10}, "train": {"dtype": "float64"}})
    assert study.runs()[0].config()["train"]["dtype"] == "float64"
    plain = Study.from_dict({**study.to_dict(), "train": {}})
    assert "dtype" not in plain.runs()[0].config()["train"]  # the default keeps stored run ids
    from reservoir_depth import cli

    seen = {}

    def spy(model, d, cfg):
        seen["dtype"], seen["hist"] = cfg.dtype, cli_train(model, d, cfg)
        return seen["hist"]

    cli_train = cli.train
    monkeypatch.setattr(cli, "train", spy)  # the name the command calls
    kw = [f"--data-kw={k}={v}" for k, v in TINY_MG.items()]
    assert main(["train", "--data", "mackey-glass", *kw, "--arch", "reservoir", "--arch-kw", "units=20", "--rank", "0",
                 "--epochs", "0", "--readout", "ridge", "--ridge", "1e-9", "--dtype", "float64",
                 "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if "test_loss" in line)
    printed = dict(zip(lines[header].split(), lines[header + 1].split()))
    mse = seen["hist"].final["test_loss"]
    assert seen["dtype"] == "float64" and mse < 0.01  # 4 decimals would keep 1 or 2 significant digits of it
    assert float(printed["test_loss"]) == pytest.approx(mse, rel=1e-3)  # significant digits: 0.005824, not 0.0058


def test_condition_number_and_ill_conditioned_warning():
    g = torch.Generator().manual_seed(0)
    H = torch.randn(200, 6, generator=g, dtype=torch.float64)
    Y = torch.randn(200, 2, generator=g, dtype=torch.float64)
    gram = Gram().add(H, Y)
    Hc = (H - H.mean(0)).numpy()
    assert gram.condition(0.5) == pytest.approx(np.linalg.cond(Hc.T @ Hc + 0.5 * np.eye(6)), rel=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gram.solve(0.0)  # well conditioned: silent
    collinear = Gram().add(torch.cat([H, H[:, :1] * (1 + 1e-9)], 1), Y)
    assert 1e300 > collinear.condition(1e-14) > COND_MAX
    with pytest.warns(RidgeConditionWarning, match="condition number .* at lambda = 1e-14"):
        collinear.solve(1e-14)
    assert collinear.condition(1e-12) > COND_MAX and collinear.condition(1.0) < COND_MAX


def test_grid_search_chooses_by_the_median_over_draws_and_skips_ill_conditioned_lambdas():
    # per draw: k = 0: 1, 1, 100 (median 1, mean 34); k = 1: 2, 2, 2 (mean 2); k = 2: 0.1, nan, nan (2 of 3
    # diverged: median inf). lambda 1e-12 would be best (smaller m) but its solve is ill-conditioned
    values = {0: [1.0, 1.0, 100.0], 1: [2.0, 2.0, 2.0], 2: [0.1, math.nan, math.nan]}

    def score(cfg, seed, ridges):
        return [{"m": values[cfg["k"]][seed] * (1 + lam), "cond": 1e3 if lam > 1e-9 else 1e15} for lam in ridges]

    s = esn.grid_search(score, {"k": [0, 1, 2]}, [1e-12, 1e-3], [0, 1, 2], "m")
    assert s.best == {"k": 0.0, "ridge": 1e-3}
    assert len(s.table) == 6 and set(s.table["finite"]) == {3, 1}
    assert s.edges == ["k"]  # the choice sits on the grid's edge
    with pytest.raises(ValueError, match="distinct reservoir draws"):
        esn.grid_search(score, {"k": [0]}, [1e-3], [0, 0], "m")


def test_a_choice_on_an_edge_extends_its_axis_from_the_chosen_point():
    """m = (k - 5)^2 + (leak - 2)^2 on k in {1, 2, 3}, leak in {0.5, 1}: k grows 4.5, 6.75 (geometric steps, the
    other knob fixed) until the choice is inside; leak stops at its bound 1."""
    seen = []

    def score(cfg, seed, ridges):
        seen.append(dict(cfg))
        return [{"m": (cfg["k"] - 5) ** 2 + (cfg["leak"] - 2) ** 2, "cond": 1.0} for _ in ridges]

    s = esn.grid_search(score, {"k": [1, 2, 3], "leak": [0.5, 1.0]}, [1e-6], [0], "m", extend=4)
    assert s.best == {"k": 4.5, "leak": 1.0, "ridge": 1e-6} and s.edges == []
    assert seen[6:] == [{"k": 4.5, "leak": 1.0}, {"k": 6.75, "leak": 1.0}]  # only along k, from the choice
    flat = esn.grid_search(score, {"k": [1, 2, 3], "leak": [0.5, 1.0]}, [1e-6], [0], "m")  # extend=0: as before
    assert flat.best["k"] == 3 and flat.edges == ["k"]


def test_search_runs_on_windows_and_refuses_bad_arguments():
    d = data.load("mackey-glass", **TINY_MG)
    grid = {"rho": [0.5, 0.9], "leak": [0.5], "input_scaling": [1.0], "bias_scaling": [0.0, 1.0]}
    s = esn.search(d.X_train, d.y_train, d.washout, grid=grid, ridges=(1e-6, 1e-3), seeds=(0, 1, 2), units=20)
    assert len(s.table) >= 8 and s.select == "nrmse_free" and s.seeds == (0, 1, 2)  # 8: the grid, + extensions
    best = s.table.loc[s.table["nrmse_free"].idxmin()]
    assert s.best["rho"] == best["rho"] and s.best["ridge"] == best["ridge"]
    assert set(s.best) == {"rho", "leak", "input_scaling", "bias_scaling", "ridge"}
    fitted = esn.ESN(units=20, seed=7, **s.best).fit(d.X_train, d.y_train, washout=d.washout)  # fresh draw
    assert fitted.score(d.X_test, d.y_test, d.washout) < 0.2
    X, y, n = d.X_train.double(), d.y_train.double(), len(d.X_train) - 2  # 20 % of 9 windows validate
    cfg = {"rho": 0.9, "leak": 0.5, "input_scaling": 1.0, "bias_scaling": 0.0}
    row = esn.esn_scores(X[:n], y[:n], X[n:], y[n:], d.washout, cfg, 0, [1e-6], units=20)[0]
    ev = evaluate(esn.ESN(units=20, ridge=1e-6, **cfg).fit(X[:n], y[:n], washout=d.washout).model_, X[n:], y[n:],
                  task="forecasting", washout=d.washout, free=True)  # the trainer's metrics
    assert row["nrmse"] == pytest.approx(ev["nrmse"], rel=1e-9)
    assert row["nrmse_free"] == pytest.approx(ev["nrmse_free"], rel=1e-9)
    with pytest.raises(ValueError, match="select must be one of"):
        esn.search(d.X_train, d.y_train, d.washout, select="mse")
    with pytest.raises(ValueError, match="unknown reservoir knob"):
        esn.search(d.X_train, d.y_train, d.washout, grid={"sr": [0.9]}, seeds=(0,), units=5)
