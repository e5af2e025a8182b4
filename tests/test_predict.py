"""Tests of reservoir_depth.predict: r* targets from the stores, predictors at init, leave-one-out evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reservoir_depth.data.dataset import Dataset
from reservoir_depth.predict import (DataSpectrum, GradientSpectrum, LayerTaskSpectrum, ProbeSpectrum, calibrate,
                                     evaluate, hit, permutation_pvalue, study_of, target)
from reservoir_depth.saturation import saturation
from reservoir_depth.results import ResultsStore
from reservoir_depth.scaffold import ScaffoldConfig, scaffold, scaffold_layers
from reservoir_depth.tasks import metric_of

FAST = settings(deadline=None, max_examples=10)
ROOT = Path(__file__).resolve().parents[1]


def planted(k: int, d: int = 16, n: int = 512, seed: int = 0):
    """A scaffolded linear layer W_seed and a regression task y = (W_seed + U V^T) x with U V^T of rank k:
    at init the residual is -U V^T x, so dL/dW = -(2/n) U V^T X^T X has rank k exactly."""
    model = scaffold(nn.Sequential(nn.Linear(d, d, bias=False)), ScaffoldConfig(target_modules=["0"], r=0,
                                                                                  root_seed=seed))
    g = torch.Generator().manual_seed(seed)
    (_, layer), = scaffold_layers(model)
    W = layer.W_seed.float()
    U, V = torch.randn(d, k, generator=g), torch.randn(d, k, generator=g)
    X = torch.randn(n, d, generator=g)
    Y = X @ (W + U @ V.T).T
    return model, Dataset("planted", X, Y, X[:8], Y[:8], n_classes=0, task="regression")


@FAST
@given(k=st.integers(1, 6), seed=st.integers(0, 100))
def test_gradient_spectrum_counts_a_planted_rank(k, seed):
    model, d = planted(k, seed=seed)
    est = GradientSpectrum(k=2, batch_size=512, measure="k_0.99").fit(model, d)
    assert est.spectra_["0.weight"].rank(1e-8) == k  # the gradient's rank is the planted one
    assert 1 <= est.r_ <= k
    assert set(est.per_layer_) == {"0.weight"}  # the target weight, by its name in the plain copy
    assert est.seconds_ >= 0


def test_gradient_spectrum_stack_sees_at_least_the_mean():
    model, d = planted(3)
    mean = GradientSpectrum(k=4, batch_size=64, measure="k_0.99").fit(model, d)
    stack = GradientSpectrum(k=4, batch_size=64, measure="k_0.99", accumulate="stack").fit(model, d)
    assert mean.spectra_["0.weight"].rank(1e-8) == stack.spectra_["0.weight"].rank(1e-8) == 3  # every batch gradient lies in the same rank-3 column space


def test_probe_reads_the_adapter_of_a_copy():
    model, d = planted(2)
    model = scaffold(nn.Sequential(nn.Linear(16, 16, bias=False)), ScaffoldConfig(target_modules=["0"], r=8))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    est = ProbeSpectrum(steps=5, lr=1e-2, batch_size=64, measure="participation_ratio").fit(model, d)
    assert 1 <= est.r_ <= 8
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the model itself never trains


def test_layer_task_spectrum_is_bounded_by_c_minus_1():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(300, 12, generator=g), torch.arange(300) % 4
    X[:, :4] += 3 * nn.functional.one_hot(y, 4).float()
    d = Dataset("four", X, y, X[:10], y[:10], n_classes=4)
    model = scaffold(nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 4)),
                     ScaffoldConfig(target_modules=["0", "2"], r=0))
    est = LayerTaskSpectrum(n_rows=300, measure="k_0.99").fit(model, d)
    assert set(est.per_layer_) == {"0", "2"}
    assert all(1 <= v <= 3 for v in est.per_layer_.values())  # between-class rank <= C - 1
    assert DataSpectrum("task", measure="k_0.99").fit(None, d).r_ <= 3


@pytest.mark.parametrize("est, message", [(GradientSpectrum(measure="k_7"), "measure must be one of"),
                                          (GradientSpectrum(k=0), "k must be an int >= 1"),
                                          (GradientSpectrum(accumulate="sum"), "accumulate must be"),
                                          (ProbeSpectrum(steps=0), "steps must be"),
                                          (DataSpectrum(kind="labels"), "kind must be")])
def test_bad_parameters_are_named(est, message):
    model, d = planted(1)
    with pytest.raises(ValueError, match=message):
        est.fit(model, d)


def test_hit_rules():
    assert hit(12.0, 8.0, 32) and hit(4.0, 8.0, 32) and not hit(17.0, 8.0, 32) and not hit(3.9, 8.0, 32)
    assert hit(1.5, 0.0, 16) and not hit(3.0, 0.0, 16)  # r* = 0 is read as 1
    assert hit(40.0, math.inf, 32) and not hit(30.0, math.inf, 32)  # censored: only above max_rank
    assert not hit(math.nan, 8.0, 32)


def test_calibrate_is_the_geometric_mean_ratio():
    assert calibrate([1, 2, 4, math.nan], [3, 6, 12, 5]) == pytest.approx(3.0)
    assert calibrate([1, 2], [2, 32]) == pytest.approx(math.sqrt(2 * 16))
    assert calibrate([1, 2], [math.inf, math.inf]) != calibrate([1, 2], [math.inf, math.inf])  # NaN: no pair


def _table(raw, r_star, max_rank=32):
    return pd.DataFrame({"benchmark": [f"b{i}" for i in range(len(raw))], "predictor": "p", "raw": raw,
                         "r_star": r_star, "max_rank": max_rank, "seconds": 1.0, "run_seconds": 100.0, "C": 10})


def test_evaluate_leaves_the_held_out_benchmark_out():
    # a perfectly proportional predictor hits everywhere; the scale never sees the held-out r*
    ev, summary = evaluate(_table([1.0, 2.0, 4.0, 8.0], [3.0, 6.0, 12.0, 24.0]), constants=False)
    assert ev["hit"].all() and np.allclose(ev["scale"], 3.0)
    ev, _ = evaluate(_table([1.0, 1.0, 1.0], [2.0, 2.0, 200.0], max_rank=256), constants=False)
    assert ev.loc[ev["benchmark"] == "b2", "pred"].item() == pytest.approx(2.0)  # fit on b0, b1 only
    s = summary.set_index("predictor").loc["p"]
    assert s["fraction within 2x"] == 1.0 and s["median cost fraction"] == pytest.approx(0.01)


def test_evaluate_constants():
    ev, summary = evaluate(_table([1.0, 2.0, 4.0], [4.0, 8.0, 64.0], max_rank=64))
    med = ev[ev["predictor"] == "constant: median r* of the others"].set_index("benchmark")["pred"]
    assert med.to_dict() == {"b0": 36.0, "b1": 34.0, "b2": 6.0}
    assert (ev[ev["predictor"] == "constant: C - 1"]["pred"] == 9).all()


def test_permutation_pvalue():
    rho, p = permutation_pvalue([1, 2, 3, 4, 5, 6], [2, 4, 6, 8, 10, 12], n_perm=4000)
    assert rho == pytest.approx(1.0) and p == pytest.approx(1 / 720, abs=2e-3)
    assert math.isnan(permutation_pvalue([1, 1, 1], [1, 2, 3])[0])


def test_target_is_the_reports_r_star():
    folder = ROOT / "docs/results/digits_linear_head"
    study = study_of(folder, ROOT / "experiments")
    row = target(folder, ROOT / "experiments")
    m = metric_of("test_acc")
    sr = saturation(study.frame(ResultsStore(folder / "runs.sqlite")), study, "test_acc", m.headline_eps)
    assert (row["metric"], row["eps"], row["tolerance"]) == ("test_acc", 0.01, "absolute")
    assert row["r_star"] == sr.r_star_ and row["max_rank"] == sr.max_rank_


def test_cli_predict_prints_per_layer_and_the_max(capsys):
    from reservoir_depth.cli import main

    assert main(["predict", "--scale", "2", "--measure", "stable_rank"]) == 0
    out = capsys.readouterr().out
    assert "layers.0.weight" in out and "nothing trained" in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| layers.")]
    raw, pred = float(rows[0][2]), float(rows[0][3])
    assert pred == pytest.approx(2 * raw, rel=1e-3)
    assert main(["predict", "--scale", "0"]) != 0
    assert "scale must be a finite number > 0, got 0.0" in capsys.readouterr().err


def test_init_model_takes_the_studys_rank_caps_and_full_rank_reads_the_targets():
    """A model at a rank past a narrow layer is built with the study's binding caps (Study.rank_caps);
    full_rank is the largest rank any target can hold (min(d_in, d_out), under the family's caps)."""
    from reservoir_depth.predict import full_rank, init_model
    from reservoir_depth.study import Study

    study = Study.from_dict({"study": "s", "dataset": "digits", "seeds": [0], "ranks": [0, 64],
                             "arch": {"name": "mlp", "hidden": [48, 32]}, "rank_caps": {"layers.1": 32}})
    model, _ = init_model(study, rank=48)
    assert {n: layer.r for n, layer in scaffold_layers(model)} == {"layers.0": 48, "layers.1": 32}
    assert full_rank(study) == 48  # layers.0 is 48 x 64, layers.1 32 x 48
    llama = Study.from_dict({"study": "l", "dataset": {"name": "shakespeare-char", "context": 32, "n_train": 4096,
                                                       "n_test": 1024}, "seeds": [0], "ranks": [0],
                             "arch": {"name": "llama", "size": "3m", "context": 32, "adapters": "attention"}})
    assert full_rank(llama) == 256  # q, k, v, o are 256 x 256; the SwiGLU layers are capped at 0


def test_search_replay_on_a_store_finds_the_grid_r_star_and_counts_runs():
    from reservoir_depth.predict import search_replay

    folder = ROOT / "docs/results/digits_mlp"
    row = target(folder, ROOT / "experiments")
    exact = search_replay(folder, row["r_star"], ROOT / "experiments")
    assert exact["r_star, from prediction"] == exact["r_star, doubling"] == exact["r_star"] == row["r_star"]
    assert exact["runs, from prediction"] <= 2 * exact["seeds"] < exact["runs, grid"]
    far = search_replay(folder, 10_000, ROOT / "experiments")  # a prediction past the grid starts at its top
    assert far["r_star, from prediction"] == row["r_star"] and far["runs, from prediction"] <= far["runs, grid"]


def test_cli_predict_prints_each_tolerance_with_its_calibration(capsys, monkeypatch):
    """Without --scale, a calibrated measure prints the predicted r* at each of the metric's tolerances:
    the max over layers times that tolerance's own scale (predict.CALIBRATION)."""
    from reservoir_depth import cli, predict

    monkeypatch.setitem(predict.CALIBRATION, "participation_ratio", (1.0, 2.0, 4.0))
    assert cli.main(["predict"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines()
            if line.startswith(("| tight", "| headline", "| loose"))}
    assert [rows[k][2].strip() for k in ("tight", "headline", "loose")] == [
        "0.005 (0.50 pp, absolute)", "0.01 (1.00 pp, absolute)", "0.02 (2.00 pp, absolute)"]
    pred = {k: float(v[4]) for k, v in rows.items()}
    assert pred["headline"] == pytest.approx(2 * pred["tight"], rel=1e-2)
    assert pred["loose"] == pytest.approx(4 * pred["tight"], rel=1e-2)
    monkeypatch.delitem(predict.CALIBRATION, "participation_ratio")
    assert cli.main(["predict"]) == 0 and "x 1, in" in capsys.readouterr().out  # uncalibrated: the raw value
    with pytest.raises(ValueError, match=r"no calibration for measure 'participation_ratio'"):
        predict.per_tolerance(predict.study_of(ROOT / "docs/results/digits_mlp", ROOT / "experiments"), 3.0)


def test_target_at_each_tolerance_level():
    folder = ROOT / "docs/results/digits_mlp"
    rows = [target(folder, ROOT / "experiments", level) for level in (0, 1, 2)]
    assert [r["eps"] for r in rows] == [0.005, 0.01, 0.02]
    assert rows[1] == target(folder, ROOT / "experiments")
    assert rows[0]["r_star"] >= rows[1]["r_star"] >= rows[2]["r_star"]  # a looser tolerance never needs more rank
    with pytest.raises(ValueError, match=r"level must be one of \[0, 1, 2\]"):
        target(folder, ROOT / "experiments", 3)


def test_the_packaged_calibration_is_the_committed_one():
    """predict.CALIBRATION (what `reservoir-depth predict` uses) holds the scales experiments/predict_rank.py
    fit and committed in docs/results/predict/calibration.csv."""
    from reservoir_depth.predict import CALIBRATION, LEVELS

    cal = pd.read_csv(ROOT / "docs/results/predict/calibration.csv")
    assert set(CALIBRATION) == set(cal["measure"])
    for row in cal.itertuples():
        assert CALIBRATION[row.measure][LEVELS.index(row.level)] == pytest.approx(row.scale, rel=1e-3), row


def test_calibration_reads_a_zero_r_star_as_one():
    """The convention for r* = 0 (rank 0 saturates already): read as 1 on log axes, so it calibrates
    (c = 1 / raw) instead of being dropped (NaN) or sent to -inf; changing it moved 7 of 9 hits to 6."""
    assert calibrate([2.0], [0.0]) == pytest.approx(0.5)
    assert calibrate([2.0, 8.0], [0.0, 4.0]) == pytest.approx(math.sqrt(0.5 * 0.5))


def test_the_bonferroni_column_multiplies_by_the_number_of_predictors():
    table = pd.concat([_table([1.0, 2.0, 4.0, 8.0, 16.0], [2.0, 4.0, 8.0, 16.0, 32.0], max_rank=64).assign(predictor=p)
                       for p in ("a", "b")])
    _, summary = evaluate(table, constants=True)  # a, b and the two constants: 4 predictors
    s = summary.set_index("predictor")
    assert len(s) == 4
    for name in ("a", "b"):
        assert s.loc[name, "p"] < 0.25
        assert s.loc[name, "p Bonferroni"] == pytest.approx(min(1.0, 4 * s.loc[name, "p"]))


def test_search_replay_pins_its_run_counts_and_the_rounding_of_the_start():
    """digits MLP (grid 0, 1, 2, 4, 8, 16, 32; 2 seeds; r* = 8). A start of 2.1 rounds up to the next grid rank
    (4): 4 then 8, 2 ranks = 4 runs; a start of exactly 2 evaluates 2, 4, 16, 8 (8 runs); from the grid's
    start the gallop evaluates 0, 1, 4, 32, 8 (10 runs); the whole grid is 14."""
    from reservoir_depth.predict import search_replay

    folder = ROOT / "docs/results/digits_mlp"
    up = search_replay(folder, 2.1, ROOT / "experiments")
    exact = search_replay(folder, 2.0, ROOT / "experiments")
    assert (up["runs, from prediction"], exact["runs, from prediction"]) == (4, 8)
    assert (up["runs, doubling"], up["runs, grid"]) == (10, 14)
    assert up["r_star, from prediction"] == exact["r_star, from prediction"] == 8
