"""The family registry: name -> samplers of both draw versions, default parameters, validation, reference law.

Each family has two small named samplers side by side: ``_<name>_v1(rng, shape, fan_in, fan_out, **params)``,
numpy's PCG64 (the legacy draw, byte-identical), and ``_<name>_v2(src, shape, fan_in, fan_out, **params)``,
reading the counter-based :class:`~.philox.Stream` of one draw. Both return float64 raw draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from scipy import stats

from ..checks import require
from .laws import Mixture, haar_of, haar_shape, kaiming_std, quantised_levels, quantised_std, xavier_std
from .philox import Stream

Array = np.ndarray
Sampler = Callable[..., Array]


@dataclass(frozen=True)
class Family:
    """One random-matrix family.

    numpy_sample(rng, shape, fan_in, fan_out, **params) -> float64 array of raw draws:
    the version-1 sampler (numpy PCG64).
    transform(src, shape, fan_in, fan_out, **params) -> float64 tensor of raw
    draws on ``src.device``: the version-2 sampler, reading uniforms, normals or
    words from a counter-based :class:`Stream`. None: version 2 falls back to
    ``numpy_sample`` with numpy's PCG64 seeded by the version-2 key, on the CPU.
    scale(**params) -> the raw draws' standard deviation, or for families
    without a finite variance their scale parameter; the fan-in rule divides by it.
    reference(**params) -> a scipy.stats law of one raw entry (None: no simple law).
    allowed: for each parameter, the values it may take (quoted in errors).
    all_zero: every draw is zero by construction (the no-scaffold control); for any
    other family an all-zero draw is an error.
    """

    name: str
    numpy_sample: Sampler
    defaults: Mapping[str, Any] = field(default_factory=dict)
    scale: Callable[..., float] = lambda **_: 1.0
    reference: Callable[..., Any] | None = None
    validate: Callable[..., None] = lambda **_: None
    default_scaling: str = "fan_in"
    doc: str = ""
    transform: Callable[..., torch.Tensor] | None = None
    allowed: Mapping[str, str] = field(default_factory=dict)
    all_zero: bool = False


DISTRIBUTIONS: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family to DISTRIBUTIONS; a name can be registered once."""
    if family.name in DISTRIBUTIONS:
        raise ValueError(f"distribution {family.name!r} is already registered")
    DISTRIBUTIONS[family.name] = family
    return family


# ----------------------------------------------------------------------------- parameter checks

def _probability(name: str) -> Callable[..., None]:
    """The check that parameter ``name`` lies in (0, 1]."""
    def check(**p: Any) -> None:
        v = p[name]
        require(0.0 < v <= 1.0, f"{name} must lie in (0, 1], got {v!r}")

    return check


def _positive_params(*names: str) -> Callable[..., None]:
    """The check that each named parameter is > 0."""
    def check(**p: Any) -> None:
        for n in names:
            require(p[n] > 0, f"{n} must be > 0, got {p[n]!r}")

    return check


def _ordered(low: str, high: str) -> Callable[..., None]:
    """The check that parameter ``low`` < parameter ``high``."""
    def check(**p: Any) -> None:
        require(p[low] < p[high], f"need {low} < {high}, got {low}={p[low]!r}, {high}={p[high]!r}")

    return check


QUANTISED_BITS = (1, 2, 3, 4, 8, 16)


def _validate_bits(bits, clip):
    require(isinstance(bits, int) and not isinstance(bits, bool) and bits in QUANTISED_BITS,
            f"bits must be one of the ints 1, 2, 3, 4, 8, 16, got {bits!r}")
    require(clip > 0, f"clip must be > 0, got {clip!r}")
    with np.errstate(over="ignore", invalid="ignore"):
        levels = quantised_levels(bits, clip)
    require(bool(np.isfinite(levels).all() and np.all(np.diff(levels) > 0)),
            f"clip must be small enough that the 2**bits levels on [-clip, clip] and their spacing are finite "
            f"numbers, got {clip!r}")


def _validate_mixture(means, stds, weights):
    require(len(means) == len(stds) == len(weights) >= 1,
            f"means, stds, weights must have one equal length >= 1, got {len(means)}, {len(stds)}, {len(weights)}")
    require(all(s > 0 for s in stds), f"stds must be > 0, got {stds!r}")
    require(all(w >= 0 for w in weights) and sum(weights) > 0, f"weights must be >= 0 with a positive sum, got {weights!r}")


def _on_cpu(src: Stream, f: Callable[[Array], Array], sub: int = 0) -> torch.Tensor:
    """A transform without a device form: scipy / numpy on the CPU, result moved to src.device."""
    return torch.from_numpy(np.ascontiguousarray(f(src.uniform(sub).cpu().numpy()), np.float64)).to(src.device)


# ----------------------------------------------------------------------------- the samplers, v1 and v2 side by side

def _normal_v1(rng, shape, fan_in, fan_out):
    return rng.standard_normal(shape)


def _normal_v2(src, shape, fan_in, fan_out):
    return src.normal()


def _truncated_normal_v1(rng, shape, fan_in, fan_out, a, b):
    return stats.truncnorm(a, b).rvs(shape, random_state=rng)


def _truncated_normal_v2(src, shape, fan_in, fan_out, a, b):
    return _on_cpu(src, stats.truncnorm(a, b).ppf)


def _uniform_v1(rng, shape, fan_in, fan_out, low, high):
    return rng.uniform(low, high, shape)


def _uniform_v2(src, shape, fan_in, fan_out, low, high):
    return low + (high - low) * src.uniform()


def _orthogonal_v1(rng, shape, fan_in, fan_out):
    return haar_of(rng.standard_normal(haar_shape(shape)), shape)


def _orthogonal_v2(src, shape, fan_in, fan_out):
    g = src.normal().cpu().numpy().reshape(haar_shape(shape))
    return torch.from_numpy(np.ascontiguousarray(haar_of(g, shape))).to(src.device)


def _kaiming_normal_v1(rng, shape, fan_in, fan_out, gain):
    return rng.standard_normal(shape) * kaiming_std(fan_in, gain)


def _kaiming_normal_v2(src, shape, fan_in, fan_out, gain):
    return src.normal() * kaiming_std(fan_in, gain)


def _kaiming_uniform_v1(rng, shape, fan_in, fan_out, gain):
    return rng.uniform(-1, 1, shape) * math.sqrt(3) * kaiming_std(fan_in, gain)


def _kaiming_uniform_v2(src, shape, fan_in, fan_out, gain):
    return (2 * src.uniform() - 1) * math.sqrt(3) * kaiming_std(fan_in, gain)


def _xavier_normal_v1(rng, shape, fan_in, fan_out, gain):
    return rng.standard_normal(shape) * xavier_std(fan_in, fan_out, gain)


def _xavier_normal_v2(src, shape, fan_in, fan_out, gain):
    return src.normal() * xavier_std(fan_in, fan_out, gain)


def _xavier_uniform_v1(rng, shape, fan_in, fan_out, gain):
    return rng.uniform(-1, 1, shape) * math.sqrt(3) * xavier_std(fan_in, fan_out, gain)


def _xavier_uniform_v2(src, shape, fan_in, fan_out, gain):
    return (2 * src.uniform() - 1) * math.sqrt(3) * xavier_std(fan_in, fan_out, gain)


def _cauchy_v1(rng, shape, fan_in, fan_out):
    return rng.standard_cauchy(shape)


def _cauchy_v2(src, shape, fan_in, fan_out):
    return torch.tan(math.pi * (src.uniform() - 0.5))


def _laplace_v1(rng, shape, fan_in, fan_out):
    return rng.laplace(0.0, 1.0, shape)


def _laplace_v2(src, shape, fan_in, fan_out):
    v = src.uniform() - 0.5
    return -torch.sign(v) * torch.log1p(-2.0 * v.abs())


def _student_t_v1(rng, shape, fan_in, fan_out, df):
    return rng.standard_t(df, shape)


def _student_t_v2(src, shape, fan_in, fan_out, df):
    return _on_cpu(src, stats.t(df).ppf)


def _gaussian_mixture_v1(rng, shape, fan_in, fan_out, means, stds, weights):
    k = rng.choice(len(weights), size=shape, p=np.asarray(weights) / np.sum(weights))
    return rng.normal(np.asarray(means)[k], np.asarray(stds)[k])


def _gaussian_mixture_v2(src, shape, fan_in, fan_out, means, stds, weights):
    cum = torch.tensor(np.cumsum(weights) / np.sum(weights), dtype=torch.float64, device=src.device)
    k = torch.bucketize(src.uniform(1), cum[:-1], right=True)  # component k with probability weights[k]
    m, s = (torch.tensor(v, dtype=torch.float64, device=src.device) for v in (means, stds))
    return m[k] + s[k] * src.normal(0)


def _sparse_normal_v1(rng, shape, fan_in, fan_out, p):
    return rng.standard_normal(shape) * (rng.random(shape) < p)


def _sparse_normal_v2(src, shape, fan_in, fan_out, p):
    return src.normal(0) * (src.uniform(1) < p)


def _erdos_renyi_v1(rng, shape, fan_in, fan_out, p):
    return (rng.random(shape) < p).astype(float)


def _erdos_renyi_v2(src, shape, fan_in, fan_out, p):
    return (src.uniform() < p).to(torch.float64)


def _beta_v1(rng, shape, fan_in, fan_out, a, b):
    return rng.beta(a, b, shape)


def _beta_v2(src, shape, fan_in, fan_out, a, b):
    return _on_cpu(src, stats.beta(a, b).ppf)


def _exponential_v1(rng, shape, fan_in, fan_out):
    return rng.exponential(1.0, shape)


def _exponential_v2(src, shape, fan_in, fan_out):
    return -torch.log(src.uniform())


def _lognormal_v1(rng, shape, fan_in, fan_out, sigma):
    return rng.lognormal(0.0, sigma, shape)


def _lognormal_v2(src, shape, fan_in, fan_out, sigma):
    return torch.exp(sigma * src.normal())


def _logistic_v1(rng, shape, fan_in, fan_out):
    return rng.logistic(0.0, 1.0, shape)


def _logistic_v2(src, shape, fan_in, fan_out):
    u = src.uniform()
    return torch.log(u) - torch.log1p(-u)


def _quantized_normal_v1(rng, shape, fan_in, fan_out, bits, clip):
    """N(0, 1) rounded to 2**bits uniform levels on [-clip, clip]."""
    levels = quantised_levels(bits, clip)
    step = levels[1] - levels[0]
    idx = np.clip(np.rint((rng.standard_normal(shape) + clip) / step), 0, len(levels) - 1).astype(int)
    return levels[idx]


def _quantized_normal_v2(src, shape, fan_in, fan_out, bits, clip):
    z = src.normal()
    levels = torch.tensor(quantised_levels(bits, clip), dtype=torch.float64, device=z.device)
    step = levels[1] - levels[0]
    return levels[torch.clamp(torch.round((z + clip) / step), 0, len(levels) - 1).long()]


def _binary_v1(rng, shape, fan_in, fan_out):
    return rng.choice(np.array([-1.0, 1.0]), size=shape)


def _binary_v2(src, shape, fan_in, fan_out):
    return ((src.words() >> 31) * 2 - 1).to(torch.float64)


def _zeros_v1(rng, shape, fan_in, fan_out):
    return np.zeros(shape)


def _zeros_v2(src, shape, fan_in, fan_out):
    return torch.zeros(src.n, dtype=torch.float64, device=src.device)


# ----------------------------------------------------------------------------- the registry

_GAIN = {"gain": "a finite number > 0"}
_PROB = {"p": "a number in (0, 1]"}

for _f in [
    Family("normal", _normal_v1, transform=_normal_v2, reference=lambda: stats.norm(), doc="N(0, 1)"),
    Family("truncated_normal", _truncated_normal_v1, transform=_truncated_normal_v2, defaults={"a": -2.0, "b": 2.0},
           scale=lambda a, b: float(stats.truncnorm(a, b).std()), reference=lambda a, b: stats.truncnorm(a, b),
           validate=_ordered("a", "b"), allowed={"a": "a finite number < b", "b": "a finite number > a"},
           doc="N(0, 1) truncated to [a, b]; mean != 0 unless a = -b (center=True removes it)"),
    Family("uniform", _uniform_v1, transform=_uniform_v2, defaults={"low": -1.0, "high": 1.0},
           scale=lambda low, high: (high - low) / math.sqrt(12), reference=lambda low, high: stats.uniform(low, high - low),
           validate=_ordered("low", "high"), allowed={"low": "a finite number < high", "high": "a finite number > low"},
           doc="U(low, high)"),
    Family("orthogonal", _orthogonal_v1, transform=_orthogonal_v2, default_scaling="none",
           doc="Haar-distributed (semi-)orthogonal: W W^T = I (rows <= cols) or W^T W = I. Unit singular "
               "values, so entry variance 1/max(rows, cols): an expanding layer (rows > cols) gets "
               "cols/rows of the fan-in variance 1/fan_in (1/4 at rows = 4 cols), a contracting one the "
               "full 1/fan_in; gain = sqrt(rows/cols) restores 1/fan_in (the fan-in rule, which assumes "
               "unit-variance entries, does not)"),
    Family("kaiming_normal", _kaiming_normal_v1, transform=_kaiming_normal_v2, defaults={"gain": math.sqrt(2.0)},
           default_scaling="none", validate=_positive_params("gain"), allowed=_GAIN,
           doc="N(0, gain^2 / fan_in), He et al. 2015"),
    Family("kaiming_uniform", _kaiming_uniform_v1, transform=_kaiming_uniform_v2, defaults={"gain": math.sqrt(2.0)},
           default_scaling="none", validate=_positive_params("gain"), allowed=_GAIN,
           doc="U(-b, b), b = gain sqrt(3 / fan_in)"),
    Family("xavier_normal", _xavier_normal_v1, transform=_xavier_normal_v2, defaults={"gain": 1.0},
           default_scaling="none", validate=_positive_params("gain"), allowed=_GAIN,
           doc="N(0, 2 gain^2 / (fan_in + fan_out)), Glorot & Bengio 2010"),
    Family("xavier_uniform", _xavier_uniform_v1, transform=_xavier_uniform_v2, defaults={"gain": 1.0},
           default_scaling="none", validate=_positive_params("gain"), allowed=_GAIN,
           doc="U(-b, b), b = gain sqrt(6 / (fan_in + fan_out))"),
    Family("spectral_normal", _normal_v1, transform=_normal_v2, default_scaling="spectral_radius",
           reference=lambda: stats.norm(), doc="N(0, 1) rescaled to spectral radius rho (echo-state style)"),
    Family("cauchy", _cauchy_v1, transform=_cauchy_v2, reference=lambda: stats.cauchy(),
           doc="standard Cauchy; no variance, the fan-in rule uses its scale gamma = 1"),
    Family("laplace", _laplace_v1, transform=_laplace_v2, scale=lambda: math.sqrt(2.0),
           reference=lambda: stats.laplace(), doc="Laplace(0, 1)"),
    Family("student_t", _student_t_v1, transform=_student_t_v2, defaults={"df": 3.0},
           scale=lambda df: math.sqrt(df / (df - 2)) if df > 2 else 1.0, reference=lambda df: stats.t(df),
           validate=_positive_params("df"), allowed={"df": "a finite number > 0"},
           doc="Student-t(df); for df <= 2 the fan-in rule uses the scale 1"),
    Family("gaussian_mixture", _gaussian_mixture_v1, transform=_gaussian_mixture_v2,
           defaults={"means": (-1.0, 1.0), "stds": (0.5, 0.5), "weights": (0.5, 0.5)},
           scale=lambda means, stds, weights: Mixture(means, stds, weights).std(),
           reference=lambda means, stds, weights: Mixture(means, stds, weights), validate=_validate_mixture,
           allowed={"means": "a list of finite numbers", "stds": "a list of finite numbers > 0",
                    "weights": "a list of finite numbers >= 0 with a positive sum (all three lists of one length)"},
           doc="sum_k w_k N(mu_k, s_k^2)"),
    Family("sparse_normal", _sparse_normal_v1, transform=_sparse_normal_v2, defaults={"p": 0.1},
           scale=lambda p: math.sqrt(p), validate=_probability("p"), allowed=_PROB,
           doc="N(0, 1) kept with probability p (density), else 0"),
    Family("erdos_renyi", _erdos_renyi_v1, transform=_erdos_renyi_v2, defaults={"p": 0.1},
           scale=lambda p: math.sqrt(p * (1 - p)) if p < 1 else 1.0, reference=lambda p: stats.bernoulli(p),
           validate=_probability("p"), allowed=_PROB,
           doc="Erdos-Renyi adjacency: Bernoulli(p) entries in {0, 1} (non-zero mean p)"),
    Family("beta", _beta_v1, transform=_beta_v2, defaults={"a": 2.0, "b": 2.0},
           scale=lambda a, b: float(stats.beta(a, b).std()), reference=lambda a, b: stats.beta(a, b),
           validate=_positive_params("a", "b"), allowed={"a": "a finite number > 0", "b": "a finite number > 0"},
           doc="Beta(a, b) on [0, 1] (non-zero mean)"),
    Family("exponential", _exponential_v1, transform=_exponential_v2, reference=lambda: stats.expon(),
           doc="Exp(1) (non-zero mean 1)"),
    Family("lognormal", _lognormal_v1, transform=_lognormal_v2, defaults={"sigma": 0.5},
           scale=lambda sigma: float(stats.lognorm(sigma).std()), reference=lambda sigma: stats.lognorm(sigma),
           validate=_positive_params("sigma"), allowed={"sigma": "a finite number > 0"},
           doc="log-normal(0, sigma^2) (non-zero mean)"),
    Family("logistic", _logistic_v1, transform=_logistic_v2, scale=lambda: math.pi / math.sqrt(3),
           reference=lambda: stats.logistic(), doc="Logistic(0, 1)"),
    Family("quantized_normal", _quantized_normal_v1, transform=_quantized_normal_v2, defaults={"bits": 4, "clip": 3.0},
           scale=lambda bits, clip: quantised_std(bits, clip), validate=_validate_bits,
           allowed={"bits": "one of the ints 1, 2, 3, 4, 8, 16", "clip": "a finite number > 0 (levels finite)"},
           doc="N(0, 1) rounded to 2**bits levels on [-clip, clip]"),
    Family("binary", _binary_v1, transform=_binary_v2, reference=lambda: stats.rv_discrete(values=([-1, 1], [0.5, 0.5])),
           doc="Rademacher +-1"),
    Family("zeros", _zeros_v1, transform=_zeros_v2, scale=lambda: 0.0, default_scaling="none", all_zero=True,
           doc="all zeros: the no-scaffold control (W_seed = 0)"),
]:
    register(_f)
