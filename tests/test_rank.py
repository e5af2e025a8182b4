import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reservoir_depth import data
from reservoir_depth.rank import SaturationRank, adaptive_search, r_star
from reservoir_depth.results import ResultsStore
from reservoir_depth.sweep import adaptive_sweep, runs_of, study_frame, sweep

curves = st.dictionaries(st.integers(0, 64), st.floats(0, 1), min_size=1, max_size=12)


@given(curves, st.floats(0, 1), st.floats(0, 0.5), st.floats(0, 0.5))
def test_r_star_is_monotone_in_eps(curve, full, e1, e2):
    lo, hi = sorted((e1, e2))
    assert r_star(curve, full, hi) <= r_star(curve, full, lo)
    assert r_star(curve, full, hi, higher_is_better=False) <= r_star(curve, full, lo, higher_is_better=False)


def test_r_star_definition():
    curve = {0: 0.5, 1: 0.8, 2: 0.93, 4: 0.95, 8: 0.96}
    assert r_star(curve, 0.96, 0.0) == 8
    assert r_star(curve, 0.96, 0.01) == 4
    assert r_star(curve, 0.96, 0.05) == 2
    assert r_star(curve, 0.99, 0.0) == math.inf
    assert r_star({0: 3.0, 2: 1.0, 4: 0.2}, 0.1, 0.15, higher_is_better=False) == 4
    with pytest.raises(ValueError, match="eps"):
        r_star(curve, 0.9, -0.1)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.001, 0.2))
def test_bootstrap_ci_brackets_the_estimate_and_is_monotone(seed, eps):
    rng = np.random.default_rng(seed)
    ranks = np.repeat([0, 1, 2, 4, 8], 3)
    values = 1 - np.exp(-ranks / 2.0) * 0.3 + 0.01 * rng.standard_normal(len(ranks))
    full = 1 + 0.01 * rng.standard_normal(3)
    a = SaturationRank(eps=eps, n_boot=200, random_state=1).fit(ranks, values, full)
    b = SaturationRank(eps=eps * 2, n_boot=200, random_state=1).fit(ranks, values, full)
    assert a.ci_[0] <= a.ci_[1] and len(a.boot_) == 200
    assert b.r_star_ <= a.r_star_
    assert set(a.curve_) == {0, 1, 2, 4, 8}


def test_bootstrap_ci_collapses_without_noise():
    ranks = [0, 0, 2, 2, 4, 4]
    sr = SaturationRank(eps=0.01, n_boot=100).fit(ranks, [0.5, 0.5, 0.9, 0.9, 1.0, 1.0], [1.0, 1.0])
    assert sr.r_star_ == 4 and sr.ci_ == (4.0, 4.0)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 40), st.integers(0, 64))
def test_adaptive_search_matches_grid_with_fewer_evaluations(k, r_max):
    curve = lambda r: 1.0 if r >= k else 0.5 + 0.01 * r  # saturates exactly at k
    grid = r_star({r: curve(r) for r in range(r_max + 1)}, 1.0, 0.01)
    res = adaptive_search(curve, 1.0, 0.01, r_max)
    assert res.r_star == grid
    assert res.n_evaluated <= 2 * math.ceil(math.log2(r_max + 2)) + 2
    assert len(set(res.evaluated)) == res.n_evaluated


def test_adaptive_search_loss_direction_and_errors():
    res = adaptive_search(lambda r: max(0.0, 5 - r), 0.0, 0.5, 16, higher_is_better=False)
    assert res.r_star == 5
    with pytest.raises(ValueError, match="r_min"):
        adaptive_search(lambda r: 0.0, 0.0, 0.1, r_max=-1)


PLANTED = {"study": "planted", "dataset": {"name": "planted", "d": 12, "n_out": 12, "n_train": 1024, "n_test": 512},
           "arch": {"name": "linear"}, "seeds": [0], "full": True,
           "train": {"epochs": 25, "lr": 2e-2, "batch_size": 128}}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_planted_rank_is_recovered(tmp_path, k):
    """Ground truth: a student on the teacher's scaffold saturates exactly at r = k (Prop. 4)."""
    study = {**PLANTED, "dataset": {**PLANTED["dataset"], "k": k}, "ranks": list(range(0, 6))}
    store = ResultsStore(tmp_path / "r.sqlite")
    assert sweep(runs_of(study), store, progress=False)["failed"] == 0
    sr = SaturationRank.from_frame(study_frame(study, store), metric="test_loss", eps=0.25, n_boot=50)
    assert sr.r_star_ == k, sr.curve_
    # each missing direction costs strength^2 = 1 in summed squared error
    assert sr.curve_[max(k - 1, 0)] > 0.5 if k else True
    res, n_runs = adaptive_sweep(study, store, eps=0.25, r_max=5)
    assert res.r_star == k


def test_adaptive_sweep_needs_fewer_runs_than_the_grid(tmp_path):
    study = {**PLANTED, "dataset": {**PLANTED["dataset"], "k": 3}}
    store = ResultsStore(tmp_path / "r.sqlite")
    res, n_runs = adaptive_sweep(study, store, eps=0.25, r_max=12)
    assert res.r_star == 3 and n_runs < 13
    assert len(store.frame("planted")) == n_runs + 1  # + the full-training baseline


def test_planted_teacher_shares_the_students_scaffold():
    from reservoir_depth.data.planted import teacher
    from reservoir_depth.models import build
    from reservoir_depth.scaffold import ScaffoldConfig, scaffold

    t = teacher(2, d=8, n_out=6, seed=5)
    s = scaffold(build("linear", d_in=8, n_out=6), ScaffoldConfig(target_modules=["layer"], r=2, root_seed=5))
    assert (t.layer.W_seed == s.layer.W_seed).all() and (t.layer.bias == s.layer.bias).all()
    delta = t.layer.delta().numpy()
    sv = np.linalg.svd(delta, compute_uv=False)
    assert np.allclose(sv[:2], 1.0) and np.allclose(sv[2:], 0, atol=1e-6)
    with pytest.raises(ValueError, match=r"rank r=7 .* \[0, 6\]"):
        data.load("planted", k=7, d=8, n_out=6)
