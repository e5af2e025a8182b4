"""The study schema (Study) and the results-frame schema (Columns, curves)."""

import sqlite3
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reservoir_depth.cli import main
from reservoir_depth.results import Columns
from reservoir_depth.study import Study, StudyError, curves

ROOT = Path(__file__).resolve().parents[1]
BASE = {"study": "s", "dataset": "digits", "seeds": [0], "ranks": [0, 2], "arch": {"name": "mlp", "hidden": "tiny"},
        "train": {"epochs": 1}, "scaffold": {"alpha": 8.0, "spec": {"name": "normal", "gain": 1.0}}}


@pytest.mark.parametrize("patch, match", [
    ({"rank": [4]}, r"unknown key\(s\) rank in the study; allowed: .*ranks"),
    ({"train": {"epoch": 3}}, r"unknown key\(s\) train\.epoch in \[train\]; allowed: .*epochs"),
    ({"scaffold": {"alpah": 4.0}}, r"unknown key\(s\) scaffold\.alpah in \[scaffold\]; allowed: .*alpha"),
    ({"scaffold": {"spec": {"name": "normal", "gian": 2.0}}}, r"scaffold\.spec\.gian .*allowed: .*gain"),
    ({"arch": {"name": "mlp", "hiden": "tiny"}}, r"arch\.hiden .*allowed: .*hidden"),
    ({"arch": {"name": "resnet"}}, r"unknown architecture arch\.name = 'resnet'; allowed: .*mlp"),
    ({"dataset": "cifar"}, r"unknown dataset 'cifar'; allowed: .*digits"),
    ({"dataset": {"name": "planted", "kk": 4}}, r"dataset\.kk in the dataset table of 'planted'; allowed: .*k, "),
])
def test_unknown_keys_are_refused_naming_source_key_and_allowed(patch, match):
    with pytest.raises(StudyError, match=match):
        Study.from_dict({**BASE, **patch}, source="my.toml")
    with pytest.raises(ValueError, match="<dict>"):  # the dict path (runs_of) validates too
        Study.of({**BASE, **patch}).runs()


@pytest.mark.parametrize("key", ["study", "dataset", "seeds", "arch"])
def test_missing_key(key):
    with pytest.raises(StudyError, match=f"my.toml: missing key\\(s\\) {key}"):
        Study.from_dict({k: v for k, v in BASE.items() if k != key}, source="my.toml")


@pytest.mark.parametrize("patch, match", [
    ({"seeds": "0"}, "seeds must be a list of ints"),
    ({"seeds": [0, 0]}, "distinct"),
    ({"ranks": [1.5]}, "ranks must be a list of ints >= 0"),
    ({"ranks": [-1]}, "ranks must be a list of ints >= 0"),
    ({"full": "yes"}, "full must be true or false"),
    ({"spectra": ["full"]}, r"spectra lists unknown method\(s\) \['full'\]"),
    ({"train": {"epochs": "3"}}, "train.epochs must be a int, got '3'"),
    ({"train": {"epochs": 2.5}}, "train.epochs must be a int"),
    ({"train": {"lr": -1.0}}, "lr must be a finite number > 0"),
    ({"scaffold": {"alpha": "16"}}, "scaffold.alpha must be a float"),
    ({"scaffold": {"spec": {"name": "gaussian"}}}, "unknown distribution 'gaussian'"),
    ({"eps": [0.01, -1]}, "eps must be a non-empty list of finite numbers >= 0"),
    ({"dataset": 3}, "dataset must be a name or a table"),
])
def test_wrong_types_and_values(patch, match):
    with pytest.raises(StudyError, match=match):
        Study.from_dict({**BASE, **patch}, source="my.toml")


def test_study_file_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('study = "x"\ndataset = "digits"\nseeds = [0]\nrank = [1, 2]\n[arch]\nname = "mlp"\n')
    with pytest.raises(StudyError, match=f"{p}: unknown key\\(s\\) rank"):
        Study.load(p)
    p.write_text("study = ")
    with pytest.raises(StudyError, match=f"{p}: not a valid TOML file"):
        Study.load(p)


def test_cli_refuses_a_misspelt_key_instead_of_running_a_partial_study(tmp_path, capsys):
    p = tmp_path / "s.toml"
    p.write_text('study = "x"\ndataset = "digits"\nseeds = [0]\nrank = [1, 2]\n[arch]\nname = "mlp"\n')
    assert main(["sweep", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) rank" in err and "ranks" in err
    assert not (tmp_path / "o" / "runs.sqlite").exists()


def test_expansion_and_resolved_view():
    s = Study.from_dict(BASE)
    runs = s.runs()
    assert [(r.method, r.scaffold.get("r")) for r in runs] == [("full", None), ("lotta", 0), ("lotta", 2)]
    d = s.to_dict()
    assert d["seeds"] == [0] and "eps" not in d and d["twin"] is False  # no eps: the metric's own
    assert Study.from_dict(d) == s
    assert not isinstance(s, Mapping)  # a typed study, not a mapping: read its fields


def test_default_study_ships_with_the_package_and_experiments_links_it():
    s = Study.default()
    assert s.study == "digits_mlp" and s.scaffold["bias"] == "frozen"
    assert Study.load(ROOT / "experiments" / "digits_mlp.toml") == s


def _stored_ids(folder):
    with sqlite3.connect(ROOT / "docs" / "results" / folder / "runs.sqlite") as db:
        return {r for (r,) in db.execute("SELECT run_id FROM runs")}


@pytest.mark.parametrize("name", ["digits_mlp", "digits_linear_head", "fashion_mnist_mlp", "fashion_mnist_plain20",
                                  "mnist5k_mlp", "mnist5k_mlp_rslora"])
def test_stored_runs_keep_their_ids(name):
    """Every stored run of docs/results/<study> is still a run of its study file (defaults that changed are
    pinned in the files): a changed run id would silently orphan the stored results."""
    study = Study.load(ROOT / "experiments" / f"{name}.toml")
    assert _stored_ids(name) <= {r.run_id for r in study.runs()}


def test_columns_match_the_store_frame(tmp_path):
    from reservoir_depth.results import ResultsStore

    run = Study.from_dict(BASE).runs()[1]
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    store.claim(run.run_id, run.study, run.config(), run.seed)
    store.finish(run.run_id, {"test_acc": 0.5, "trainable": 3, "total": 9, "trainable_fraction": 1 / 3})
    df = store.frame()
    for c in (Columns.RUN_ID, Columns.SEED, Columns.METHOD, Columns.RANK, Columns.config("scaffold", "alpha")):
        assert c in df.columns, c


@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0, 1, 2, 4]), st.floats(0, 1)), max_size=20,
                unique_by=lambda t: t[:2]))
def test_curves_places_every_run_at_its_seed_and_rank(rows):
    df = pd.DataFrame([{Columns.SEED: s, Columns.METHOD: "lotta", Columns.RANK: r, "m": v} for s, r, v in rows]
                      + [{Columns.SEED: 9, Columns.METHOD: "full", Columns.RANK: np.nan, "m": 0.7}])
    ranks, values, full, seeds = curves(df, "m")
    assert values.shape == (len(seeds), len(ranks)) and np.isfinite(values).sum() == len(rows)
    for s, r, v in rows:
        assert values[list(seeds).index(s), list(ranks).index(r)] == v
    assert full[list(seeds).index(9)] == 0.7 and np.isnan(full[seeds != 9]).all()


def test_the_default_study_is_declared_package_data():
    """A wheel ships reservoir_depth/studies/*.toml only if pyproject declares it: `reservoir-depth run` with no
    argument must work from an installed package, not only from a checkout."""
    import fnmatch
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = declared["reservoir_depth"]
    shipped = [p.relative_to(ROOT / "reservoir_depth").as_posix() for p in (ROOT / "reservoir_depth/studies").glob("*")]
    assert shipped and all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in shipped)


def test_a_study_file_cannot_set_the_log_dir():
    """Each run logs under --log-dir/<study>/<run_id> (the runner's); [train] log_dir is not a study key."""
    from reservoir_depth.study import StudyError

    d = {"study": "t", "dataset": "digits", "seeds": [0], "arch": {"name": "mlp", "hidden": [8]},
         "train": {"log_dir": "runs"}}
    with pytest.raises(StudyError, match="unknown key.*train.log_dir"):
        Study.from_dict(d)


def test_a_study_without_eps_takes_its_metrics_tolerance_and_an_explicit_eps_stays_absolute():
    from reservoir_depth.tasks import metric_of

    s = Study.from_dict(BASE)
    assert s.eps is None
    assert s.tolerances(metric_of("test_acc")) == [(0.005, False), (0.01, False), (0.02, False)]
    for loss in ("test_loss", "test_bpc", "test_nrmse"):
        assert s.tolerances(metric_of(loss)) == [(0.02, True), (0.05, True), (0.1, True)]
    explicit = Study.from_dict({**BASE, "eps": [0.01]})  # what eps meant for every stored study: absolute
    assert explicit.tolerances(metric_of("test_bpc")) == [(0.01, False)]
    assert Study.from_dict({**BASE, "eps": [0.01], "eps_relative": True}).tolerances(metric_of("test_bpc")) == \
        [(0.01, False), (0.01, True)]
    assert Study.from_dict(explicit.to_dict()) == explicit and Study.from_dict(s.to_dict()) == s


# ----------------------------------------------------------------------------- rank_caps: ranks past a narrow layer

def test_rank_caps_enter_a_run_only_where_they_bind():
    """rank_caps {pattern: cap}: a run at rank r gets max_rank {pattern: cap} for the caps below r only, so
    a study can extend its ranks past a narrow layer's full rank while its runs at r <= cap keep their ids."""
    plain = Study.from_dict({**BASE, "ranks": [0, 2, 4, 8]})
    capped = Study.from_dict({**BASE, "ranks": [0, 2, 4, 8, 16], "rank_caps": {"layers.1": 4, "layers.0": 8}})
    ids = {(r.method, r.scaffold.get("r")): r.run_id for r in plain.runs()}
    by_rank = {(r.method, r.scaffold.get("r")): r for r in capped.runs()}
    for (method, r), run_id in ids.items():  # the runs no cap binds keep their ids; the others change
        assert (by_rank[(method, r)].run_id == run_id) == (r is None or r <= 4), (method, r)
    assert "max_rank" not in by_rank[("lotta", 4)].scaffold
    assert by_rank[("lotta", 8)].scaffold["max_rank"] == {"layers.1": 4}
    assert by_rank[("lotta", 16)].scaffold["max_rank"] == {"layers.0": 8, "layers.1": 4}
    assert by_rank[("lotta", 16)].scaffold_config().rank_for("layers.1") == ("layers.1", 4)
    assert Study.from_dict(capped.to_dict()) == capped and "rank_caps" not in plain.to_dict()


@pytest.mark.parametrize("patch, match", [
    ({"rank_caps": {"layers.1": 0}}, r"rank_caps must be a table \{pattern: cap\} of ints >= 1"),
    ({"rank_caps": {"layers.1": "4"}}, r"rank_caps must be a table"),
    ({"rank_caps": [4]}, r"rank_caps must be a table"),
    ({"rank_caps": {"layers.1": 4}, "scaffold": {"max_rank": {"layers.1": 2}}},
     r"rank_caps and \[scaffold\] max_rank both cap 'layers.1'"),
    ({"rank_caps": {"(": 4}, "ranks": [8]}, r"max_rank: pattern '\(' is not a valid regular expression"),
])
def test_bad_rank_caps_are_refused(patch, match):
    with pytest.raises(StudyError, match=match):
        Study.from_dict({**BASE, **patch}, source="my.toml")


def test_rank_caps_keep_the_familys_declared_caps():
    """A run's own max_rank replaces the family's declared one whole, so the binding caps are added to it:
    the reservoir's W_in stays capped at d_in when the recurrent W's cap is added."""
    study = Study.from_dict({"study": "res", "dataset": {"name": "mackey-glass", "n_train": 400, "n_test": 200, "window": 50, "washout": 10},
                             "seeds": [0], "full": False, "ranks": [2, 64],
                             "arch": {"name": "reservoir", "units": 32}, "rank_caps": {"W": 32}})
    low, high = study.runs()
    assert "max_rank" not in low.scaffold
    assert high.scaffold["max_rank"] == {"W": 32, "W_in": 1}
    assert high.scaffold_config().rank_for("W_in") == ("W_in", 1)
