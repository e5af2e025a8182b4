"""Runs trained together (group.py) compute what each run computes alone, bit for bit: the stacked AdamW
is torch's AdamW, each lane's products are its run's, the stored metrics and histories are the same and so
is r*; a run that fails does not take the others with it; the store keeps one row per run."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

from reservoir_depth import group, sweep as sweep_module
from reservoir_depth.saturation import saturation
from reservoir_depth.results import ResultsStore
from reservoir_depth.run import Run
from reservoir_depth.study import Study
from reservoir_depth.sweep import build_model, run_study
from reservoir_depth.tasks import metric_of, task_of
from reservoir_depth.train import TrainConfig, train

DIGITS = {"study": "together", "dataset": "digits", "seeds": [0], "full": True, "twin": True, "ranks": [0, 1, 2, 8],
          "arch": {"name": "mlp", "hidden": "tiny"}, "train": {"epochs": 2, "batch_size": 128, "device": "cpu"},
          "scaffold": {"alpha": 16.0, "bias": "frozen"}}
PLANTED = {"study": "planted_together", "dataset": {"name": "planted", "k": 2, "d": 16, "n_out": 8, "n_train": 512,
                                                    "n_test": 256},
           "seeds": [0, 1], "full": True, "ranks": [0, 1, 2, 4, 8], "arch": {"name": "mlp", "hidden": [32, 16]},
           "train": {"epochs": 8, "batch_size": 64, "device": "cpu"}, "scaffold": {"alpha": 16.0}}


def _models(study, **train):
    runs = [r for r in Study.of(study).runs() if r.seed == 0]
    d = runs[0].data()
    configs = [TrainConfig(**{**r.train, "seed": r.seed, "progress": False, **train}) for r in runs]
    return runs, d, [build_model(r, d) for r in runs], configs


def test_stacked_adamw_is_torch_adamw_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    lrs, wds = [1e-3, 3e-2, 0.0], [0.01, 0.1, 0.01]  # lr 0: a lane that does not train the tensor
    p = torch.randn(3, 5, 4, generator=g)
    stack = group._Stack(p, lrs, wds)
    opt = group.StackedAdamW([stack])
    alone = [p[i].clone().requires_grad_() for i in range(2)]
    ref = [torch.optim.AdamW([q], lr=lr, weight_decay=wd) for q, lr, wd in zip(alone, lrs, wds)]
    for _ in range(5):
        grad = torch.randn(3, 5, 4, generator=g)
        stack.value.grad = grad.clone()
        opt.step()
        for i, (q, o) in enumerate(zip(alone, ref)):
            q.grad = grad[i].clone()
            o.step()
    for i, q in enumerate(alone):
        assert torch.equal(stack.value[i], q.detach())
    assert torch.equal(stack.value[2], p[2])  # untouched by weight decay or momentum


def _rows(hist):
    """A History's epoch rows as text, less the wall-clock seconds (NaN compares equal as text)."""
    return [json.dumps({k: v for k, v in e.items() if k != "seconds" and k != "tokens_per_s"}, sort_keys=True)
            for e in hist.epochs]


def test_a_lane_of_a_batched_product_is_the_product_alone():
    """What bit-for-bit equality rests on: torch's CPU bmm computes each lane as mm computes it alone."""
    g = torch.Generator().manual_seed(0)
    for n, k, m in ((64, 64, 256), (29, 256, 128), (64, 64, 10), (360, 3, 128)):
        a, b = torch.randn(3, n, k, generator=g), torch.randn(3, k, m, generator=g)
        assert all(torch.equal(torch.bmm(a, b)[i], a[i] @ b[i]) for i in range(3))
        assert all(torch.equal(torch.bmm(a.transpose(1, 2).contiguous().transpose(1, 2), b)[i], a[i] @ b[i])
                   for i in range(3))
        t, beta = torch.randn(3, n, m, generator=g), torch.rand(3, generator=g) * 2
        y = torch.baddbmm(t * beta.view(3, 1, 1), a, b, alpha=0.5)  # _LottaLinearStack's beta t + s m1 m2
        assert all(torch.equal(y[i], t[i].addmm(a[i], b[i], beta=float(beta[i]), alpha=0.5)) for i in range(3))


LANES = st.lists(st.tuples(st.sampled_from(["full", "twin", "lotta"]), st.integers(0, 16),
                           st.sampled_from([1e-3, 3e-3, 1e-2])), min_size=1, max_size=5)


@settings(max_examples=6, deadline=None)
@given(lanes=LANES, bias=st.sampled_from(["frozen", "trainable", "none"]))
def test_each_lane_is_its_run_alone_bit_for_bit(lanes, bias):
    runs = [Run("lanes", "digits", {"name": "mlp", "hidden": "tiny"}, method, 0,
                train={"epochs": 1, "batch_size": 256, "lr": lr},
                scaffold={} if method == "full" else {"r": 0 if method == "twin" else r, "alpha": 16.0, "bias": bias})
            for method, r, lr in lanes]
    d = runs[0].data()
    models = [build_model(r, d) for r in runs]
    configs = [TrainConfig(**{**r.train, "seed": 0, "progress": False}) for r in runs]
    alone = [copy.deepcopy(m) for m in models]
    hists = [train(m, d, c) for m, c in zip(alone, configs)]
    together = group.train_group(models, d, configs)
    for h, t, ma, mt in zip(hists, together, alone, models):
        assert _rows(h) == _rows(t)
        for (n, p), q in zip(ma.named_parameters(), mt.parameters()):
            assert torch.equal(p, q), n


def test_a_group_computes_what_each_run_computes_alone():
    runs, d, models, configs = _models({**DIGITS, "train": {**DIGITS["train"], "lr": 3e-3}})
    configs[1] = TrainConfig(**{**configs[1].__dict__, "lr": 1e-2, "weight_decay": 0.1})  # lanes differ in lr
    alone = [train(copy.deepcopy(m), d, c) for m, c in zip(models, configs)]
    together = group.train_group([copy.deepcopy(m) for m in models], d, configs)
    for a, t in zip(alone, together):
        assert (a.trainable, a.total, a.device) == (t.trainable, t.total, t.device)
        assert _rows(a) == _rows(t)


def test_trained_values_are_written_back_into_each_model():
    runs, d, models, configs = _models(DIGITS, epochs=1)
    trained = [copy.deepcopy(m) for m in models]
    group.train_group(trained, d, configs)
    for m0, m in zip(models, trained):
        for (n, p0), p in zip(m0.named_parameters(), m.parameters()):
            if p0.requires_grad:
                assert not torch.equal(p0, p), n
            else:
                assert torch.equal(p0, p), n  # a frozen seeded bias is left bit for bit
        for b0, b in zip(m0.buffers(), m.buffers()):
            assert torch.equal(b0, b)  # W_seed


def test_a_run_that_fails_leaves_the_others_as_they_would_be():
    runs, d, models, configs = _models(DIGITS)
    clean = group.train_group([copy.deepcopy(m) for m in models], d, configs)
    broken = [copy.deepcopy(m) for m in models]
    with torch.no_grad():
        broken[2].head.weight[0, 0] = float("nan")
    out = group.train_group(broken, d, configs)
    assert isinstance(out[2], FloatingPointError) and "before training" in str(out[2])
    for i, (h, c) in enumerate(zip(out, clean)):
        if i != 2:
            assert _rows(h) == _rows(c), i  # bit for bit: lanes never mix


def test_a_diverging_run_fails_with_its_own_error():
    runs, d, models, configs = _models(DIGITS, epochs=3)
    configs[0] = TrainConfig(**{**configs[0].__dict__, "lr": 1e30})
    out = group.train_group(models, d, configs)
    assert isinstance(out[0], FloatingPointError) and "try a lower lr (now 1e+30)" in str(out[0])
    assert all(len(h.epochs) == 4 for h in out[1:])


def test_groups_are_runs_sharing_data_architecture_and_batches():
    runs = Study.of({**DIGITS, "seeds": [0, 1]}).runs()
    units = group.groups(runs)
    assert [len(u) for u in units] == [6, 6] and {r.seed for r in units[0]} == {0}
    lr = Run(**{**runs[2].__dict__, "train": {**runs[2].train, "lr": 0.1}})
    assert group.group_key(lr) == group.group_key(runs[2])  # a learning-rate grid trains together
    for change in ({"epochs": 3}, {"batch_size": 64}, {"compile": True}, {"beta_every": 2}):
        other = Run(**{**runs[2].__dict__, "train": {**runs[2].train, **change}})
        assert group.group_key(other) != group.group_key(runs[2])
    assert group.group_key(Run(**{**runs[2].__dict__, "scaffold": {"r": 1, "schedule": "epoch"}})) is None
    assert group.group_key(Run(**{**runs[2].__dict__, "arch": {"name": "linear"}})) is None
    bad = Run(**{**runs[2].__dict__, "train": {**runs[2].train, "epochs": 0}})
    assert group.group_key(bad) is None  # refused by TrainConfig: the run fails alone, with its own error
    wide = Run(**{**runs[2].__dict__, "train": {**runs[2].train, "dtype": "float64"}})
    assert group.group_key(wide) is None  # the stacked model trains in float32: a float64 run trains alone


def _stores(tmp_path, study, **kw):
    out = {}
    for grouped in (True, False):
        store = ResultsStore(tmp_path / f"{grouped}.sqlite", create=True)
        counts = run_study(study, store, progress=False, grouped=grouped, **kw)
        assert counts.failed == 0, counts.errors
        out[grouped] = store
    return out


def _r_stars(study, store):
    study = Study.of(study)
    m = metric_of(task_of(study.runs()[0].data().task).headline)
    return [saturation(study.frame(store), study, m.name, eps, rel).r_star_ for eps, rel in study.tolerances(m)]


def _same_runs(study, stores):
    rows = {g: {r["run_id"]: r for r in s.rows()} for g, s in stores.items()}
    assert rows[True].keys() == rows[False].keys() == {r.run_id for r in Study.of(study).runs()}
    for run_id, alone in rows[False].items():
        together = rows[True][run_id]
        assert together["config"] == alone["config"]  # the same identity
        assert together["metrics"] == alone["metrics"]  # every metric, bit for bit (as JSON text)
        ha, ht = json.loads(alone["history"]), json.loads(together["history"])
        assert run_id in ht.pop("group")["runs"] and "group" not in ha
        for h in (ha, ht):
            for e in h["epochs"]:
                del e["seconds"]
        assert ht == ha


def test_planted_task_same_metrics_and_r_star_grouped_or_alone(tmp_path):
    stores = _stores(tmp_path, PLANTED)
    _same_runs(PLANTED, stores)
    assert _r_stars(PLANTED, stores[True]) == _r_stars(PLANTED, stores[False])


def test_a_failed_run_does_not_lose_its_group(tmp_path):
    study = {**DIGITS, "ranks": [1, 100]}  # 100 > min(d_in, d_out) of every layer: that run fails alone
    store = ResultsStore(tmp_path / "runs.sqlite", create=True)
    counts = run_study(study, store, progress=False)
    assert (counts.done, counts.failed) == (3, 1)
    failed = [r for r in store.rows() if r["status"] == "failed"]
    assert "rank r=100" in failed[0]["error"] and "Traceback" in failed[0]["error"]


def test_workers_take_a_group_as_their_unit(tmp_path):
    study = {**DIGITS, "seeds": [0, 1], "ranks": [0, 2]}
    store = ResultsStore(tmp_path / "runs.sqlite", create=True)
    counts = run_study(study, store, workers=2, progress=False)
    assert (counts.done, counts.failed) == (8, 0), counts.errors
    pids = {}
    for r in store.rows():
        pids.setdefault(json.loads(r["config"])["seed"], set()).add(r["pid"])
        assert len(json.loads(r["history"])["group"]["runs"]) == 4
    assert all(len(p) == 1 for p in pids.values())  # each seed's group trained in one process


@pytest.mark.slow
def test_default_study_same_metrics_and_r_star_grouped_or_alone(tmp_path):
    study = Study.default().to_dict()
    stores = _stores(tmp_path, study)
    _same_runs(study, stores)
    assert _r_stars(study, stores[True]) == _r_stars(study, stores[False])


def test_the_data_set_spectra_of_a_run_are_its_own():
    """records() reuses the data set's spectra across the runs on one data set object, never across two."""
    runs = [r for r in Study.of({**DIGITS, "spectra": True}).runs() if r.method == "lotta"][:2]
    d = runs[0].data()
    expected_rows, expected_inputs = sweep_module.dataset_rows(d, d.X_train[:sweep_module.SPECTRA_ROWS])
    for run in runs:
        history = sweep_module.records(run, build_model(run, d), d)[1]["dataset"]
        assert history == {"rows": expected_rows, "inputs": expected_inputs.tolist()}
    other = Run(**{**runs[0].__dict__, "dataset": PLANTED["dataset"], "arch": {"name": "mlp", "hidden": [8]}})
    d2 = other.data()
    rows2 = sweep_module.records(other, build_model(other, d2), d2)[1]["dataset"]["rows"]
    assert rows2 == sweep_module.dataset_rows(d2, d2.X_train[:sweep_module.SPECTRA_ROWS])[0] != expected_rows


def test_the_trainers_foreach_adamw_is_the_for_loop_adamw_bit_for_bit(monkeypatch):
    runs, d, models, configs = _models(DIGITS, epochs=2)
    fast = [copy.deepcopy(m) for m in models]
    for m, c in zip(fast, configs):
        train(m, d, c)
    real = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, foreach=None, **k: real(*a, foreach=False, **k))
    for m, c, f in zip(models, configs, fast):
        train(m, d, c)
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), f.parameters()))
