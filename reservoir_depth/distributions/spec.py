"""The distribution spec: a family bound to its parameters, a scaling rule and a draw version.

A :class:`DistributionSpec` is what a study file, a run id and an adapter file store (``to_dict``); a dict
without "version" (every file written before versions existed) is version 1, and ``to_dict`` omits version 1,
so those files and run ids keep their hashes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..checks import is_finite_number
from ..identity import added, identity
from .families import DISTRIBUTIONS, Family
from .scaling import SCALINGS

DRAW_VERSIONS = (1, 2)
DEFAULT_VERSION = 2


def _plain(v: Any) -> Any:
    """v with numpy arrays, numpy scalars and tuples as plain Python lists and numbers (so params are JSON)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def _param_ok(default: Any, v: Any) -> bool:
    """v has the type of the parameter's default: an int, a finite number, or a list of finite numbers."""
    if isinstance(default, int) and not isinstance(default, bool):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(v, (list, tuple, np.ndarray)) and all(is_finite_number(x) for x in v)
    return is_finite_number(v)


def _allowed(family: Family, key: str) -> str:
    d = family.defaults[key]
    return family.allowed.get(key) or ("an int" if isinstance(d, int) else
                                       "a list of finite numbers" if isinstance(d, (list, tuple)) else "a finite number")


@dataclass(frozen=True)
class DistributionSpec:
    """A family name, its parameters, the scaling rule of W_seed and the draw version.

    ``scaling=None`` takes the family's default rule. ``gain`` multiplies the
    fan-in and none rules; ``rho`` is the spectral radius of the spectral rule.
    ``center`` subtracts the family's mean from the raw draws (families with a
    non-zero mean otherwise add a rank-one component that grows like sqrt(N):
    theory/02_signal_propagation.md; truncated_normal with a != -b is one).
    ``version`` selects the draw (module docstring): 2, the default, draws each
    family from its own counter-based stream; 1 is the legacy numpy draw. The
    stored form (``to_dict`` / ``from_dict``: adapter files, results stores) omits
    version 1, so a stored dict without "version" is version 1; anything a user
    writes (``as_spec``: a study file, ScaffoldConfig(spec={...})) without
    "version" means the current draw, DEFAULT_VERSION.
    """

    name: str = "normal"
    params: Mapping[str, Any] = field(default_factory=dict)
    scaling: str | None = None
    gain: float = 1.0
    rho: float = 0.95
    center: bool = field(default=False, metadata=added(False))
    version: int = field(default=DEFAULT_VERSION, metadata=added(1))  # 1: the draw of every file before versions

    def __post_init__(self) -> None:
        if self.name not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {self.name!r}; allowed: {', '.join(sorted(DISTRIBUTIONS))}")
        family = DISTRIBUTIONS[self.name]
        unknown = set(self.params) - set(family.defaults)
        if unknown:
            allowed = ", ".join(sorted(family.defaults)) or "none"
            raise ValueError(f"unknown parameter(s) {sorted(unknown)} for distribution {self.name!r}; allowed: {allowed}")
        params = {**family.defaults, **self.params}
        for k, v in params.items():
            if not _param_ok(family.defaults[k], v):
                raise ValueError(f"parameter {k}={v!r} of distribution {self.name!r} is not allowed: "
                                 f"{k} must be {_allowed(family, k)}")
        object.__setattr__(self, "params", {k: _plain(v) for k, v in params.items()})
        scaling = family.default_scaling if self.scaling is None else self.scaling
        if scaling not in SCALINGS:
            raise ValueError(f"unknown scaling rule {scaling!r}; allowed: {', '.join(sorted(SCALINGS))}")
        object.__setattr__(self, "scaling", scaling)
        if not isinstance(self.center, bool):
            raise ValueError(f"center must be True or False, got {self.center!r}")
        if self.version not in DRAW_VERSIONS or isinstance(self.version, bool) or not isinstance(self.version, int):
            raise ValueError(f"draw version must be one of {DRAW_VERSIONS}, got {self.version!r}")
        for k in ("gain", "rho"):
            v = getattr(self, k)
            if not (is_finite_number(v) and v >= 0):
                raise ValueError(f"{k} must be a finite number >= 0, got {v!r}")
            object.__setattr__(self, k, float(v))
        family.validate(**self.params)
        if self.center and not math.isfinite(self.mean):
            raise ValueError(f"center=True needs a finite mean; {self.name!r} with {dict(self.params)} has none")

    @property
    def family(self) -> Family:
        return DISTRIBUTIONS[self.name]

    @property
    def mean(self) -> float:
        """The mean of one raw entry (0 for families without a reference law: zero-mean by construction)."""
        ref = self.family.reference
        return float(ref(**self.params).mean()) if ref is not None else 0.0

    def to_dict(self) -> dict[str, Any]:
        return identity(self, params=lambda p: dict(sorted(p.items())))  # center, version: see their fields

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DistributionSpec":
        """The spec of a dict as stored in JSON and TOML; no "version" key means version 1 (the legacy draw)."""
        return cls(**{**d, "params": dict(d.get("params", {})), "version": d.get("version", 1)})


def as_spec(spec: "DistributionSpec | str | Mapping[str, Any]") -> DistributionSpec:
    """A DistributionSpec from what a user writes: a spec, a family name or a dict; without "version" the current
    draw (DEFAULT_VERSION). A stored dict, whose form omits version 1, is read by ``DistributionSpec.from_dict``."""
    if isinstance(spec, DistributionSpec):
        return spec
    if isinstance(spec, str):
        return DistributionSpec(spec)
    if not isinstance(spec, Mapping):
        raise TypeError(f"a distribution spec must be a DistributionSpec, a family name or a dict, got {spec!r}")
    return DistributionSpec.from_dict({"version": DEFAULT_VERSION, **spec})
