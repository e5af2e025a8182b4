"""The study schema: one typed owner.

A study (a TOML file in experiments/, or a dict) names a dataset, an architecture,
seeds, the LoRA ranks r and the baselines; ``Study.load(path)`` / ``Study.from_dict(d)``
check every key, nested tables included, against the settings they feed
(TrainConfig, ScaffoldConfig, DistributionSpec, the architecture's constructor), and
refuse an unknown key, a missing key or a wrong type, naming the file, the key and
what is allowed. ``Study.runs()`` expands it into ``Run`` s, one per method, rank and seed
(``run.py``, whose names are re-exported here).

``curves`` turns a results frame (``ResultsStore.frame``, its column names in
results.Columns) into the arrays the saturation estimator takes (rank.SaturationRank).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import platform
import tomllib
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from importlib import resources as package_files
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas

from .checks import is_number
from .data import DATASETS
from .distributions import DistributionSpec
from .adapter_format import library_versions
from .models import ARCHITECTURES
from .results import Columns
from .run import Run
from .scaffold import ScaffoldConfig
from .tasks import Metric, metric_of, task_of
from .train import TrainConfig


# ----------------------------------------------------------------------------- the study schema

REQUIRED = ("study", "dataset", "seeds", "arch")
# what r* and the recovery levels are measured against: full training's mean per seed, or the Bayes risk the
# data set records (a planted teacher's own test loss: the best any model can do on that test split)
REFERENCES = ("full", "bayes")
SPECTRA_METHODS = ("twin", "lotta")


def _fields(cls, skip: Sequence[str] = ()) -> dict[str, Any]:
    """A dataclass's settable fields and their defaults."""
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(cls) if f.name not in skip}


TRAIN_KEYS = _fields(TrainConfig, skip=("seed", "progress", "log_dir"))  # seed from `seeds`; log_dir from --log-dir
SCAFFOLD_KEYS = _fields(ScaffoldConfig, skip=("r", "root_seed"))  # r from `ranks`, root_seed from `seeds`
SPEC_KEYS = _fields(DistributionSpec)
RESOURCE_KEYS = {"cpus": 1.0, "gpus": 0.0}  # what a Ray task reserves per run (ray_sweep)


def _arch_keys(name: str) -> dict[str, Any]:
    params = inspect.signature(ARCHITECTURES[name]).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "d_in", "n_out")}


class StudyError(ValueError):
    """A study file or dict that cannot be honoured; the message names the source and the key."""


def _check_keys(d: Mapping[str, Any], allowed: Sequence[str], where: str, source: str, prefix: str = "") -> None:
    if not isinstance(d, MappingABC):
        raise StudyError(f"{source}: {prefix.rstrip('.') or 'the study'} must be a table, got {d!r}")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise StudyError(f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)} in {where}; "
                         f"allowed: {', '.join(sorted(allowed))}")


def _check_type(value: Any, default: Any, key: str, source: str) -> None:
    """Values of a setting whose default is a bool / int / float / str must have that type
    (an int is accepted for a float)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = is_number(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        return
    if not ok:
        raise StudyError(f"{source}: {key} must be a {type(default).__name__}, got {value!r}")


@dataclass(frozen=True, eq=True)
class Study:
    """A typed study: the keys of a study TOML (docs/guide.md, "Studies").

    study, dataset, seeds and arch are required; ranks (LoRA ranks r, default none),
    full (full training, default true), twin (full training from the scaffold, default
    false), spectra (true, false, or a list of "twin" / "lotta"), eps (absolute tolerances of
    r*(eps), in the metric's units: accuracy as a fraction, or loss units; without it, the
    headline metric's own eps values and tolerance kind, tasks.METRICS: see ``tolerances``),
    eps_relative (with eps: also report r* with eps as a fraction of the full-training metric),
    and the tables [arch], [train], [scaffold] (with scaffold.spec) and [resources] (what a
    Ray backend reserves for each run: cpus, default 1, and gpus, default 0; not part of a run's
    config, so it never changes a run id), and rank_caps {pattern: cap} (a layer narrower than the
    largest ranks, capped at its full rank min(d_in, d_out): a run at rank r gets scaffold.max_rank
    {pattern: cap} for the caps below r only, so its runs at r <= cap keep their ids), and reference ("full",
    the default: r* and the recovery levels against full training; "bayes": against the Bayes risk the runs
    record, which a planted teacher's data set knows).

    ``to_dict()`` gives the resolved keys as plain values.
    """

    study: str
    dataset: str | Mapping[str, Any]
    seeds: tuple[int, ...]
    arch: Mapping[str, Any]
    ranks: tuple[int, ...] = ()
    full: bool = True
    twin: bool = False
    spectra: bool | tuple[str, ...] = False
    train: Mapping[str, Any] = field(default_factory=dict)
    scaffold: Mapping[str, Any] = field(default_factory=dict)
    eps: tuple[float, ...] | None = None  # None: the metric's own (tolerances)
    eps_relative: bool = False
    resources: Mapping[str, Any] = field(default_factory=dict)
    rank_caps: Mapping[str, int] = field(default_factory=dict)
    reference: str = "full"  # REFERENCES: what r* and the recovery levels are measured against
    source: str = field(default="<dict>", compare=False)

    # -------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> "Study":
        """Validate ``d`` (as read from TOML) and build the Study; StudyError names ``source`` and the key."""
        keys = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
        _check_keys(d, keys, "the study", source)
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise StudyError(f"{source}: missing key(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}")
        if not isinstance(d["study"], str) or not d["study"]:
            raise StudyError(f"{source}: study must be a non-empty string (the study's name), got {d['study']!r}")
        ds = cls._dataset(d["dataset"], source)
        seeds = cls._ints(d["seeds"], "seeds", source, minimum=0)
        if not seeds or len(set(seeds)) != len(seeds):
            raise StudyError(f"{source}: seeds must be a non-empty list of distinct ints, got {d['seeds']!r}")
        ranks = cls._ints(d.get("ranks", []), "ranks", source, minimum=0)
        if len(set(ranks)) != len(ranks):
            raise StudyError(f"{source}: ranks must be distinct, got {d['ranks']!r}")
        for k in ("full", "twin", "eps_relative"):
            if k in d and not isinstance(d[k], bool):
                raise StudyError(f"{source}: {k} must be true or false, got {d[k]!r}")
        spectra = d.get("spectra", False)
        if isinstance(spectra, list):
            bad = [m for m in spectra if m not in SPECTRA_METHODS]
            if bad:
                raise StudyError(f"{source}: spectra lists unknown method(s) {bad}; allowed: {list(SPECTRA_METHODS)}")
            spectra = tuple(spectra)
        elif not isinstance(spectra, bool):
            raise StudyError(f"{source}: spectra must be true, false or a list of {list(SPECTRA_METHODS)}, "
                             f"got {spectra!r}")
        eps = d.get("eps")
        if eps is not None and not (isinstance(eps, list) and eps and all(is_number(e) and math.isfinite(e) and e >= 0 for e in eps)):
            raise StudyError(f"{source}: eps must be a non-empty list of finite numbers >= 0, got {eps!r}")
        arch = cls._arch(d["arch"], source)
        train = cls._table(d.get("train", {}), TRAIN_KEYS, "train", source)
        scaffold = cls._table(d.get("scaffold", {}), SCAFFOLD_KEYS, "scaffold", source)
        resources = cls._table(d.get("resources", {}), RESOURCE_KEYS, "resources", source)
        bad = {k: v for k, v in resources.items() if not (math.isfinite(v) and v >= 0)}
        if bad or resources and not any(resources.values()):
            raise StudyError(f"{source}: [resources] cpus and gpus per run must be finite numbers >= 0, not both "
                             f"0, got {resources!r}")
        caps = d.get("rank_caps", {})
        if not (isinstance(caps, MappingABC) and all(isinstance(c, int) and not isinstance(c, bool) and c >= 1
                                                     for c in caps.values())):
            raise StudyError(f"{source}: rank_caps must be a table {{pattern: cap}} of ints >= 1, got {caps!r}")
        both = sorted(set(caps) & set(scaffold.get("max_rank", {})))
        if both:
            raise StudyError(f"{source}: rank_caps and [scaffold] max_rank both cap {both[0]!r}: give each layer's "
                             f"cap once (max_rank: every run; rank_caps: the runs it binds)")
        reference = d.get("reference", "full")
        if reference not in REFERENCES:
            raise StudyError(f"{source}: reference must be one of {', '.join(map(repr, REFERENCES))}, got {reference!r}")
        if "spec" in scaffold and not isinstance(scaffold["spec"], str):
            _check_keys(scaffold["spec"], list(SPEC_KEYS), "[scaffold.spec]", source, "scaffold.spec.")
            for k, v in scaffold["spec"].items():
                _check_type(v, SPEC_KEYS[k], f"scaffold.spec.{k}", source)
        study = cls(study=d["study"], dataset=ds, seeds=seeds, arch=arch, ranks=ranks, full=d.get("full", True),
                    twin=d.get("twin", False), spectra=spectra, train=train, scaffold=scaffold,
                    eps=None if eps is None else tuple(float(e) for e in eps),
                    eps_relative=d.get("eps_relative", False),
                    resources={**RESOURCE_KEYS, **resources}, rank_caps=dict(sorted(caps.items())),
                    reference=reference, source=source)
        try:  # the settings' own checks (values in range, known families, ...), with the source named
            TrainConfig(**train)
        except (ValueError, TypeError) as e:
            raise StudyError(f"{source}: [train] {e}") from e
        try:
            Run(study.study, ds, arch, "lotta", seeds[0], train, {**scaffold, "r": 0}).scaffold_config()
            if caps:
                study.runs(ranks=[max(caps.values()) + 1], baselines=False)[0].scaffold_config()
        except (ValueError, TypeError) as e:
            raise StudyError(f"{source}: {e}") from e
        return study

    @staticmethod
    def _ints(v: Any, key: str, source: str, minimum: int) -> tuple[int, ...]:
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= minimum
                                              for x in v):
            raise StudyError(f"{source}: {key} must be a list of ints >= {minimum}, got {v!r}")
        return tuple(v)

    @staticmethod
    def _table(t: Any, allowed: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
        _check_keys(t, list(allowed), f"[{name}]", source, f"{name}.")
        for k, v in t.items():
            _check_type(v, allowed[k], f"{name}.{k}", source)
        return dict(t)

    @staticmethod
    def _dataset(ds: Any, source: str) -> str | dict[str, Any]:
        """A registered data set's name, or a table of its name and its loader's keyword arguments."""
        if not (isinstance(ds, str) or (isinstance(ds, MappingABC) and isinstance(ds.get("name"), str))):
            raise StudyError(f"{source}: dataset must be a name or a table with a 'name', got {ds!r}")
        name = ds if isinstance(ds, str) else ds["name"]
        if name not in DATASETS:
            raise StudyError(f"{source}: unknown dataset {name!r}; allowed: {', '.join(sorted(DATASETS))}")
        if isinstance(ds, str):
            return ds
        params = inspect.signature(DATASETS[name]).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            _check_keys(ds, ["name", *params], f"the dataset table of {name!r}", source, "dataset.")
        return dict(ds)

    @staticmethod
    def _arch(a: Any, source: str) -> dict[str, Any]:
        if not isinstance(a, MappingABC) or "name" not in a:
            raise StudyError(f"{source}: [arch] must be a table with a 'name'; allowed names: "
                             f"{', '.join(sorted(ARCHITECTURES))}")
        if a["name"] not in ARCHITECTURES:
            raise StudyError(f"{source}: unknown architecture arch.name = {a['name']!r}; allowed: "
                             f"{', '.join(sorted(ARCHITECTURES))}")
        _check_keys(a, ["name", *_arch_keys(a["name"])], f"[arch] of {a['name']!r}", source, "arch.")
        return dict(a)

    @classmethod
    def load(cls, path: str | Path) -> "Study":
        """A study TOML file; errors name the file and the key."""
        path = Path(path)
        if path.is_dir():
            raise StudyError(f"{path} is a folder, not a study TOML file; give the .toml (e.g. experiments/digits_mlp.toml)")
        try:
            with open(path, "rb") as f:
                d = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise StudyError(f"{path}: not a valid TOML file: {e}") from e
        return cls.from_dict(d, source=str(path))

    @classmethod
    def default(cls) -> "Study":
        """The default study (digits, small MLP), shipped with the package: reservoir_depth/studies/digits_mlp.toml
        (experiments/digits_mlp.toml points to it)."""
        ref = package_files.files("reservoir_depth") / "studies" / DEFAULT_STUDY_FILE
        return cls.from_dict(tomllib.loads(ref.read_text()), source=f"reservoir_depth/studies/{DEFAULT_STUDY_FILE}")

    @classmethod
    def of(cls, study: "Study | Mapping[str, Any]") -> "Study":
        """A Study as is, or a dict validated into one."""
        return study if isinstance(study, Study) else cls.from_dict(study)

    # -------------------------------------------------------------- views
    def to_dict(self) -> dict[str, Any]:
        """The resolved study as plain JSON / TOML values (every default filled in)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}
        d.update(seeds=list(self.seeds), ranks=list(self.ranks), arch=dict(self.arch),
                 train=dict(self.train), scaffold=dict(self.scaffold), resources=dict(self.resources),
                 spectra=list(self.spectra) if isinstance(self.spectra, tuple) else self.spectra)
        if self.reference == "full":
            del d["reference"]  # the default: studies written before the key keep their resolved form
        if not self.rank_caps:
            del d["rank_caps"]  # none: studies without caps keep their resolved form
        else:
            d["rank_caps"] = dict(self.rank_caps)
        if self.eps is None:
            del d["eps"]  # the metric's own: no TOML value says "none"
        else:
            d["eps"] = list(self.eps)
        return d

    def tolerances(self, metric: Metric) -> list[tuple[float, bool]]:
        """The (eps, relative) settings r*(eps) is stated at for ``metric`` (tasks.Metric): the study's
        eps, absolute as stored studies always read it (and relative too with eps_relative); without eps,
        the metric's own eps values and tolerance kind (accuracy: absolute points; losses, bits per
        character, NRMSE: relative to full training)."""
        if self.eps is None:
            own = [(e, metric.tolerance == "relative") for e in metric.eps]
            return own + ([(e, True) for e in metric.eps] if self.eps_relative and not own[0][1] else [])
        return [(e, False) for e in self.eps] + ([(e, True) for e in self.eps] if self.eps_relative else [])

    __hash__ = None  # compared by value; its tables are dicts, so not hashable

    @property
    def task(self) -> str:
        """The study's task (tasks.TASKS): the one its data set's loader declares (data.register_dataset(task=)),
        else read from the data set (loaded once, as its first run loads it)."""
        name = self.dataset if isinstance(self.dataset, str) else self.dataset["name"]
        declared = getattr(DATASETS.get(name), "task", None)
        if declared is not None:
            return declared
        return Run(study=self.study, dataset=self.dataset, arch=self.arch, method="full", seed=self.seeds[0],
                   train=self.train).data().task

    @property
    def metric(self) -> Metric:
        """The one metric this study ranks by (r*, reports, the adaptive search, predict): the headline
        metric of its task (tasks.Task.headline)."""
        return metric_of(task_of(self.task).headline)

    @property
    def measured(self) -> set[str]:
        """The methods whose runs record spectra."""
        if isinstance(self.spectra, tuple):
            return set(self.spectra)
        return set(SPECTRA_METHODS) if self.spectra else set()

    def runs(self, ranks: Sequence[int] | None = None, baselines: bool = True) -> list[Run]:
        """Expand: full training (if ``full``), the twin (if ``twin``) and LottaLoRA at each of
        ``ranks`` (default: the study's), per seed."""
        common = dict(study=self.study, dataset=self.dataset, arch=self.arch, train=self.train)
        out = []
        for seed in self.seeds:
            if baselines and self.full:
                out.append(Run(method="full", seed=seed, **common))
            if baselines and self.twin:
                out.append(Run(method="twin", seed=seed, scaffold={**self.scaffold, "r": 0},
                               spectra="twin" in self.measured, **common))
            for r in self.ranks if ranks is None else ranks:
                out.append(Run(method="lotta", seed=seed, scaffold=self.scaffold_at(int(r), seed),
                               spectra="lotta" in self.measured, **common))
        return out

    def scaffold_at(self, r: int, seed: int) -> dict[str, Any]:
        """The [scaffold] table of a run at rank r: with the rank_caps below r added to the caps the run has
        otherwise (the study's max_rank, else the family's declared one, which a run's own table replaces)."""
        table = {**self.scaffold, "r": r}
        binding = {p: c for p, c in self.rank_caps.items() if c < r}
        if not binding:
            return table
        caps = Run(self.study, self.dataset, self.arch, "lotta", seed, self.train, table).scaffold_config().max_rank
        return {**table, "max_rank": dict(sorted({**caps, **binding}.items()))}

    def frame(self, store) -> Any:
        """The store's finished runs of this study, restricted to the study's current configs. It always has
        a rank column (NaN for 'full'), also when no scaffolded run finished (every rank run failed, or none)."""
        ids = {r.run_id for r in self.runs()}
        df = store.frame(self.study)
        if len(df) and Columns.RANK not in df:
            df = df.assign(**{Columns.RANK: np.nan})
        return df[df[Columns.RUN_ID].isin(ids)] if len(df) else df


DEFAULT_STUDY_FILE = "digits_mlp.toml"


# ----------------------------------------------------------------------------- the results frame as curves

def curves(df, metric: str, ranks: Sequence[int] | None = None, seeds: Sequence[int] | None = None):
    """A frame as the estimator's arrays: (ranks (R,), values (S, R) per-seed curves of the
    LottaLoRA runs with NaN where a run is missing, full (S,) full-training values per seed
    (NaN where missing), seeds (S,)). ``ranks`` / ``seeds`` default to those in the frame."""
    lotta = df[df[Columns.METHOD] == "lotta"]
    full = df[df[Columns.METHOD] == "full"]
    if ranks is None:
        ranks = sorted(int(r) for r in lotta[Columns.RANK].unique()) if len(lotta) else []
    if seeds is None:
        seeds = sorted(int(s) for s in df[Columns.SEED].unique()) if len(df) else []
    values = np.full((len(seeds), len(ranks)), np.nan)
    col = {r: j for j, r in enumerate(ranks)}
    row = {s: i for i, s in enumerate(seeds)}
    for s, r, v in zip(lotta[Columns.SEED], lotta[Columns.RANK], lotta[metric]):
        if int(s) in row and int(r) in col:
            values[row[int(s)], col[int(r)]] = v
    fv = np.full(len(seeds), np.nan)
    for s, v in zip(full[Columns.SEED], full[metric]):
        if int(s) in row:
            fv[row[int(s)]] = v
    return np.asarray(ranks, int), values, fv, np.asarray(seeds, int)


# ----------------------------------------------------------------------------- provenance

def versions() -> dict[str, str]:
    """The versions a result depends on: those an adapter file records (adapter_format.library_versions: this
    package, numpy / scipy, which determine the canonical draw of W_seed, torch, safetensors),
    plus Python and pandas."""
    return {**library_versions(), "python": platform.python_version(), "pandas": pandas.__version__}


def provenance(config: Mapping[str, Any], seeds: Sequence[int], metrics: Mapping[str, Any] | None = None,
               **extra: Any) -> dict[str, Any]:
    """The one provenance record of a study, TOML or script (study.json, provenance.json):
    the resolved config, the seeds, the versions, the headline metrics, and any ``extra`` keys."""
    return {"config": dict(config), "seeds": [int(s) for s in seeds], "versions": versions(),
            "metrics": dict(metrics or {}), **extra}
