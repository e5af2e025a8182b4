"""Run identity: every run stored under docs/results keeps its id, recomputed from the study that made it.

A run id is the hash of the run's resolved config (study.Run.config); identity.identity decides
which fields of TrainConfig, ScaffoldConfig and DistributionSpec enter it. The stores below were
written by the studies in experiments/ (a TOML file, or a script's study dicts); each of their runs
must come out of that study with the id it was stored under.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import sqlite3
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from reservoir_depth.distributions import DISTRIBUTIONS, DistributionSpec
from reservoir_depth.identity import NOT_IDENTITY, added, identity
from reservoir_depth.scaffold import ScaffoldConfig
from reservoir_depth.study import Study
from reservoir_depth.run import Run
from reservoir_depth.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS, EXPERIMENTS = ROOT / "docs" / "results", ROOT / "experiments"
TOML_STORES = sorted(p.parent.name for p in RESULTS.glob("*/runs.sqlite") if (EXPERIMENTS / f"{p.parent.name}.toml").exists())
SCRIPT_STORES = ("distribution_families", "fashion_mnist_mlp_studies", "full_rank_gap", "planted")


def stored(name: str) -> dict[str, dict]:
    with sqlite3.connect(f"file:{RESULTS / name / 'runs.sqlite'}?mode=ro", uri=True) as db:
        return {run_id: json.loads(config) for run_id, config in db.execute("SELECT run_id, config FROM runs")}


def experiment(module: str):
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(EXPERIMENTS))


def script_studies(name: str) -> list[dict]:
    """The study dicts the script behind docs/results/<name> sweeps (and, for distribution_families, those
    of its legacy draw, version 1 on seeds 0 and 1, whose runs stay in the store under their own ids)."""
    if name == "planted":
        m = experiment("planted_rank")
        return [m.study(f, k) for f, v in m.FAMILIES.items() for k in v[3]]
    if name == "fashion_mnist_mlp_studies":
        return list(experiment("fashion_mnist_mlp_studies").studies().values())
    if name == "full_rank_gap":
        m = experiment("full_rank_gap")
        return [m.variant(b, v) for b in m.BENCHMARKS for v in m.VARIANTS]
    m = experiment("distribution_families")
    out = [m.study(f, full=(f == "normal")) for f in sorted(DISTRIBUTIONS)]
    out += [m.study(f, center=True) for f in sorted(DISTRIBUTIONS) if m.nonzero_mean(f)]
    out.append({**m.study("normal", ranks=[8], seeds=m.SEED_SWEEP), "study": "families_seed_sweep"})
    legacy = lambda s: {**s, "seeds": [0, 1], "scaffold": {**s["scaffold"], "spec": {
        **s["scaffold"]["spec"], "version": 1}}}  # the draw of version 1
    return out + [legacy(s) for s in out[:-1]] + [{**out[-1], "scaffold": {**out[-1]["scaffold"],
                                                                           "spec": {"name": "normal", "version": 1}}}]


def _check(name: str, studies: list[Study]) -> None:
    runs = stored(name)
    assert runs, f"docs/results/{name}/runs.sqlite holds no run"
    for run_id, config in runs.items():  # the store's own record: id = hash of the config it stored
        config.pop("version")
        assert hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16] == run_id
    made = {r.run_id: r for s in studies for r in s.runs()}
    lost = sorted(set(runs) - set(made))
    assert not lost, (f"docs/results/{name}: {len(lost)} of {len(runs)} stored runs are no longer made by their "
                      f"study, e.g. {lost[0]} = {runs[lost[0]]}")


@pytest.mark.parametrize("name", TOML_STORES)
def test_stored_run_ids_of_toml_studies_are_unchanged(name):
    _check(name, [Study.load(EXPERIMENTS / f"{name}.toml")])


@pytest.mark.parametrize("name", SCRIPT_STORES)
def test_stored_run_ids_of_script_studies_are_unchanged(name):
    _check(name, [Study.of(s) for s in script_studies(name)])


def test_every_committed_store_is_checked():
    assert {p.parent.name for p in RESULTS.glob("*/runs.sqlite")} == set(TOML_STORES) | set(SCRIPT_STORES)


# ----------------------------------------------------------------------------- the identity function

@dataclasses.dataclass(frozen=True)
class Config:
    a: int = 1
    b: str | None = dataclasses.field(default="new", metadata=added(None))
    c: bool = dataclasses.field(default=False, metadata=NOT_IDENTITY)


@given(st.integers(), st.one_of(st.none(), st.text(max_size=3)), st.booleans())
def test_identity_omits_added_fields_at_their_old_value_and_never_shows_hidden_ones(a, b, c):
    d = identity(Config(a, b, c))
    assert d["a"] == a and "c" not in d
    assert ("b" in d) == (b is not None) and d.get("b", None) == b


def test_identity_encodes_fields_by_name():
    assert identity(Config(3, "x"), a=str) == {"a": "3", "b": "x"}


def test_identity_refuses_an_unknown_field_to_encode():
    with pytest.raises(ValueError, match="'z'.*allowed: a, b, c"):
        identity(Config(), z=str)


def test_train_config_identity_hides_progress_and_log_dir_and_omits_added_settings_at_their_old_value():
    d = identity(TrainConfig(progress=True, log_dir="/tmp/x"))
    assert "progress" not in d and "log_dir" not in d
    assert not {"free_run", "seed_dtype", "compile"} & set(d)
    assert identity(TrainConfig(compile=True, free_run=False))["compile"] is True
    assert identity(TrainConfig(free_run=False))["free_run"] is False


def test_run_config_train_is_the_train_config_identity():
    run = Run("s", "digits", {"name": "mlp"}, "full", 3, train={"epochs": 2, "seed_dtype": "bfloat16"})
    assert run.config()["train"] == identity(TrainConfig(epochs=2, seed=3, seed_dtype="bfloat16"))


def test_spec_and_scaffold_dicts_are_their_identity():
    spec = DistributionSpec("normal", version=1)
    assert "version" not in spec.to_dict() and "center" not in spec.to_dict()
    assert DistributionSpec("normal", center=True).to_dict()["version"] == 2
    cfg = ScaffoldConfig()
    assert "specs" not in cfg.to_dict() and "max_rank" not in cfg.to_dict()
    assert ScaffoldConfig(max_rank={"head": 2}).to_dict()["max_rank"] == {"head": 2}
