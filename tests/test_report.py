"""The report renders from the store alone: status at the top, incomplete cells marked,
r* never stated beyond the ranks that ran for every seed, old stores without records."""

import json
import math
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reservoir_depth import data
from reservoir_depth import sweep as sweep_mod
from reservoir_depth.report import NoResults, markdown, rank_table, study_status, write_report
from reservoir_depth.results import Columns, ResultsStore
from reservoir_depth.study import Study
from reservoir_depth.run import Run
from reservoir_depth.sweep import sweep

ROOT = Path(__file__).resolve().parents[1]
TINY = {"study": "tiny", "dataset": "digits", "seeds": [0, 1], "ranks": [0, 2, 4], "full": True, "twin": True,
        "spectra": ["twin"], "arch": {"name": "mlp", "hidden": [16, 8]}, "train": {"epochs": 1, "batch_size": 256}}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished tiny study (both seeds, every rank), swept once for the module."""
    out = tmp_path_factory.mktemp("tiny")
    study = Study.from_dict(TINY)
    counts = sweep(study.runs(), ResultsStore(out / "runs.sqlite", create=True), progress=False)
    assert counts.failed == 0
    return study, out


@pytest.fixture
def no_models(monkeypatch):
    """Any attempt to build a model or load data fails the test: a report reads the store only."""
    def boom(*a, **k):
        raise AssertionError("the report built a model or loaded data")

    for mod, name in ((sweep_mod, "build_model"), (Run, "data"), (data, "load")):
        monkeypatch.setattr(mod, name, boom)


def copy_store(swept, tmp_path, drop=()):
    """A copy of the swept store without the runs whose (method, r, seed) are in ``drop``."""
    study, out = swept
    shutil.copy(out / "runs.sqlite", tmp_path / "runs.sqlite")
    ids = [r.run_id for r in study.runs() if (r.method, r.scaffold.get("r"), r.seed) in drop]
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        db.executemany("DELETE FROM runs WHERE run_id = ?", [(i,) for i in ids])
    return tmp_path


def test_report_records_and_renders_from_the_store_alone(swept, tmp_path, no_models):
    study, _ = swept
    out = copy_store(swept, tmp_path)
    text = write_report(study, out)
    assert "Runs: 10 of 10 done." in text
    table = pd.read_csv(out / "table.csv")
    lotta = table[table["method"] == "LottaLoRA"]
    assert (lotta["adapter bytes"].str.replace(",", "").astype(int) > 0).all()  # recorded by the sweep
    spectra = pd.read_csv(out / "spectra.csv")
    assert {"inputs (PCA)", "activations, scaffold at init"} <= set(spectra["spectrum"])
    assert "360 test images" in text and "2 seeds: seed range (< 5 seeds, not a confidence interval)" in text
    meta = json.loads((out / "study.json").read_text())
    assert {"numpy", "scipy", "torch"} <= set(meta["versions"]) and meta["seeds"] == [0, 1]
    assert meta["config"]["ranks"] == [0, 2, 4] and len(meta["runs"]) == 10


def test_failed_run_is_listed_and_does_not_crash_the_report(swept, tmp_path, no_models):
    study, _ = swept
    out = copy_store(swept, tmp_path)
    bad = Study.from_dict({**TINY, "ranks": [0, 2, 4, 99]})  # r = 99 > min(d_in, d_out): fails
    store = ResultsStore(out / "runs.sqlite")
    run = bad.runs(ranks=[99], baselines=False)[0]
    assert store.claim(run.run_id, run.study, run.config(), run.seed)
    store.fail(run.run_id, "ValueError: rank r=99 exceeds min(d_in, d_out) = 8\nTraceback (most recent call last):\n ...")
    text = write_report(bad, out)
    head = text.split("| method")[0]
    assert "1 failed" in head and "lotta r=99 seed=0" in head and "ValueError (1 run): `ValueError: rank r=99" in head
    assert "lotta r=99 seed=1" in head and "not run yet" in head


def test_incomplete_store_never_states_r_star_beyond_the_complete_ranks(swept, tmp_path, no_models):
    study, _ = swept
    out = copy_store(swept, tmp_path, drop={("lotta", 2, 1), ("lotta", 4, 1)})
    s = Study.from_dict({**TINY, "eps": [1e-9, 1.0]})  # 1e-9: nothing saturates; 1.0: everything does
    text = write_report(s, out)
    assert "not run yet: lotta r=2 seed=1, lotta r=4 seed=1" in text
    table = pd.read_csv(out / "table.csv", keep_default_na=False)
    assert table.loc[table["r"] == "4", "missing seeds"].item() == "1"
    assert table.loc[table["r"] == "0", "missing seeds"].item() == ""
    rows = [line for line in text.splitlines() if line.startswith("| 1e-09")]
    assert rows and "| > 0 |" in rows[0] and rows[0].endswith("| 0 |")  # r* > 0 = the only complete rank, not "> 4"
    assert "| > 4" not in text


def r_star_tables(text: str) -> list[list[str]]:
    """The eps cells of each r*(eps) table of a report."""
    tables, rows = [], None
    for line in text.splitlines():
        if line.startswith("| eps |"):
            rows = []
            tables.append(rows)
        elif rows is not None and line.startswith("| ") :
            rows.append(line.split(" | ")[0][2:])
        elif not line.startswith("|---"):
            rows = None
    return tables


def test_eps_relative_adds_a_table_of_its_own(swept, tmp_path):
    study, _ = swept
    out = copy_store(swept, tmp_path)
    text = write_report(Study.from_dict({**TINY, "eps_relative": True, "eps": [0.05]}), out)
    assert r_star_tables(text) == [["0.05 (5.00 pp, absolute)"], ["0.05 (5% of full training, relative)"]]
    assert "r*(eps), eps absolute" in text and "r*(eps), eps relative" in text


def test_a_loss_study_without_eps_is_read_relative_to_full_training(tmp_path):
    from reservoir_depth.report import rank_section

    study = Study.from_dict({"study": "lm", "dataset": "digits", "seeds": [0, 1, 2], "ranks": [1, 4],
                             "arch": {"name": "mlp", "hidden": [8]}})
    rows = [{Columns.METHOD: method, Columns.RANK: r, Columns.SEED: seed, "test_bpc": bpc, "n_test": 100}
            for seed in (0, 1, 2) for method, r, bpc in (("full", None, 2.0), ("lotta", 1, 2.5), ("lotta", 4, 2.08))]
    lines, r_stars, summary = rank_section(pd.DataFrame(rows), study, "test_bpc")
    text = "\n".join(lines)
    assert r_star_tables(text) == [[f"{e:g} ({100 * e:g}% of full training, relative)" for e in (0.02, 0.05, 0.1)]]
    assert "absolute" not in text.split("| eps |")[1]
    assert [s["relative"] for s in summary["r_star"]] == [True] * 3
    assert [s["r_star"] for s in summary["r_star"]] == [math.inf, 4, 4]  # 2.08 <= 2 * 1.05, not <= 2 * 1.02


def test_no_results_writes_nothing_and_says_what_happened(swept, tmp_path, no_models):
    study, _ = swept
    with pytest.raises(FileNotFoundError, match="no results store"):
        write_report(study, tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    store = ResultsStore(tmp_path / "runs.sqlite", create=True)
    for run in study.runs():
        store.claim(run.run_id, run.study, run.config(), run.seed)
        store.fail(run.run_id, "FileNotFoundError: Fashion-MNIST not found; apt-get install dataset-fashion-mnist")
    with pytest.raises(NoResults, match="every run that ran failed(.|\n)*apt-get install dataset-fashion-mnist"):
        write_report(study, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("runs.sqlite")) == []


def test_status_counts_other_settings(swept, tmp_path):
    study, _ = swept
    out = copy_store(swept, tmp_path)
    st = study_status(Study.from_dict({**TINY, "ranks": [0, 2]}), ResultsStore(out / "runs.sqlite"))
    assert len(st.done) == 8 and st.other == 2 and not st.missing


def test_old_store_without_records_renders_not_recorded(tmp_path, no_models):
    """docs/results stores written before the sweep recorded file sizes: rendered, never rebuilt."""
    shutil.copy(ROOT / "docs/results/fashion_mnist_plain20/runs.sqlite", tmp_path / "runs.sqlite")
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        db.execute("UPDATE runs SET metrics = json_remove(metrics, '$.adapter_bytes', '$.dense_bytes', '$.n_test')")
    study = Study.load(ROOT / "experiments/fashion_mnist_plain20.toml")
    text = write_report(study, tmp_path)
    n = len(study.runs())
    assert "not recorded" in text and f"Runs: {n} of {n} done." in text


def test_rank_table_recovery(swept):
    study, out = swept
    df = study.frame(ResultsStore(out / "runs.sqlite"))
    table = rank_table(df, seeds=study.seeds)
    full = df[df[Columns.METHOD] == "full"]["test_acc"].mean()
    r2 = df[(df[Columns.METHOD] == "lotta") & (df[Columns.RANK] == 2)]["test_acc"].mean()
    assert table.loc[table["r"] == 2, "recovery"].item() == pytest.approx(r2 / full)
    assert list(table["r"]) == ["twin", 0, 2, 4, "full"]
    assert "| LottaLoRA | 2 |" in markdown(table)


def test_backfill_records_what_old_runs_lack(swept, tmp_path):
    from reservoir_depth.sweep import backfill

    study, _ = swept
    out = copy_store(swept, tmp_path)
    with sqlite3.connect(out / "runs.sqlite") as db:  # as stored before the sweep recorded them
        for run_id, m, h in db.execute("SELECT run_id, metrics, history FROM runs").fetchall():
            m, h = json.loads(m), json.loads(h)
            for k in ("adapter_bytes", "dense_bytes", "n_test"):
                m.pop(k, None)
            for k in ("dataset", "spectra_init"):
                h.pop(k, None)
            db.execute("UPDATE runs SET metrics = ?, history = ? WHERE run_id = ?",
                       (json.dumps(m), json.dumps(h), run_id))
    store = ResultsStore(out / "runs.sqlite")
    assert "adapter_bytes" not in study.frame(store)
    assert backfill(study, store) == (10, [])
    df = study.frame(store)
    assert (df[df[Columns.METHOD] == "lotta"][Columns.ADAPTER_BYTES] > 0).all() and (df["n_test"] == 360).all()
    assert backfill(study, store) == (0, [])  # once
    twin = df[df[Columns.METHOD] == "twin"][Columns.RUN_ID].iloc[0]
    assert {"dataset", "spectra_init", "spectra"} <= set(store.history(twin))


def test_running_and_stale_runs_are_told_apart(swept, tmp_path):
    study, _ = swept
    out = copy_store(swept, tmp_path, drop={("lotta", 2, 1), ("lotta", 4, 1)})
    s = Study.from_dict(TINY)
    held, left = [r for r in s.runs() if r.method == "lotta" and r.seed == 1 and r.scaffold["r"] in (2, 4)]
    store = ResultsStore(out / "runs.sqlite", lease=60)
    for run in (held, left):
        assert store.claim(run.run_id, run.study, run.config(), run.seed)
    with sqlite3.connect(out / "runs.sqlite") as db:  # the second worker stopped beating long ago
        db.execute("UPDATE runs SET heartbeat = heartbeat - 3600 WHERE run_id = ?", (left.run_id,))
    st = study_status(s, store)
    assert st.running == [held] and st.stale == [left]
    assert "stale (no heartbeat within the lease; the next sweep reruns them): lotta r=4 seed=1" in "\n".join(st.lines())


def test_a_language_model_study_is_ranked_by_bits_per_character_lower_is_better():
    """An lm store has test_bpc (and test_loss, no test_acc): the report ranks by bpc, and r*(eps)
    counts a rank saturated when its bpc is at most full + eps (lower is better)."""
    from reservoir_depth.saturation import saturation
    from reservoir_depth.tasks import metric_of

    study = Study.from_dict({"study": "lm", "dataset": "digits", "seeds": [0, 1, 2], "ranks": [1, 4],
                             "arch": {"name": "mlp", "hidden": [8]}})
    rows = []
    for seed in (0, 1, 2):
        for method, r, bpc in (("full", None, 2.00), ("lotta", 1, 2.50), ("lotta", 4, 2.004)):
            rows.append({Columns.METHOD: method, Columns.RANK: r, Columns.SEED: seed, "test_bpc": bpc + 0.001 * seed,
                         "test_loss": (bpc + 0.001 * seed) * 0.693})
    df = pd.DataFrame(rows)
    assert not metric_of("test_bpc").higher_is_better
    sr = saturation(df, study, "test_bpc", eps=0.01)
    assert sr.r_star_ == 4
    assert saturation(df, study, "test_bpc", eps=0.001).r_star_ == math.inf


def test_an_r_star_that_clears_by_less_than_one_test_example_per_seed_is_a_tie():
    from reservoir_depth.rank import SaturationRank
    from reservoir_depth.report import _r_star_cell
    from reservoir_depth.tasks import metric_of

    values = np.array([[0.80, 0.8905, 0.92]] * 3)  # ranks 4, 6, 7; threshold 0.90 - 0.01 = 0.89
    sr = SaturationRank(eps=0.01, n_boot=0).fit([4, 6, 7], values, [0.90] * 3)
    cell, margin, tie = _r_star_cell(sr, metric_of("test_acc"), n_test=100)
    assert tie and cell == "6 (tie; 7 clears by 3.00 pp, 3 test examples per seed)"
    assert margin == "0.05 pp, 0.05 test examples per seed"
    cell, _, tie = _r_star_cell(sr, metric_of("test_acc"), n_test=10_000)  # 0.05 pp = 5 examples: resolved
    assert not tie and cell == "6"
    assert _r_star_cell(sr, metric_of("test_acc"), n_test=None)[1] == "0.05 pp"


def test_the_r_star_cell_names_a_crossing_that_larger_ranks_undo():
    from reservoir_depth.rank import SaturationRank
    from reservoir_depth.report import _r_star_cell
    from reservoir_depth.tasks import metric_of

    ranks = [1, 2, 4, 8, 16]
    values = [[0.80, 0.85, 0.97, 0.90, 0.975], [0.80, 0.85, 0.97, 0.90, 0.975]]
    sr = SaturationRank(eps=0.01).fit(ranks, values, [0.98, 0.98])
    cell, _, _ = _r_star_cell(sr, metric_of("test_acc"), None)
    assert cell.startswith("16 (r = 4 crossed first, undone at r = 8)"), cell


def test_recovery_levels_sit_on_the_scale_from_the_null_model_to_the_reference():
    """r*_q is r*(eps) at the absolute eps = (1 - q)(M_ref - M_null): with full 0.90 and null 0.10, q = 0.9
    needs 0.82; a curve 0.5, 0.81, 0.83, 0.88 gives r*_0.9 = 4, r*_0.95 (0.86) = 8 and r*_0.99 (0.892) none."""
    from reservoir_depth.saturation import recovery_rank

    study = Study.from_dict({"study": "q", "dataset": "digits", "seeds": [0, 1], "ranks": [1, 2, 4, 8],
                             "arch": {"name": "mlp", "hidden": [8]}})
    rows = []
    for seed in (0, 1):
        rows.append({Columns.METHOD: "full", Columns.RANK: None, Columns.SEED: seed, "test_acc": 0.90,
                     "null/test_acc": 0.10})
        for r, v in ((1, 0.5), (2, 0.81), (4, 0.83), (8, 0.88)):
            rows.append({Columns.METHOD: "lotta", Columns.RANK: r, Columns.SEED: seed, "test_acc": v,
                         "null/test_acc": 0.10})
    df = pd.DataFrame(rows)
    got = {q: recovery_rank(df, study, "test_acc", q)[0] for q in (0.9, 0.95, 0.99)}
    assert got[0.9].threshold_ == pytest.approx(0.82) and got[0.9].r_star_ == 4
    assert got[0.95].r_star_ == 8 and math.isinf(got[0.99].r_star_)
    sr, null, why = recovery_rank(df.drop(columns="null/test_acc"), study, "test_acc", 0.9)
    assert sr is None and "null model was not recorded" in why
    worse = df.assign(**{"null/test_acc": 0.95})
    assert "no better than the null model" in recovery_rank(worse, study, "test_acc", 0.9)[2]


def test_a_bayes_reference_measures_r_star_against_the_recorded_bayes_risk():
    """reference = "bayes": r* and the recovery levels are read against bayes/<metric> (a planted teacher's own
    test loss), with no full-training run needed; a study whose runs recorded none is refused by name."""
    from reservoir_depth.saturation import recovery_rank, saturation
    from reservoir_depth.study import StudyError

    study = Study.from_dict({"study": "b", "dataset": {"name": "planted", "k": 2}, "seeds": [0, 1], "ranks": [1, 2, 4],
                             "full": False, "reference": "bayes", "arch": {"name": "linear"}})
    assert study.reference == "bayes" and study.to_dict()["reference"] == "bayes"
    assert "reference" not in Study.from_dict({**study.to_dict(), "reference": "full"}).to_dict()
    rows = [{Columns.METHOD: "lotta", Columns.RANK: r, Columns.SEED: s, "test_loss": v, "bayes/test_loss": 0.30,
             "null/test_loss": 3.0} for s in (0, 1) for r, v in ((1, 1.5), (2, 0.31), (4, 0.305))]
    df = pd.DataFrame(rows)
    sr = saturation(df, study, "test_loss", 0.05, relative=True)
    assert sr.full_ == pytest.approx(0.30) and sr.r_star_ == 2  # 0.31 <= 0.30 * 1.05
    assert recovery_rank(df, study, "test_loss", 0.9)[0].r_star_ == 2
    with pytest.raises(ValueError, match=r"reference = 'bayes' but no run recorded 'bayes/test_loss'"):
        saturation(df.drop(columns="bayes/test_loss"), study, "test_loss", 0.05, relative=True)
    with pytest.raises(StudyError, match=r"reference must be one of 'full', 'bayes', got 'best'"):
        Study.from_dict({**study.to_dict(), "reference": "best"})


def test_a_planted_run_records_its_bayes_risk():
    from reservoir_depth import data
    from reservoir_depth.sweep import records

    d = data.load("planted", k=1, noise=0.2, n_train=64, n_test=32)
    assert d.bayes["test_loss"] == pytest.approx(0.04 * 32, rel=0.3)  # noise^2 x n_out outputs
    run = Run(study="b", dataset={"name": "planted", "k": 1, "noise": 0.2, "n_train": 64, "n_test": 32},
              arch={"name": "linear"}, method="full", seed=0)
    assert records(run, None, run.data())[0]["bayes/test_loss"] == run.data().bayes["test_loss"]
