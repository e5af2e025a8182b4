"""One run of a study: its method, seed and settings, the config it records (run identity through
``identity.py``), the scaffold its architecture declares and its (cached) data set. ``study.py``
expands a study into runs (and re-exports these names).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping

import torch

from .data import DATASETS, Dataset, load
from .identity import identity
from .models import ARCHITECTURES, scaffold_defaults
from .scaffold import ScaffoldConfig
from .train import TrainConfig


METHODS = ("full", "twin", "lotta")


def declared_scaffold(arch: Mapping[str, Any], dims: Callable[[], tuple[int, int]] | None = None) -> dict[str, Any]:
    """The ScaffoldConfig keywords (target_modules, trainable, specs, max_rank) that the architecture
    ``arch`` ({"name": ..., **kwargs}) declares: read from an instance (models.scaffold_defaults), since
    llama's and vit's depend on their arguments, the reservoir's spectral-radius spec on rho and its
    W_in rank cap on d_in. Instances are built on the meta device (no memory, no draw). When two probe
    sizes (d_in = n_out = 8 and 9; vit: d_in = channels x image_size^2) declare the same, that is the
    answer; when they differ the declarations depend on the data and ``dims()`` gives the data set's
    (d_in, n_out). A family that refuses the probe sizes (plain: its d_in is an image) gives its class
    attributes; sweep.build_model checks them against the real instance before training."""
    family, key = ARCHITECTURES[arch["name"]], json.dumps(dict(arch), sort_keys=True)
    probes = [_declared(family, key, d_in, n_out) for d_in, n_out in _probe_dims(arch)]
    if probes[0] == probes[1]:
        return dict(probes[0])
    if dims is None:
        raise ValueError(f"architecture {dict(arch)!r} declares a scaffold that depends on the data's dimensions "
                         f"(d_in, n_out): pass them")
    return dict(_declared(family, key, *dims()))


def _probe_dims(arch: Mapping[str, Any]) -> list[tuple[int, int]]:
    params = inspect.signature(ARCHITECTURES[arch["name"]]).parameters
    if "channels" in params and "image_size" in params:
        side = lambda k: arch.get(k, params[k].default)
        return [(side("channels") * side("image_size") ** 2, n) for n in (8, 9)]
    return [(8, 8), (9, 9)]


@lru_cache(maxsize=256)
def _declared(family: Callable[..., Any], arch_json: str, d_in: int, n_out: int) -> tuple:
    kwargs = json.loads(arch_json)
    kwargs.pop("name")
    try:
        with torch.device("meta"):
            model = family(d_in=d_in, n_out=n_out, **kwargs)
    except (ValueError, TypeError):
        model = family  # the class's own declarations
    return tuple(scaffold_defaults(model).items())


@lru_cache(maxsize=4)
def _dataset(spec: str, seed: int) -> Dataset:
    kwargs = json.loads(spec)
    name = kwargs.pop("name")
    if getattr(DATASETS.get(name), "seeded_by_run", False):
        kwargs.setdefault("seed", seed)  # e.g. a planted teacher shares the student's root seed
    return load(name, **kwargs)


@dataclass(frozen=True)
class Run:
    """One training run; method is one of METHODS: 'full' trains every weight from the
    architecture's usual init, 'twin' every weight starting from the scaffold, 'lotta'
    A, B, beta and the declared extras on the frozen scaffold."""

    study: str
    dataset: str | Mapping[str, Any]  # a name, or {"name": ..., **loader kwargs}
    arch: Mapping[str, Any]
    method: str
    seed: int
    train: Mapping[str, Any] = field(default_factory=dict)
    scaffold: Mapping[str, Any] = field(default_factory=dict)
    spectra: bool = False  # also measure activation / adapter / Delta W spectra after training

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

    def config(self) -> dict[str, Any]:
        """The resolved config: every default filled in, as recorded in the store."""
        train = identity(TrainConfig(**{**self.train, "seed": self.seed}))
        ds = self.dataset if isinstance(self.dataset, str) else dict(sorted(self.dataset.items()))
        cfg = {"study": self.study, "dataset": ds, "arch": dict(self.arch), "method": self.method,
               "seed": self.seed, "train": train}
        if self.method in ("lotta", "twin"):
            cfg["scaffold"] = self.scaffold_config().to_dict()
        if self.spectra:
            cfg["spectra"] = True
        return cfg

    def scaffold_config(self) -> ScaffoldConfig:
        """The study's scaffold settings over what the architecture declares for this config
        (targets, trainable extras, per-layer specs and rank caps: see declared_scaffold; the data
        set is loaded only for a family whose declarations depend on its dimensions). A key of the
        study's [scaffold] replaces the declared one whole: a study's max_rank or specs table is not
        merged into the family's."""
        dims = lambda: (self.data().d_in, self.data().n_out)
        return ScaffoldConfig(**{**declared_scaffold(self.arch, dims), **self.scaffold, "root_seed": self.seed})

    def data(self) -> Dataset:
        """The run's data set (a data.Dataset, cached per name, arguments and, for data sets seeded
        by the run such as a planted teacher, seed)."""
        ds = {"name": self.dataset} if isinstance(self.dataset, str) else dict(self.dataset)
        return _dataset(json.dumps(ds, sort_keys=True), self.seed)

    @property
    def run_id(self) -> str:
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode()).hexdigest()[:16]
