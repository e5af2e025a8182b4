import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reservoir_depth import data
from reservoir_depth.rank import MIN_BOOTSTRAP_SEEDS, SaturationRank, adaptive_search, r_star
from reservoir_depth.results import ResultsStore
from reservoir_depth.study import Study, curves
from reservoir_depth.sweep import adaptive_sweep, sweep

rank_curves = st.dictionaries(st.integers(0, 64), st.floats(0, 1), min_size=1, max_size=12)


@given(rank_curves, st.floats(0, 1), st.floats(0, 0.5), st.floats(0, 0.5))
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


RANKS = np.array([0, 1, 2, 4, 8, 16])


def _first(ranks, values, level, higher=True):
    """The test's own r*: a loop over ranks, independent of the estimator's vectorised form."""
    for r, v in zip(ranks, values):
        if (v >= level) if higher else (v <= level):
            return float(r)
    return math.inf


@st.composite
def monotone_study(draw):
    """(values (S, R) non-decreasing in r per seed, full (S,)): accuracy-like curves, paired seeds."""
    S = draw(st.integers(2, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    steps = rng.exponential(draw(st.floats(0.005, 0.1)), size=(S, len(RANKS)))
    values = 0.5 + np.cumsum(steps, axis=1)
    full = values[:, -1] + rng.normal(0, draw(st.floats(0, 0.05)), S)
    return values, full


@settings(max_examples=60, deadline=None)
@given(monotone_study(), st.floats(0.0, 0.2), st.booleans())
def test_interval_brackets_the_estimate_for_monotone_curves(study, eps, relative):
    """Monotone curves: every seed saturated implies the mean is, none saturated implies it is not, so
    r* and every resample's r* lie between the smallest and largest per-seed r* (paired thresholds)."""
    values, full = study
    sr = SaturationRank(eps=eps, relative=relative, n_boot=300, random_state=3).fit(RANKS, values, full)
    levels = [f - (eps * abs(f) if relative else eps) for f in full]
    per_seed = [_first(RANKS, v, lv) for v, lv in zip(values, levels)]
    assert sr.seed_r_star_.tolist() == per_seed
    assert min(per_seed) <= sr.r_star_ <= max(per_seed)
    assert min(per_seed) <= sr.boot_.min() and sr.boot_.max() <= max(per_seed)
    assert sr.ci_[0] <= sr.r_star_ <= sr.ci_[1]
    if len(full) < MIN_BOOTSTRAP_SEEDS:
        assert sr.ci_kind_ == "seed range" and sr.ci_ == (min(per_seed), max(per_seed))
    else:
        assert sr.ci_kind_ == "bootstrap"
        assert sr.ci_ == tuple(np.quantile(sr.boot_, [0.025, 0.975], method="inverted_cdf"))
    wider = SaturationRank(eps=eps * 2 + 0.01, relative=relative, n_boot=0).fit(RANKS, values, full)
    assert wider.r_star_ <= sr.r_star_


def test_ranks_share_a_seed_so_curves_are_resampled_whole():
    """Each seed's curve is flat in r: a resample saturates at rank 1 exactly when it saturates at
    rank 2, so a whole-curve bootstrap never gives r* = 2. Resampling ranks independently does."""
    a = np.array([0.90, 0.92, 0.94, 0.96, 0.98, 1.00])
    values = np.stack([a, a], axis=1)
    sr = SaturationRank(eps=0.03, n_boot=2000).fit([1, 2], values, [0.98] * 7, paired=False)
    assert set(sr.boot_.tolist()) == {1.0, math.inf}


def test_full_training_is_resampled_with_its_seed():
    """values[s] = full[s] - deficit(r): paired, every resample has the same gaps, so the interval is
    the point; unpaired, full training's own spread moves r*. Not resampling full, or resampling it
    apart from its seeds, breaks one of the two."""
    rng = np.random.default_rng(0)
    full = 0.9 + 0.02 * rng.standard_normal(6)
    deficit = np.array([0.05, 0.02, 0.011, 0.009, 0.0])
    values = full[:, None] - deficit[None, :]
    ranks = [1, 2, 4, 8, 16]
    paired = SaturationRank(eps=0.01, n_boot=500).fit(ranks, values, full)
    assert paired.paired_ and paired.r_star_ == 8 and paired.ci_kind_ == "bootstrap"
    assert set(paired.boot_.tolist()) == {8.0} and paired.ci_ == (8.0, 8.0)
    # identical curves; only full training varies: its resampling alone must move r*
    same = np.tile(0.9 - deficit, (6, 1))
    unpaired = SaturationRank(eps=0.01, n_boot=500).fit(ranks, same, full + 0.9 - full.mean(), paired=False)
    assert not unpaired.paired_ and unpaired.r_star_ == 8
    assert len(set(unpaired.boot_.tolist())) > 1 and unpaired.ci_[0] < unpaired.ci_[1]


def test_bootstrap_resamples_whole_curves_with_the_right_frequencies():
    """Two seeds: a resample is {0,0}, {1,1} (1/4 each) or {0,1} (1/2). The digits MLP study (its
    stored numbers, test_acc at eps = 0.01): seed 0 alone crosses at r = 4 but r = 8, 16 and 32 miss again,
    so its saturation never lasts (inf); seed 1 and the pair saturate at r = 8 for good."""
    ranks = [0, 1, 2, 4, 8, 16, 32]
    values = [[0.900000, 0.936111, 0.977778, 0.986111, 0.977778, 0.980556, 0.977778],
              [0.852778, 0.955556, 0.963889, 0.966667, 0.977778, 0.980556, 0.986111]]
    full = [0.991667, 0.983333]
    sr = SaturationRank(eps=0.01, n_boot=4000).fit(ranks, values, full)
    assert sr.r_star_ == 8 and sr.ci_kind_ == "seed range" and sr.ci_ == (8.0, math.inf)
    assert sr.margin_ == pytest.approx(0.977778 - (0.9875 - 0.01))
    assert np.mean(sr.boot_ == math.inf) == pytest.approx(0.25, abs=0.03)
    assert set(sr.boot_.tolist()) == {8.0, math.inf}
    assert sr.r_first_ == 8 and not sr.crossing_


def test_a_crossing_that_larger_ranks_undo_is_not_r_star():
    """Mackey-Glass's shape: r = 4 within the tolerance, r = 8 and 16 out of it again, r = 32 in: r* = 32,
    and the report can say that r = 4 was a crossing undone at 8 and 16."""
    ranks = [1, 2, 4, 8, 16, 32]
    curve = {1: 0.20, 2: 0.15, 4: 0.104, 8: 0.12, 16: 0.11, 32: 0.104}
    assert r_star(curve, 0.1, 0.05, higher_is_better=False, relative=True) == 32
    values = np.array([[curve[r] + d for r in ranks] for d in (-0.001, 0.0, 0.001)])
    sr = SaturationRank(eps=0.05, relative=True, higher_is_better=False).fit(ranks, values, [0.1, 0.1, 0.1])
    assert (sr.r_star_, sr.r_first_, sr.crossing_, sr.undone_at_) == (32, 4, True, [8, 16])
    assert sr.seed_r_star_.tolist() == [32.0, 32.0, 32.0]
    # the largest rank missing: no r*, whatever smaller ranks did
    assert r_star({**curve, 64: 0.2}, 0.1, 0.05, higher_is_better=False, relative=True) == math.inf
    # a rank not run for a seed neither makes nor undoes it
    gap = values.copy()
    gap[0, ranks.index(16)] = np.nan
    assert SaturationRank(eps=0.05, relative=True, higher_is_better=False).fit(ranks, gap, [0.1] * 3).seed_r_star_[0] == 32


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8), st.floats(0.0, 1.0), st.floats(0.0, 0.2))
def test_r_star_is_where_the_curve_enters_the_tolerance_for_good(values, full, eps):
    """Property: every rank >= r* is within delta, and the rank just below r* (if any) is not."""
    curve = {2 ** i: v for i, v in enumerate(values)}
    r = r_star(curve, full, eps)
    level = full - eps
    assert all(v >= level for k, v in curve.items() if k >= r)
    below = [k for k in curve if k < r]
    if math.isfinite(r) and below:
        assert curve[max(below)] < level
    if not math.isfinite(r):
        assert curve[max(curve)] < level


def test_bootstrap_needs_five_seeds():
    ranks, curve = [0, 4], [0.5, 1.0]
    for S in (1, 2, 3, 4):
        assert SaturationRank(n_boot=10).fit(ranks, [curve] * S, [1.0] * S).ci_kind_ == "seed range"
    sr = SaturationRank(n_boot=10).fit(ranks, [curve] * 5, [1.0] * 5)
    assert sr.ci_kind_ == "bootstrap" and sr.ci_ == (4.0, 4.0) and sr.margin_ == pytest.approx(0.01)
    assert SaturationRank(n_boot=0).fit(ranks, [curve] * 5, [1.0]).ci_kind_ == "bootstrap"
    assert all(map(math.isnan, SaturationRank(n_boot=0).fit(ranks, [curve] * 5, [1.0]).ci_))


def test_relative_eps_and_losses():
    ranks = [0, 1, 2]
    values = [[3.0, 1.3, 1.05], [3.0, 1.3, 1.05]]
    absolute = SaturationRank(eps=0.1, higher_is_better=False).fit(ranks, values, [1.0, 1.0])
    assert absolute.threshold_ == pytest.approx(1.1) and absolute.r_star_ == 2
    assert absolute.margin_ == pytest.approx(0.05)
    relative = SaturationRank(eps=0.1, relative=True, higher_is_better=False).fit(ranks, values, [2.0, 2.0])
    assert relative.threshold_ == pytest.approx(2.2) and relative.r_star_ == 1
    assert relative.margin_ == pytest.approx(0.9)
    acc = SaturationRank(eps=0.5, relative=True).fit(ranks, [[0.1, 0.35, 0.45]], [0.8])
    assert acc.threshold_ == pytest.approx(0.4) and acc.r_star_ == 2
    assert r_star({0: 0.1, 1: 0.35, 2: 0.45}, 0.8, 0.5, relative=True) == 2
    assert r_star({0: 0.1, 1: 0.35, 2: 0.45}, 0.8, 0.5) == 1


def test_r_star_is_never_stated_beyond_the_last_rank_every_seed_ran():
    nan = math.nan
    values = [[0.5, 0.6, nan, 0.99], [0.5, 0.7, 0.8, 0.99], [0.5, 0.65, 0.8, nan]]
    sr = SaturationRank(eps=0.01).fit([0, 1, 2, 3], values, [1.0, 1.0, 1.0])
    assert sr.max_rank_ == 1 and sr.r_star_ == math.inf and math.isnan(sr.margin_)
    assert sr.curve_[3] == pytest.approx(0.99) and sr.curve_[2] == pytest.approx(0.8)
    assert sr.ci_ == (math.inf, math.inf) and set(sr.boot_.tolist()) == {math.inf}
    # a rank below max_rank_ that one seed missed: the mean of the seeds that ran it
    values = [[0.5, nan, 0.99], [0.5, 0.995, 0.99]]
    sr = SaturationRank(eps=0.01).fit([0, 1, 2], values, [1.0, 1.0])
    assert sr.max_rank_ == 2 and sr.r_star_ == 1 and sr.seed_r_star_.tolist() == [2.0, 1.0]


def test_ranks_may_come_in_any_order():
    values = np.array([[0.99, 0.5, 0.92], [0.99, 0.5, 0.92]])
    sr = SaturationRank(eps=0.1).fit([8, 0, 2], values, [1.0, 1.0])
    assert sr.r_star_ == 2 and list(sr.curve_) == [0, 2, 8]


@pytest.mark.parametrize("kwargs, fit, match", [
    ({}, ([0, 1], [0.5, 0.9], [1.0]), r"values must be \(n_seeds, 2\)"),
    ({}, ([0, 1], [[0.5, 0.9, 1.0]], [1.0]), r"values must be \(n_seeds, 2\)"),
    ({}, ([0, 1], [[0.5, math.inf]], [1.0]), r"inf at .* \[\(0, 1\)\]"),
    ({}, ([0, 1], [[0.5, 0.9]], [math.nan]), "full-training values must be finite"),
    ({}, ([0, 1], [[0.5, 0.9]], []), "full must be a non-empty"),
    ({}, ([0, 0], [[0.5, 0.9]], [1.0]), "distinct"),
    ({}, ([0, -1], [[0.5, 0.9]], [1.0]), r"ints >= 0, got \[-1\]"),
    ({}, ([0, 1.5], [[0.5, 0.9]], [1.0]), r"ints >= 0, got \[1.5\]"),
    ({}, ([0, 1], [[0.5, math.nan], [math.nan, 0.9]], [1.0]), "no rank of"),
    ({}, ([0, 1], [[0.5, 0.9], [math.nan, math.nan]], [1.0]), r"seed row\(s\) \[1\]"),
    ({"eps": -0.1}, ([0], [[0.5]], [1.0]), "eps must be"),
    ({"eps": math.nan}, ([0], [[0.5]], [1.0]), "eps must be"),
    ({"ci": 1.0}, ([0], [[0.5]], [1.0]), "ci must lie"),
    ({"n_boot": -1}, ([0], [[0.5]], [1.0]), "n_boot must be"),
    ({"relative": "yes"}, ([0], [[0.5]], [1.0]), "relative must be"),
])
def test_bad_input_is_refused(kwargs, fit, match):
    with pytest.raises(ValueError, match=match):
        SaturationRank(**kwargs).fit(*fit)


def test_pairing_needs_one_full_value_per_seed():
    with pytest.raises(ValueError, match=r"paired=True needs one full-training value per seed row \(2\), got 1"):
        SaturationRank().fit([0], [[0.5], [0.6]], [1.0], paired=True)
    assert not SaturationRank().fit([0], [[0.5], [0.6]], [1.0, 1.0], paired=False).paired_


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 40), st.integers(0, 64))
def test_adaptive_search_matches_grid_with_fewer_evaluations(k, r_max):
    curve = lambda r: 1.0 if r >= k else 0.5 + 0.01 * r  # saturates exactly at k
    grid = r_star({r: curve(r) for r in range(r_max + 1)}, 1.0, 0.01)
    res = adaptive_search(curve, 1.0, 0.01, r_max)
    assert res.r_star == grid
    assert res.n_evaluated <= 2 * math.ceil(math.log2(r_max + 2)) + 2
    assert len(set(res.evaluated)) == res.n_evaluated


@settings(max_examples=200, deadline=None)
@given(grid=st.lists(st.integers(0, 600), min_size=1, max_size=12, unique=True).map(sorted),
       k=st.integers(0, 700), start=st.integers(0, 700))
def test_a_search_over_a_grid_from_any_start_finds_the_grid_scan_r_star(grid, k, start):
    """On a rank grid (a study's ranks) with a monotone curve, the search started at any rank (a prediction)
    finds the r* a full scan of the grid finds, evaluates only grid ranks, each at most once, and never more
    than the grid; started at the true r*, it needs at most 2 evaluations."""
    curve = lambda r: 1.0 if r >= k else 0.5
    scan = r_star({r: curve(r) for r in grid}, 1.0, 0.01)
    res = adaptive_search(curve, 1.0, 0.01, max(grid), grid=grid, r_start=start)
    assert res.r_star == scan
    assert set(res.evaluated) <= set(grid) and res.n_evaluated <= len(grid)
    if math.isfinite(scan):
        assert adaptive_search(curve, 1.0, 0.01, max(grid), grid=grid, r_start=int(scan)).n_evaluated <= 2


def test_a_search_from_a_start_on_integers_and_its_errors():
    curve = lambda r: 1.0 if r >= 37 else 0.5
    for start in (1, 36, 37, 38, 200, 256):
        res = adaptive_search(curve, 1.0, 0.01, 256, r_start=start)
        assert res.r_star == 37 and all(0 <= r <= 256 for r in res.evaluated)
    assert adaptive_search(curve, 1.0, 0.01, 36, r_start=20).r_star == math.inf
    with pytest.raises(ValueError, match=r"r_start must be a number >= 0, got -1"):
        adaptive_search(curve, 1.0, 0.01, 64, r_start=-1)
    with pytest.raises(ValueError, match=r"grid must be distinct ranks >= r_min = 0 and <= r_max = 8, got \[4, 16\]"):
        adaptive_search(curve, 1.0, 0.01, 8, grid=[4, 16])


def test_adaptive_search_loss_direction_and_errors():
    res = adaptive_search(lambda r: max(0.0, 5 - r), 0.0, 0.5, 16, higher_is_better=False)
    assert res.r_star == 5
    # relative eps: delta = 0.5 * |2.0| = 1, so L(r) = 7 - r <= 3 first at r = 4
    assert adaptive_search(lambda r: 7.0 - r, 2.0, 0.5, 16, higher_is_better=False, relative=True).r_star == 4
    assert adaptive_search(lambda r: 7.0 - r, 2.0, 0.5, 16, higher_is_better=False).r_star == 5
    with pytest.raises(ValueError, match="r_min"):
        adaptive_search(lambda r: 0.0, 0.0, 0.1, r_max=-1)


PLANTED = {"study": "planted", "dataset": {"name": "planted", "d": 12, "n_out": 12, "n_train": 1024, "n_test": 512},
           "arch": {"name": "linear"}, "seeds": [0], "full": True,
           "train": {"epochs": 25, "lr": 2e-2, "batch_size": 128},
           "eps": [0.25]}  # absolute: one missing planted direction costs strength^2 = 1 loss unit


@pytest.mark.parametrize("k", [1, 2, 3])
def test_planted_rank_is_recovered(tmp_path, k):
    """Ground truth: a student on the teacher's scaffold saturates exactly at r = k (Prop. 4)."""
    study = {**PLANTED, "dataset": {**PLANTED["dataset"], "k": k}, "ranks": list(range(0, 6))}
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    assert sweep(Study.of(study).runs(), store, progress=False).failed == 0
    ranks, values, full, _ = curves(Study.of(study).frame(store), "test_loss")
    sr = SaturationRank(eps=0.25, higher_is_better=False, n_boot=50).fit(ranks, values, full)
    assert sr.r_star_ == k, sr.curve_
    # each missing direction costs strength^2 = 1 in summed squared error
    assert sr.curve_[max(k - 1, 0)] > 0.5 if k else True
    res, n_runs = adaptive_sweep(study, store, eps=0.25, r_max=5)
    assert res.r_star == k


def test_adaptive_sweep_needs_fewer_runs_than_the_grid(tmp_path):
    study = {**PLANTED, "dataset": {**PLANTED["dataset"], "k": 3}}
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    res, n_runs = adaptive_sweep(study, store, eps=0.25, r_max=12)
    assert res.r_star == 3 and n_runs < 13
    assert len(store.frame("planted")) == n_runs + 1  # + the full-training baseline


def test_adaptive_sweep_from_a_prediction_runs_fewer_ranks(tmp_path):
    """Started at the (here: exact) predicted r*, the sweep runs r* and r* - 1 only, and finds the same r*."""
    study = {**PLANTED, "dataset": {**PLANTED["dataset"], "k": 3}}
    plain = adaptive_sweep(study, ResultsStore(tmp_path / "a.sqlite", create=True), eps=0.25, r_max=12)
    store = ResultsStore(tmp_path / "b.sqlite", create=True)
    res, n_runs = adaptive_sweep(study, store, eps=0.25, r_max=12, r_start=3)
    assert res.r_star == plain[0].r_star == 3 and sorted(res.evaluated) == [2, 3]
    assert n_runs == 2 < plain[1]
    on_grid, _ = adaptive_sweep(study, store, eps=0.25, r_max=12, r_start=5, grid=[0, 1, 2, 3, 4, 8, 12])
    assert on_grid.r_star == 3 and set(on_grid.evaluated) <= {0, 1, 2, 3, 4, 8, 12}


def test_planted_teacher_shares_the_students_scaffold():
    from reservoir_depth.planted import teacher
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


def test_adaptive_sweep_reads_eps_with_the_studys_tolerance_kind(tmp_path, monkeypatch):
    """Without eps, a loss study's tolerance is relative to full training (tasks.METRICS), in the adaptive
    search as in the report; a study's explicit eps stays absolute."""
    from reservoir_depth import sweep as sweep_mod
    from reservoir_depth.rank import SearchResult

    seen = []
    monkeypatch.setattr(sweep_mod, "adaptive_search", lambda *a, **k: seen.append(k["relative"]) or SearchResult(0.0))
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    study = {**PLANTED, "dataset": {**PLANTED["dataset"], "k": 1}, "train": {**PLANTED["train"], "epochs": 1}}
    adaptive_sweep({k: v for k, v in study.items() if k != "eps"}, store, eps=0.05, r_max=4)
    adaptive_sweep(study, store, eps=0.25, r_max=4)
    assert seen == [True, False]


# ----------------------------------------------------------------------------- equivalence and power

def test_tost_paired_is_the_larger_of_two_one_sided_scipy_t_tests():
    from scipy import stats
    from reservoir_depth.rank import tost_paired

    a = np.array([0.912, 0.905, 0.918, 0.909, 0.911])
    b = np.array([0.910, 0.907, 0.915, 0.910, 0.908])
    d = a - b
    lower = stats.ttest_1samp(d, -0.01, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, 0.01, alternative="less").pvalue
    eq = tost_paired(a, b, margin=0.01)
    assert eq.p == pytest.approx(max(lower, upper), rel=1e-12) and eq.equivalent
    assert eq.diff == pytest.approx(d.mean()) and eq.n == 5
    # at the margin it reports as the smallest equivalent one, p = alpha exactly
    assert tost_paired(a, b, margin=eq.equivalent_at).p == pytest.approx(0.05, rel=1e-9)
    assert not tost_paired(a, b, margin=0.001).equivalent


def test_tost_paired_refuses_bad_input():
    from reservoir_depth.rank import tost_paired

    with pytest.raises(ValueError, match="at least 2 seeds"):
        tost_paired([1.0], [1.0], 0.1)
    with pytest.raises(ValueError, match="margin must be a finite number > 0, got 0"):
        tost_paired([1.0, 2.0], [1.0, 2.0], 0)
    assert tost_paired([1.0, 2.0], [1.0, 2.0], 0.1).p == 0.0  # identical: se = 0, inside the margin


def test_paired_t_power_matches_known_values():
    """statsmodels' TTestPower().power(0.5, 10, 0.05) = 0.2932; d = 0.8, n = 15 against the rejection rate of
    scipy's one-sample t-test on 100,000 simulated seed sets (seeded, so the same every run); effect 0
    gives alpha."""
    from scipy import stats
    from reservoir_depth.rank import paired_t_power

    assert paired_t_power(10, 0.5) == pytest.approx(0.2932, abs=5e-4)
    x = np.random.default_rng(0).standard_normal((100_000, 15)) + 0.8
    simulated = (stats.ttest_1samp(x, 0, axis=1).pvalue < 0.05).mean()  # sd of this estimate: 0.0012
    assert paired_t_power(15, 0.8) == pytest.approx(simulated, abs=0.005)
    assert paired_t_power(7, 0.0) == pytest.approx(0.05)
    assert paired_t_power(7, 0.0, two_sided=False) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        paired_t_power(1, 0.5)


def test_ranks_that_beat_the_reference_by_more_than_the_tolerance_are_named():
    """Full training at 0.90 and r = 4 at 0.93 (eps 0.01): the reference is not a ceiling there."""
    sr = SaturationRank(eps=0.01).fit([1, 2, 4], [[0.80, 0.905, 0.93], [0.80, 0.905, 0.93]], [0.90, 0.90])
    assert sr.beats_reference_ == [4] and sr.r_star_ == 2
    loss = SaturationRank(eps=0.05, relative=True, higher_is_better=False).fit([1, 2], [[1.2, 0.9]], [1.0])
    assert loss.beats_reference_ == [2]  # 0.9 < 1.0 - 0.05: better than the reference by more than delta
    assert SaturationRank(eps=0.01).fit([1, 2], [[0.80, 0.905]], [0.90]).beats_reference_ == []


def test_numpy_bools_are_bools_to_the_estimator():
    """A direction read from a frame or an array is a numpy bool: it was accepted before the estimator
    convention and must stay so; 1 and "yes" are still refused."""
    sr = SaturationRank(eps=0.01, higher_is_better=np.True_, relative=np.False_).fit([1, 2], [[0.5, 0.9]], [0.9])
    assert sr.r_star_ == 2
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="higher_is_better must be True or False"):
            SaturationRank(higher_is_better=bad).fit([1, 2], [[0.5, 0.9]], [0.9])
