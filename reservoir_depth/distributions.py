"""Random-matrix families, scaling rules and seeded sampling of W_seed.

A family is a registry entry (name -> sampler, default parameters, validation,
reference law). A :class:`DistributionSpec` binds a family to parameters and a
scaling rule; :func:`draw` turns (spec, shape, seed) into a frozen W_seed.

Draws happen on the CPU in float64 with numpy's PCG64, then are cast to
float32: the canonical W_seed is the same on every machine and device.
Each layer's seed is derived from (root seed, qualified layer name) by
:func:`layer_seed`, so adding a layer never changes another layer's draw.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from scipy import stats

Array = np.ndarray
Sampler = Callable[..., Array]


def layer_seed(root_seed: int, name: str, *salt: Any) -> int:
    """Seed of one draw: sha256 of (root seed, qualified name, salt), 64 bits.

    Depends only on its arguments, never on the model's size or the device.
    """
    if not isinstance(root_seed, (int, np.integer)) or isinstance(root_seed, bool):
        raise TypeError(f"root_seed must be an int, got {root_seed!r}")
    key = "/".join([str(int(root_seed)), name, *map(str, salt)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def is_number(v: Any) -> bool:
    """A real number (numpy scalars included), not a bool: the check every numeric option shares."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def rng_for(seed: int) -> np.random.Generator:
    """numpy's PCG64 generator for one seed: the only source of randomness of every draw."""
    return np.random.Generator(np.random.PCG64(seed))


@dataclass(frozen=True)
class Family:
    """One random-matrix family.

    sample(rng, shape, fan_in, fan_out, **params) -> float64 array of raw draws.
    scale(**params) -> the raw draws' standard deviation, or for families
    without a finite variance their scale parameter; the fan-in rule divides by it.
    reference(**params) -> a scipy.stats law of one raw entry (None: no simple law).
    """

    name: str
    sample: Sampler
    defaults: Mapping[str, Any] = field(default_factory=dict)
    scale: Callable[..., float] = lambda **_: 1.0
    reference: Callable[..., Any] | None = None
    validate: Callable[..., None] = lambda **_: None
    default_scaling: str = "fan_in"
    doc: str = ""


DISTRIBUTIONS: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family to DISTRIBUTIONS; a name can be registered once."""
    if family.name in DISTRIBUTIONS:
        raise ValueError(f"distribution {family.name!r} is already registered")
    DISTRIBUTIONS[family.name] = family
    return family


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _prob(name: str) -> Callable[..., None]:
    def check(**p: Any) -> None:
        v = p[name]
        _require(0.0 < v <= 1.0, f"{name} must lie in (0, 1], got {v!r}")

    return check


def _positive(*names: str) -> Callable[..., None]:
    def check(**p: Any) -> None:
        for n in names:
            _require(p[n] > 0, f"{n} must be > 0, got {p[n]!r}")

    return check


def _haar(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int) -> Array:
    """Haar (semi-)orthogonal matrix: QR of a Gaussian with sign correction (Mezzadri 2007)."""
    rows, cols = shape[0], int(np.prod(shape[1:]))
    big, small = max(rows, cols), min(rows, cols)
    q, r = np.linalg.qr(rng.standard_normal((big, small)))
    q = q * np.sign(np.diag(r))
    return (q if rows >= cols else q.T).reshape(shape)


def _quantised_levels(bits: int, clip: float) -> Array:
    return np.linspace(-clip, clip, 2**bits)


def _quantise(x: Array, bits: int, clip: float) -> Array:
    """Round N(0,1) draws to 2**bits uniform levels on [-clip, clip]."""
    levels = _quantised_levels(bits, clip)
    step = levels[1] - levels[0]
    idx = np.clip(np.rint((x + clip) / step), 0, len(levels) - 1).astype(int)
    return levels[idx]


def _quantised_law(bits: int, clip: float) -> stats.rv_discrete:
    levels = _quantised_levels(bits, clip)
    step = levels[1] - levels[0]
    edges = np.concatenate([[-np.inf], levels[:-1] + step / 2, [np.inf]])
    probs = np.diff(stats.norm.cdf(edges))
    # rv_discrete needs integer support: index the levels, values mapped in tests.
    return stats.rv_discrete(values=(np.arange(len(levels)), probs)), levels


def _quantised_std(bits: int, clip: float) -> float:
    law, levels = _quantised_law(bits, clip)
    p = law.pmf(np.arange(len(levels)))
    return float(np.sqrt(np.sum(p * levels**2)))


class _Mixture:
    """A scipy-like law for a Gaussian mixture (cdf, mean, std)."""

    def __init__(self, means, stds, weights):
        self.means, self.stds = np.asarray(means, float), np.asarray(stds, float)
        self.weights = np.asarray(weights, float) / np.sum(weights)

    def cdf(self, x):
        x = np.asarray(x, float)[..., None]
        return np.sum(self.weights * stats.norm.cdf(x, self.means, self.stds), axis=-1)

    def mean(self):
        return float(self.weights @ self.means)

    def std(self):
        m = self.mean()
        return float(np.sqrt(self.weights @ (self.stds**2 + self.means**2) - m**2))


def _validate_mixture(means, stds, weights):
    _require(len(means) == len(stds) == len(weights) >= 1,
             f"means, stds, weights must have one equal length >= 1, got {len(means)}, {len(stds)}, {len(weights)}")
    _require(all(s > 0 for s in stds), f"stds must be > 0, got {stds!r}")
    _require(all(w >= 0 for w in weights) and sum(weights) > 0, f"weights must be >= 0 with a positive sum, got {weights!r}")


def _validate_bits(bits, clip):
    _require(isinstance(bits, int) and not isinstance(bits, bool) and bits in (1, 2, 3, 4, 8, 16),
             f"bits must be one of the ints 1, 2, 3, 4, 8, 16, got {bits!r}")
    _require(clip > 0, f"clip must be > 0, got {clip!r}")


def _kaiming_std(fan_in: int, gain: float) -> float:
    return gain / math.sqrt(fan_in)


def _xavier_std(fan_in: int, fan_out: int, gain: float) -> float:
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


for _f in [
    Family("normal", lambda rng, s, fi, fo: rng.standard_normal(s),
           reference=lambda: stats.norm(), doc="N(0, 1)"),
    Family("truncated_normal", lambda rng, s, fi, fo, a, b: stats.truncnorm(a, b).rvs(s, random_state=rng),
           defaults={"a": -2.0, "b": 2.0}, scale=lambda a, b: float(stats.truncnorm(a, b).std()),
           reference=lambda a, b: stats.truncnorm(a, b),
           validate=lambda a, b: _require(a < b, f"need a < b, got a={a!r}, b={b!r}"),
           doc="N(0, 1) truncated to [a, b]"),
    Family("uniform", lambda rng, s, fi, fo, low, high: rng.uniform(low, high, s),
           defaults={"low": -1.0, "high": 1.0}, scale=lambda low, high: (high - low) / math.sqrt(12),
           reference=lambda low, high: stats.uniform(low, high - low),
           validate=lambda low, high: _require(low < high, f"need low < high, got low={low!r}, high={high!r}"),
           doc="U(low, high)"),
    Family("orthogonal", lambda rng, s, fi, fo: _haar(rng, s, fi, fo), default_scaling="none",
           doc="Haar-distributed (semi-)orthogonal: W W^T = I (rows <= cols) or W^T W = I"),
    Family("kaiming_normal", lambda rng, s, fi, fo, gain: rng.standard_normal(s) * _kaiming_std(fi, gain),
           defaults={"gain": math.sqrt(2.0)}, default_scaling="none", validate=_positive("gain"),
           doc="N(0, gain^2 / fan_in), He et al. 2015"),
    Family("kaiming_uniform", lambda rng, s, fi, fo, gain: rng.uniform(-1, 1, s) * math.sqrt(3) * _kaiming_std(fi, gain),
           defaults={"gain": math.sqrt(2.0)}, default_scaling="none", validate=_positive("gain"),
           doc="U(-b, b), b = gain sqrt(3 / fan_in)"),
    Family("xavier_normal", lambda rng, s, fi, fo, gain: rng.standard_normal(s) * _xavier_std(fi, fo, gain),
           defaults={"gain": 1.0}, default_scaling="none", validate=_positive("gain"),
           doc="N(0, 2 gain^2 / (fan_in + fan_out)), Glorot & Bengio 2010"),
    Family("xavier_uniform", lambda rng, s, fi, fo, gain: rng.uniform(-1, 1, s) * math.sqrt(3) * _xavier_std(fi, fo, gain),
           defaults={"gain": 1.0}, default_scaling="none", validate=_positive("gain"),
           doc="U(-b, b), b = gain sqrt(6 / (fan_in + fan_out))"),
    Family("spectral_normal", lambda rng, s, fi, fo: rng.standard_normal(s), default_scaling="spectral_radius",
           reference=lambda: stats.norm(), doc="N(0, 1) rescaled to spectral radius rho (echo-state style)"),
    Family("cauchy", lambda rng, s, fi, fo: rng.standard_cauchy(s), reference=lambda: stats.cauchy(),
           doc="standard Cauchy; no variance, the fan-in rule uses its scale gamma = 1"),
    Family("laplace", lambda rng, s, fi, fo: rng.laplace(0.0, 1.0, s), scale=lambda: math.sqrt(2.0),
           reference=lambda: stats.laplace(), doc="Laplace(0, 1)"),
    Family("student_t", lambda rng, s, fi, fo, df: rng.standard_t(df, s), defaults={"df": 3.0},
           scale=lambda df: math.sqrt(df / (df - 2)) if df > 2 else 1.0,
           reference=lambda df: stats.t(df), validate=_positive("df"),
           doc="Student-t(df); for df <= 2 the fan-in rule uses the scale 1"),
    Family("gaussian_mixture",
           lambda rng, s, fi, fo, means, stds, weights: (
               lambda k: rng.normal(np.asarray(means)[k], np.asarray(stds)[k]))(
               rng.choice(len(weights), size=s, p=np.asarray(weights) / np.sum(weights))),
           defaults={"means": (-1.0, 1.0), "stds": (0.5, 0.5), "weights": (0.5, 0.5)},
           scale=lambda means, stds, weights: _Mixture(means, stds, weights).std(),
           reference=lambda means, stds, weights: _Mixture(means, stds, weights),
           validate=_validate_mixture, doc="sum_k w_k N(mu_k, s_k^2)"),
    Family("sparse_normal", lambda rng, s, fi, fo, p: rng.standard_normal(s) * (rng.random(s) < p),
           defaults={"p": 0.1}, scale=lambda p: math.sqrt(p), validate=_prob("p"),
           doc="N(0, 1) kept with probability p (density), else 0"),
    Family("erdos_renyi", lambda rng, s, fi, fo, p: (rng.random(s) < p).astype(float),
           defaults={"p": 0.1}, scale=lambda p: math.sqrt(p * (1 - p)) if p < 1 else 1.0,
           reference=lambda p: stats.bernoulli(p), validate=_prob("p"),
           doc="Erdos-Renyi adjacency: Bernoulli(p) entries in {0, 1} (non-zero mean p)"),
    Family("beta", lambda rng, s, fi, fo, a, b: rng.beta(a, b, s), defaults={"a": 2.0, "b": 2.0},
           scale=lambda a, b: float(stats.beta(a, b).std()), reference=lambda a, b: stats.beta(a, b),
           validate=_positive("a", "b"), doc="Beta(a, b) on [0, 1] (non-zero mean)"),
    Family("exponential", lambda rng, s, fi, fo: rng.exponential(1.0, s), reference=lambda: stats.expon(),
           doc="Exp(1) (non-zero mean 1)"),
    Family("lognormal", lambda rng, s, fi, fo, sigma: rng.lognormal(0.0, sigma, s), defaults={"sigma": 0.5},
           scale=lambda sigma: float(stats.lognorm(sigma).std()), reference=lambda sigma: stats.lognorm(sigma),
           validate=_positive("sigma"), doc="log-normal(0, sigma^2) (non-zero mean)"),
    Family("logistic", lambda rng, s, fi, fo: rng.logistic(0.0, 1.0, s), scale=lambda: math.pi / math.sqrt(3),
           reference=lambda: stats.logistic(), doc="Logistic(0, 1)"),
    Family("quantized_normal", lambda rng, s, fi, fo, bits, clip: _quantise(rng.standard_normal(s), bits, clip),
           defaults={"bits": 4, "clip": 3.0}, scale=lambda bits, clip: _quantised_std(bits, clip),
           validate=_validate_bits, doc="N(0, 1) rounded to 2**bits levels on [-clip, clip]"),
    Family("binary", lambda rng, s, fi, fo: rng.choice(np.array([-1.0, 1.0]), size=s),
           reference=lambda: stats.rv_discrete(values=([-1, 1], [0.5, 0.5])), doc="Rademacher +-1"),
    Family("zeros", lambda rng, s, fi, fo: np.zeros(s), scale=lambda: 0.0, default_scaling="none",
           doc="all zeros: the no-scaffold control (W_seed = 0)"),
]:
    register(_f)


# ----------------------------------------------------------------------------- scaling rules

def spectral_radius(w: Array) -> float:
    """max |eigenvalue| of a square matrix; largest singular value otherwise."""
    m = w.reshape(w.shape[0], -1)
    if m.shape[0] == m.shape[1]:
        return float(np.max(np.abs(np.linalg.eigvals(m)))) if m.size else 0.0
    return float(np.linalg.norm(m, 2)) if m.size else 0.0


def _fan_in_rule(w, spec, family, params, fan_in, fan_out):
    """sigma = gain / sqrt(fan_in) (or scale gamma for families without a variance)."""
    s = family.scale(**params)
    return w if s == 0 else w * (spec.gain / (s * math.sqrt(fan_in)))


NILPOTENT_RTOL = 1e-6  # radius / ||W||_2 below this is rounding noise (a Jordan block of size n gives eps^(1/n))


def _spectral_rule(w, spec, family, params, fan_in, fan_out):
    """Rescale so that the spectral radius is exactly rho (post-processing, as reservoirpy)."""
    if not np.any(w):
        return w
    r, norm = spectral_radius(w), float(np.linalg.norm(w.reshape(w.shape[0], -1), 2))
    if r <= NILPOTENT_RTOL * norm:  # numerically nilpotent: the computed radius is rounding noise
        raise ValueError(f"a {family.name} draw of shape {w.shape} is nilpotent (spectral radius {r:.3g} against "
                         f"norm {norm:.3g}): it cannot be rescaled to rho={spec.rho}; use a denser family or a "
                         f"larger matrix")
    return w * (spec.rho / r)


def _none_rule(w, spec, family, params, fan_in, fan_out):
    """Raw draws times gain."""
    return w * spec.gain


SCALINGS: dict[str, Callable[..., Array]] = {
    "fan_in": _fan_in_rule,
    "spectral_radius": _spectral_rule,
    "none": _none_rule,
}


# ----------------------------------------------------------------------------- the spec

def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


@dataclass(frozen=True)
class DistributionSpec:
    """A family name, its parameters and the scaling rule of W_seed.

    ``scaling=None`` takes the family's default rule. ``gain`` multiplies the
    fan-in and none rules; ``rho`` is the spectral radius of the spectral rule.
    ``center`` subtracts the family's mean from the raw draws (families with a
    non-zero mean otherwise add a rank-one component that grows like sqrt(N):
    theory/02_signal_propagation.md).
    """

    name: str = "normal"
    params: Mapping[str, Any] = field(default_factory=dict)
    scaling: str | None = None
    gain: float = 1.0
    rho: float = 0.95
    center: bool = False

    def __post_init__(self) -> None:
        if self.name not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {self.name!r}; allowed: {', '.join(sorted(DISTRIBUTIONS))}")
        family = DISTRIBUTIONS[self.name]
        unknown = set(self.params) - set(family.defaults)
        if unknown:
            allowed = ", ".join(sorted(family.defaults)) or "none"
            raise ValueError(f"unknown parameter(s) {sorted(unknown)} for distribution {self.name!r}; allowed: {allowed}")
        object.__setattr__(self, "params", {k: _jsonable(v) for k, v in {**family.defaults, **self.params}.items()})
        scaling = family.default_scaling if self.scaling is None else self.scaling
        if scaling not in SCALINGS:
            raise ValueError(f"unknown scaling rule {scaling!r}; allowed: {', '.join(sorted(SCALINGS))}")
        object.__setattr__(self, "scaling", scaling)
        if not isinstance(self.center, bool):
            raise ValueError(f"center must be True or False, got {self.center!r}")
        for k in ("gain", "rho"):
            v = getattr(self, k)
            if not (is_number(v) and math.isfinite(v) and v >= 0):
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
        d = {"name": self.name, "params": dict(sorted(self.params.items())), "scaling": self.scaling,
             "gain": self.gain, "rho": self.rho}
        if self.center:  # written only when set, so specs saved before the option existed keep their hash
            d["center"] = True
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DistributionSpec":
        return cls(**{**d, "params": dict(d.get("params", {}))})


def as_spec(spec: "DistributionSpec | str | Mapping[str, Any]") -> DistributionSpec:
    """A DistributionSpec from a spec, a family name or a dict (as stored in JSON and TOML)."""
    if isinstance(spec, DistributionSpec):
        return spec
    if isinstance(spec, str):
        return DistributionSpec(spec)
    return DistributionSpec.from_dict(spec)


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight (out, in, *kernel), as torch.nn.init does."""
    if len(shape) < 2:
        raise ValueError(f"a weight needs at least 2 dims, got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def sample(spec: DistributionSpec | str, shape: tuple[int, ...], seed: int) -> Array:
    """Raw-then-scaled float64 draw of W_seed with the given seed."""
    spec = as_spec(spec)
    shape = tuple(int(s) for s in shape)
    fan_in, fan_out = fans(shape)
    raw = np.asarray(spec.family.sample(rng_for(seed), shape, fan_in, fan_out, **spec.params), np.float64)
    if spec.center:
        raw = raw - spec.mean
    return SCALINGS[spec.scaling](raw, spec, spec.family, spec.params, fan_in, fan_out)


def draw(spec: DistributionSpec | str, shape: tuple[int, ...], seed: int,
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The canonical W_seed as a CPU tensor: device-independent by construction."""
    return torch.from_numpy(sample(spec, shape, seed)).to(dtype)


class torch_rng:
    """Context: torch's global RNG seeded, and restored on exit.

    For the few torch calls that take no generator (nn.Linear's default init,
    dropout masks), so that no global state leaks in or out.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self._ctx = torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else [])
        self._ctx.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)
