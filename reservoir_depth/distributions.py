"""Random-matrix families, scaling rules and seeded sampling of W_seed.

A family is a registry entry (name -> sampler, default parameters, validation,
reference law). A :class:`DistributionSpec` binds a family to parameters, a
scaling rule and a draw version; :func:`draw` turns (spec, shape, seed) into a
frozen W_seed. Each layer's seed is derived from (root seed, qualified layer
name) by :func:`layer_seed`, so adding a layer never changes another layer's draw.

Draw versions (``DistributionSpec.version``):

* 2, the default: a counter-based generator. Entry i of a draw is computed from
  Philox4x32-10 (Salmon et al. 2011) of the counter (i // 4, substream) under a
  64-bit key derived from (layer seed, family name, parameters, shape), written
  with int64 tensor ops that give identical bits on the CPU and CUDA, then the
  family's transform (Box-Muller, inverse CDF, ...) in float64 on the same
  device (on CUDA fused by torch.compile when it works, else eager: same bits). Families draw from independent streams (normal and kaiming_normal at
  one seed are uncorrelated), and a draw can be generated directly on a GPU
  (``draw(..., device="cuda")``), agreeing with the CPU draw to float64 rounding
  (far below ``io.FINGERPRINT_RTOL``). truncated_normal, student_t and beta
  transform their uniforms with scipy's inverse CDF, and orthogonal takes the
  QR of its normals with numpy, on the CPU (the result is then moved to the
  device); a registered family without a ``transform`` samples with numpy's PCG64
  seeded by the same key. The shape is part of the key: a (128, 64) draw does
  not contain the (64, 64) draw (no nested scaffolds across widths), so draws
  at different widths are independent.
* 1, the legacy draw, kept byte-identical so that adapter files and stored study
  results made before version 2 regenerate the same W_seed: numpy's PCG64
  seeded by the layer seed alone, float64 on the CPU, cast to float32. All
  families share that stream (normal, kaiming_normal, xavier_normal and
  spectral_normal at one seed are one matrix up to scale; uniform,
  kaiming_uniform and xavier_uniform likewise), and a (128, 64) draw of an
  element-wise family contains the (64, 64) draw as its top block. A spec dict
  without "version" (every file written before versions existed) is version 1;
  ``to_dict()`` omits version 1, so those files and run ids keep their hashes.

Every draw is checked: a non-finite entry, or an all-zero draw from a family
that is not all-zero by construction, is an error naming the family, its
parameters and the shape.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
from scipy import stats

from .identity import added, identity

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

    sample(rng, shape, fan_in, fan_out, **params) -> float64 array of raw draws:
    the version-1 sampler (numpy PCG64).
    transform(src, shape, fan_in, fan_out, **params) -> float64 tensor of raw
    draws on ``src.device``: the version-2 sampler, reading uniforms, normals or
    words from a counter-based :class:`Stream`. None: version 2 falls back to
    ``sample`` with numpy's PCG64 seeded by the version-2 key, on the CPU.
    scale(**params) -> the raw draws' standard deviation, or for families
    without a finite variance their scale parameter; the fan-in rule divides by it.
    reference(**params) -> a scipy.stats law of one raw entry (None: no simple law).
    allowed: for each parameter, the values it may take (quoted in errors).
    all_zero: every draw is zero by construction (the no-scaffold control); for any
    other family an all-zero draw is an error.
    """

    name: str
    sample: Sampler
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
    return _haar_of(rng.standard_normal((max(rows, cols), min(rows, cols))), shape)


def _haar_of(g: Array, shape: tuple[int, ...]) -> Array:
    """The Haar (semi-)orthogonal matrix of one (big, small) Gaussian matrix g."""
    rows, cols = shape[0], int(np.prod(shape[1:]))
    q, r = np.linalg.qr(g)
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


def _quantised_probs(bits: int, clip: float) -> tuple[Array, Array]:
    """The levels and the N(0, 1) mass of each level's rounding cell."""
    levels = _quantised_levels(bits, clip)
    step = levels[1] - levels[0]
    edges = np.concatenate([[-np.inf], levels[:-1] + step / 2, [np.inf]])
    return levels, np.diff(stats.norm.cdf(edges))


def _quantised_law(bits: int, clip: float) -> stats.rv_discrete:
    levels, probs = _quantised_probs(bits, clip)
    # rv_discrete needs integer support: index the levels, values mapped in tests.
    return stats.rv_discrete(values=(np.arange(len(levels)), probs)), levels


def _quantised_std(bits: int, clip: float) -> float:
    levels, p = _quantised_probs(bits, clip)
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


QUANTISED_BITS = (1, 2, 3, 4, 8, 16)


def _validate_bits(bits, clip):
    _require(isinstance(bits, int) and not isinstance(bits, bool) and bits in QUANTISED_BITS,
             f"bits must be one of the ints 1, 2, 3, 4, 8, 16, got {bits!r}")
    _require(clip > 0, f"clip must be > 0, got {clip!r}")


def _kaiming_std(fan_in: int, gain: float) -> float:
    return gain / math.sqrt(fan_in)


def _xavier_std(fan_in: int, fan_out: int, gain: float) -> float:
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


# ----------------------------------------------------------------------------- version 2: counter-based streams

MASK32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_CHUNK = {"cpu": 1 << 14, "device": 1 << 22}  # blocks per pass: bounds the temporaries, not the result


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = 10):
    """Philox4x32-10 (Salmon et al. 2011) of the counter (c0..c3) under the key (k0, k1).

    Counter words are numpy uint64 arrays, int64 tensors or Python ints holding
    uint32 values: the 32 x 32 -> 64-bit products wrap modulo 2**64 (in int64 with
    the same bits as in uint64), and the high and low words are cut out with a shift
    and a mask, so every backend and device gives identical bits (Python ints give
    the reference result).
    """
    for _ in range(rounds):
        p0, p1 = c0 * PHILOX_M[0], c2 * PHILOX_M[1]
        c0, c1, c2, c3 = ((p1 >> 32) & MASK32) ^ c1 ^ k0, p1 & MASK32, ((p0 >> 32) & MASK32) ^ c3 ^ k1, p0 & MASK32
        k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
    return c0, c1, c2, c3


def stream_key(seed: int, spec: "DistributionSpec", shape: tuple[int, ...]) -> int:
    """The 64-bit version-2 key of one draw: sha256 of (layer seed, family, parameters, shape).

    Parameters enter with their default's type, so df=3 and df=3.0 (one law) give one draw.
    """
    def canon(default: Any, v: Any) -> Any:
        if isinstance(default, (list, tuple)):
            return [float(x) for x in v]
        return int(v) if isinstance(default, int) else float(v)

    params = {k: canon(spec.family.defaults[k], v) for k, v in sorted(spec.params.items())}
    blob = json.dumps([int(seed), spec.name, params, [int(n) for n in shape]], sort_keys=True)
    return int.from_bytes(hashlib.sha256(f"draw-v2/{blob}".encode()).digest()[:8], "little")


def _philox_words(b: torch.Tensor, sub, k0, k1) -> torch.Tensor:
    """The 4 words of each counter block b (int64 block indices) of substream ``sub``, flattened."""
    return torch.stack(philox4x32(b & MASK32, b >> 32, sub, 0, k0, k1), dim=1).view(-1)


def _uniform_of(w):
    """U(0, 1) in float64 from uint32 words (a tensor or a numpy array): (w + 1/2) 2^-32, never 0 or 1 (exact)."""
    return ((w.to(torch.float64) if isinstance(w, torch.Tensor) else w.astype(np.float64)) + 0.5) * 2.0**-32


def _box_muller(u):
    """N(0, 1) from an even number of uniforms (a tensor or a numpy array): entries 2m, 2m+1 from uniforms
    2m, 2m+1 (torch and numpy math libraries may differ in the last bit)."""
    xp = torch if isinstance(u, torch.Tensor) else np
    u = u.reshape(-1, 2)
    r, theta = xp.sqrt(-2.0 * xp.log(u[:, 0])), (2.0 * math.pi) * u[:, 1]
    return xp.stack([r * xp.cos(theta), r * xp.sin(theta)], 1).reshape(-1)


_BLOCK_FNS: dict[str, Callable[..., torch.Tensor]] = {
    "words": _philox_words,
    "uniform": lambda b, sub, k0, k1: _uniform_of(_philox_words(b, sub, k0, k1)),
    "normal": lambda b, sub, k0, k1: _box_muller(_uniform_of(_philox_words(b, sub, k0, k1))),
}
COMPILE_ON_DEVICE = True  # fuse the block functions with torch.compile on CUDA (eager if that fails)
_compiled: dict[str, Callable[..., torch.Tensor] | None] = {}


def _block_fn(kind: str, device: torch.device) -> Callable[..., torch.Tensor]:
    if device.type != "cuda" or not COMPILE_ON_DEVICE or _compiled.get(kind, 0) is None:
        return _BLOCK_FNS[kind]
    if kind not in _compiled:
        _compiled[kind] = torch.compile(_BLOCK_FNS[kind], dynamic=True)
    return _compiled[kind]


class Stream:
    """Counter-based random numbers of one version-2 draw of ``n`` entries on ``device``.

    Substream j, entry i = word i % 4 of Philox4x32-10(counter (i // 4, 0, j, 0), key);
    uniforms are (word + 1/2) 2^-32 and normals Box-Muller of uniform pairs (2m, 2m+1).
    Any entry is computable on its own, on any device, in any chunking. On the CPU the
    counter rounds and transforms run on numpy arrays in cache-sized chunks (about twice
    as fast as torch int64 ops there); on CUDA on torch int64 tensors, fused by
    torch.compile. Words and uniforms are identical bits on every path; normals agree to
    the last bit or so (the math libraries' log / cos / sin).
    """

    def __init__(self, key: int, n: int, device: torch.device | str | None = None) -> None:
        self.key, self.n = int(key), int(n)
        self.device = torch.device(device if device is not None else "cpu")

    def _numpy(self, kind: str, sub: int) -> torch.Tensor:
        """CPU path: counter rounds and the block's transform on numpy arrays, in cache-sized chunks spread
        over torch's thread count (each entry is computed from its own counter, so chunking changes nothing)."""
        blocks, (k0, k1) = -(-self.n // 4), (self.key & MASK32, self.key >> 32)
        out = np.empty(4 * blocks, dtype=np.int64 if kind == "words" else np.float64)
        to = {"words": lambda w: w, "uniform": _uniform_of, "normal": lambda w: _box_muller(_uniform_of(w))}[kind]
        def chunk(start: int) -> None:
            b = np.arange(start, min(start + PHILOX_CHUNK["cpu"], blocks), dtype=np.uint64)
            w = np.stack(philox4x32(b & MASK32, b >> 32, int(sub), 0, k0, k1), axis=1).view(np.int64).reshape(-1)
            out[4 * start:4 * (start + len(b))] = to(w)

        starts = range(0, blocks, PHILOX_CHUNK["cpu"])
        threads = min(torch.get_num_threads(), len(starts))
        if threads > 1:  # numpy releases the GIL: chunks in parallel on torch's thread count
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(chunk, starts))
        else:
            for start in starts:
                chunk(start)
        return torch.from_numpy(out).to(self.device)

    def _torch(self, kind: str, sub: int) -> torch.Tensor:
        blocks, dev = -(-self.n // 4), self.device
        fn = _block_fn(kind, dev)
        k0, k1, j = (torch.tensor(v, dtype=torch.int64, device=dev) for v in (self.key & MASK32, self.key >> 32, sub))
        out = torch.empty(4 * blocks, dtype=torch.int64 if kind == "words" else torch.float64, device=dev)
        for start in range(0, blocks, PHILOX_CHUNK["device"]):
            b = torch.arange(start, min(start + PHILOX_CHUNK["device"], blocks), dtype=torch.int64, device=dev)
            try:
                out[4 * start:4 * (start + len(b))] = fn(b, j, k0, k1)
            except Exception:  # no working compiler (e.g. no Triton): the eager ops give the same bits
                if fn is _BLOCK_FNS[kind]:
                    raise
                _compiled[kind], fn = None, _BLOCK_FNS[kind]
                out[4 * start:4 * (start + len(b))] = fn(b, j, k0, k1)
        return out

    def _all(self, kind: str, sub: int, backend: str | None) -> torch.Tensor:
        backend = backend or ("numpy" if self.device.type == "cpu" else "torch")
        if backend == "torch":
            return self._torch(kind, sub)[:self.n]
        return self._numpy(kind, sub)[:self.n]

    def words(self, sub: int = 0, backend: str | None = None) -> torch.Tensor:
        """The uint32 words of substream ``sub`` as int64 (``backend`` "numpy" / "torch" forces one, for tests)."""
        return self._all("words", sub, backend)

    def uniform(self, sub: int = 0, backend: str | None = None) -> torch.Tensor:
        """U(0, 1) in float64, (w + 1/2) 2^-32: never 0 or 1."""
        return self._all("uniform", sub, backend)

    def normal(self, sub: int = 0, backend: str | None = None) -> torch.Tensor:
        """N(0, 1) in float64 by Box-Muller: entries 2m, 2m+1 from uniforms 2m, 2m+1 of substream ``sub``."""
        return self._all("normal", sub, backend)


def _on_cpu(src: Stream, f: Callable[[Array], Array], sub: int = 0) -> torch.Tensor:
    """A transform without a device form: scipy / numpy on the CPU, result moved to src.device."""
    return torch.from_numpy(np.ascontiguousarray(f(src.uniform(sub).cpu().numpy()), np.float64)).to(src.device)


def _mixture_v2(src: Stream, means, stds, weights) -> torch.Tensor:
    cum = torch.tensor(np.cumsum(weights) / np.sum(weights), dtype=torch.float64, device=src.device)
    k = torch.bucketize(src.uniform(1), cum[:-1], right=True)  # component k with probability weights[k]
    m, s = (torch.tensor(v, dtype=torch.float64, device=src.device) for v in (means, stds))
    return m[k] + s[k] * src.normal(0)


def _quantise_v2(z: torch.Tensor, bits: int, clip: float) -> torch.Tensor:
    levels = torch.tensor(_quantised_levels(bits, clip), dtype=torch.float64, device=z.device)
    step = levels[1] - levels[0]
    return levels[torch.clamp(torch.round((z + clip) / step), 0, len(levels) - 1).long()]


def _orthogonal_v2(src: Stream, shape: tuple[int, ...]) -> torch.Tensor:
    rows, cols = shape[0], int(np.prod(shape[1:]))
    g = src.normal().cpu().numpy().reshape(max(rows, cols), min(rows, cols))
    return torch.from_numpy(np.ascontiguousarray(_haar_of(g, shape))).to(src.device)


def _laplace_v2(u: torch.Tensor) -> torch.Tensor:
    v = u - 0.5
    return -torch.sign(v) * torch.log1p(-2.0 * v.abs())


for _f in [
    Family("normal", lambda rng, s, fi, fo: rng.standard_normal(s),
           reference=lambda: stats.norm(), doc="N(0, 1)", transform=lambda src, s, fi, fo: src.normal()),
    Family("truncated_normal", lambda rng, s, fi, fo, a, b: stats.truncnorm(a, b).rvs(s, random_state=rng),
           defaults={"a": -2.0, "b": 2.0}, scale=lambda a, b: float(stats.truncnorm(a, b).std()),
           reference=lambda a, b: stats.truncnorm(a, b),
           validate=lambda a, b: _require(a < b, f"need a < b, got a={a!r}, b={b!r}"),
           transform=lambda src, s, fi, fo, a, b: _on_cpu(src, stats.truncnorm(a, b).ppf),
           allowed={"a": "a finite number < b", "b": "a finite number > a"},
           doc="N(0, 1) truncated to [a, b]; mean != 0 unless a = -b (center=True removes it)"),
    Family("uniform", lambda rng, s, fi, fo, low, high: rng.uniform(low, high, s),
           defaults={"low": -1.0, "high": 1.0}, scale=lambda low, high: (high - low) / math.sqrt(12),
           reference=lambda low, high: stats.uniform(low, high - low),
           validate=lambda low, high: _require(low < high, f"need low < high, got low={low!r}, high={high!r}"),
           transform=lambda src, s, fi, fo, low, high: low + (high - low) * src.uniform(),
           allowed={"low": "a finite number < high", "high": "a finite number > low"}, doc="U(low, high)"),
    Family("orthogonal", lambda rng, s, fi, fo: _haar(rng, s, fi, fo), default_scaling="none",
           transform=lambda src, s, fi, fo: _orthogonal_v2(src, s),
           doc="Haar-distributed (semi-)orthogonal: W W^T = I (rows <= cols) or W^T W = I. Unit singular "
               "values, so entry variance 1/max(rows, cols): an expanding layer (rows > cols) gets "
               "cols/rows of the fan-in variance 1/fan_in (1/4 at rows = 4 cols), a contracting one the "
               "full 1/fan_in; gain = sqrt(rows/cols) restores 1/fan_in (the fan-in rule, which assumes "
               "unit-variance entries, does not)"),
    Family("kaiming_normal", lambda rng, s, fi, fo, gain: rng.standard_normal(s) * _kaiming_std(fi, gain),
           defaults={"gain": math.sqrt(2.0)}, default_scaling="none", validate=_positive("gain"),
           transform=lambda src, s, fi, fo, gain: src.normal() * _kaiming_std(fi, gain),
           allowed={"gain": "a finite number > 0"}, doc="N(0, gain^2 / fan_in), He et al. 2015"),
    Family("kaiming_uniform", lambda rng, s, fi, fo, gain: rng.uniform(-1, 1, s) * math.sqrt(3) * _kaiming_std(fi, gain),
           defaults={"gain": math.sqrt(2.0)}, default_scaling="none", validate=_positive("gain"),
           transform=lambda src, s, fi, fo, gain: (2 * src.uniform() - 1) * math.sqrt(3) * _kaiming_std(fi, gain),
           allowed={"gain": "a finite number > 0"}, doc="U(-b, b), b = gain sqrt(3 / fan_in)"),
    Family("xavier_normal", lambda rng, s, fi, fo, gain: rng.standard_normal(s) * _xavier_std(fi, fo, gain),
           defaults={"gain": 1.0}, default_scaling="none", validate=_positive("gain"),
           transform=lambda src, s, fi, fo, gain: src.normal() * _xavier_std(fi, fo, gain),
           allowed={"gain": "a finite number > 0"}, doc="N(0, 2 gain^2 / (fan_in + fan_out)), Glorot & Bengio 2010"),
    Family("xavier_uniform", lambda rng, s, fi, fo, gain: rng.uniform(-1, 1, s) * math.sqrt(3) * _xavier_std(fi, fo, gain),
           defaults={"gain": 1.0}, default_scaling="none", validate=_positive("gain"),
           transform=lambda src, s, fi, fo, gain: (2 * src.uniform() - 1) * math.sqrt(3) * _xavier_std(fi, fo, gain),
           allowed={"gain": "a finite number > 0"}, doc="U(-b, b), b = gain sqrt(6 / (fan_in + fan_out))"),
    Family("spectral_normal", lambda rng, s, fi, fo: rng.standard_normal(s), default_scaling="spectral_radius",
           reference=lambda: stats.norm(), transform=lambda src, s, fi, fo: src.normal(),
           doc="N(0, 1) rescaled to spectral radius rho (echo-state style)"),
    Family("cauchy", lambda rng, s, fi, fo: rng.standard_cauchy(s), reference=lambda: stats.cauchy(),
           transform=lambda src, s, fi, fo: torch.tan(math.pi * (src.uniform() - 0.5)),
           doc="standard Cauchy; no variance, the fan-in rule uses its scale gamma = 1"),
    Family("laplace", lambda rng, s, fi, fo: rng.laplace(0.0, 1.0, s), scale=lambda: math.sqrt(2.0),
           reference=lambda: stats.laplace(), transform=lambda src, s, fi, fo: _laplace_v2(src.uniform()),
           doc="Laplace(0, 1)"),
    Family("student_t", lambda rng, s, fi, fo, df: rng.standard_t(df, s), defaults={"df": 3.0},
           scale=lambda df: math.sqrt(df / (df - 2)) if df > 2 else 1.0,
           reference=lambda df: stats.t(df), validate=_positive("df"),
           transform=lambda src, s, fi, fo, df: _on_cpu(src, stats.t(df).ppf),
           allowed={"df": "a finite number > 0"}, doc="Student-t(df); for df <= 2 the fan-in rule uses the scale 1"),
    Family("gaussian_mixture",
           lambda rng, s, fi, fo, means, stds, weights: (
               lambda k: rng.normal(np.asarray(means)[k], np.asarray(stds)[k]))(
               rng.choice(len(weights), size=s, p=np.asarray(weights) / np.sum(weights))),
           defaults={"means": (-1.0, 1.0), "stds": (0.5, 0.5), "weights": (0.5, 0.5)},
           scale=lambda means, stds, weights: _Mixture(means, stds, weights).std(),
           reference=lambda means, stds, weights: _Mixture(means, stds, weights),
           validate=_validate_mixture, transform=lambda src, s, fi, fo, **p: _mixture_v2(src, **p),
           allowed={"means": "a list of finite numbers", "stds": "a list of finite numbers > 0",
                    "weights": "a list of finite numbers >= 0 with a positive sum (all three lists of one length)"},
           doc="sum_k w_k N(mu_k, s_k^2)"),
    Family("sparse_normal", lambda rng, s, fi, fo, p: rng.standard_normal(s) * (rng.random(s) < p),
           defaults={"p": 0.1}, scale=lambda p: math.sqrt(p), validate=_prob("p"),
           transform=lambda src, s, fi, fo, p: src.normal(0) * (src.uniform(1) < p),
           allowed={"p": "a number in (0, 1]"}, doc="N(0, 1) kept with probability p (density), else 0"),
    Family("erdos_renyi", lambda rng, s, fi, fo, p: (rng.random(s) < p).astype(float),
           defaults={"p": 0.1}, scale=lambda p: math.sqrt(p * (1 - p)) if p < 1 else 1.0,
           reference=lambda p: stats.bernoulli(p), validate=_prob("p"),
           transform=lambda src, s, fi, fo, p: (src.uniform() < p).to(torch.float64),
           allowed={"p": "a number in (0, 1]"},
           doc="Erdos-Renyi adjacency: Bernoulli(p) entries in {0, 1} (non-zero mean p)"),
    Family("beta", lambda rng, s, fi, fo, a, b: rng.beta(a, b, s), defaults={"a": 2.0, "b": 2.0},
           scale=lambda a, b: float(stats.beta(a, b).std()), reference=lambda a, b: stats.beta(a, b),
           validate=_positive("a", "b"), transform=lambda src, s, fi, fo, a, b: _on_cpu(src, stats.beta(a, b).ppf),
           allowed={"a": "a finite number > 0", "b": "a finite number > 0"}, doc="Beta(a, b) on [0, 1] (non-zero mean)"),
    Family("exponential", lambda rng, s, fi, fo: rng.exponential(1.0, s), reference=lambda: stats.expon(),
           transform=lambda src, s, fi, fo: -torch.log(src.uniform()), doc="Exp(1) (non-zero mean 1)"),
    Family("lognormal", lambda rng, s, fi, fo, sigma: rng.lognormal(0.0, sigma, s), defaults={"sigma": 0.5},
           scale=lambda sigma: float(stats.lognorm(sigma).std()), reference=lambda sigma: stats.lognorm(sigma),
           validate=_positive("sigma"), transform=lambda src, s, fi, fo, sigma: torch.exp(sigma * src.normal()),
           allowed={"sigma": "a finite number > 0"}, doc="log-normal(0, sigma^2) (non-zero mean)"),
    Family("logistic", lambda rng, s, fi, fo: rng.logistic(0.0, 1.0, s), scale=lambda: math.pi / math.sqrt(3),
           reference=lambda: stats.logistic(),
           transform=lambda src, s, fi, fo: (lambda u: torch.log(u) - torch.log1p(-u))(src.uniform()),
           doc="Logistic(0, 1)"),
    Family("quantized_normal", lambda rng, s, fi, fo, bits, clip: _quantise(rng.standard_normal(s), bits, clip),
           defaults={"bits": 4, "clip": 3.0}, scale=lambda bits, clip: _quantised_std(bits, clip),
           validate=_validate_bits, transform=lambda src, s, fi, fo, bits, clip: _quantise_v2(src.normal(), bits, clip),
           allowed={"bits": "one of the ints 1, 2, 3, 4, 8, 16", "clip": "a finite number > 0"},
           doc="N(0, 1) rounded to 2**bits levels on [-clip, clip]"),
    Family("binary", lambda rng, s, fi, fo: rng.choice(np.array([-1.0, 1.0]), size=s),
           reference=lambda: stats.rv_discrete(values=([-1, 1], [0.5, 0.5])),
           transform=lambda src, s, fi, fo: ((src.words() >> 31) * 2 - 1).to(torch.float64), doc="Rademacher +-1"),
    Family("zeros", lambda rng, s, fi, fo: np.zeros(s), scale=lambda: 0.0, default_scaling="none",
           transform=lambda src, s, fi, fo: torch.zeros(src.n, dtype=torch.float64, device=src.device), all_zero=True,
           doc="all zeros: the no-scaffold control (W_seed = 0)"),
]:
    register(_f)


# ----------------------------------------------------------------------------- scaling rules

def _numpy(w: Array | torch.Tensor) -> Array:
    return w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else w


def spectral_radius(w: Array) -> float:
    """max |eigenvalue| of a square matrix; largest singular value otherwise."""
    m = _numpy(w).reshape(w.shape[0], -1)
    if m.shape[0] == m.shape[1]:
        return float(np.max(np.abs(np.linalg.eigvals(m)))) if m.size else 0.0
    return float(np.linalg.norm(m, 2)) if m.size else 0.0


def _fan_in_rule(w, spec, family, params, fan_in, fan_out):
    """sigma = gain / sqrt(fan_in) (or scale gamma for families without a variance)."""
    if family.all_zero:
        return w
    s = family.scale(**params)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"{family.name} with {dict(params)} has scale {s!r}: the fan-in rule needs a finite scale > 0")
    c = spec.gain / (s * math.sqrt(fan_in))
    return w.mul_(c) if isinstance(w, torch.Tensor) else w * c  # a tensor here is a fresh draw: scaled in place


NILPOTENT_RTOL = 1e-6  # radius / ||W||_2 below this is rounding noise (a Jordan block of size n gives eps^(1/n))


def _radius_is_trustworthy(m: Array, r: float, norm: float) -> bool:
    """Whether the computed spectral radius r of a square W is a radius and not rounding noise
    (theory/03, Prop. 3): perturbing W by sqrt(eps) ||W||_2 in a fixed random direction moves a
    simple eigenvalue by about that much, but a defective one (a nilpotent Jordan block of size k)
    by (sqrt eps)^(1/k) ||W||; trust r when it moves by less than 1e-3 r. Non-square W: the largest
    singular value, always well conditioned."""
    m2 = m.reshape(m.shape[0], -1)
    if m2.shape[0] != m2.shape[1]:
        return True
    e = rng_for(0).standard_normal(m2.shape)
    r2 = spectral_radius(m2 + math.sqrt(np.finfo(np.float64).eps) * norm * e / np.linalg.norm(e, 2))
    return abs(r2 - r) <= 1e-3 * r


def _spectral_rule(w, spec, family, params, fan_in, fan_out):
    """Rescale so that the spectral radius is exactly rho (post-processing, as reservoirpy)."""
    m = _numpy(w)
    if not np.any(m):
        return w
    r, norm = spectral_radius(m), float(np.linalg.norm(m.reshape(m.shape[0], -1), 2))
    if r <= NILPOTENT_RTOL * norm or not _radius_is_trustworthy(m, r, norm):  # rounding noise, not a radius
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

DRAW_VERSIONS = (1, 2)
DEFAULT_VERSION = 2


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def _param_ok(default: Any, v: Any) -> bool:
    """v has the type of the parameter's default: an int, a finite number, or a list of finite numbers."""
    finite = lambda x: is_number(x) and math.isfinite(x)
    if isinstance(default, int) and not isinstance(default, bool):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(v, (list, tuple, np.ndarray)) and all(finite(x) for x in v)
    return finite(v)


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
    family from its own counter-based stream; 1 is the legacy numpy draw, and a
    dict without "version" (``from_dict``) is version 1.
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
        object.__setattr__(self, "params", {k: _jsonable(v) for k, v in params.items()})
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
        return identity(self, params=lambda p: dict(sorted(p.items())))  # center, version: see their fields

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DistributionSpec":
        """The spec of a dict as stored in JSON and TOML; no "version" key means version 1 (the legacy draw)."""
        return cls(**{**d, "params": dict(d.get("params", {})), "version": d.get("version", 1)})


def as_spec(spec: "DistributionSpec | str | Mapping[str, Any]") -> DistributionSpec:
    """A DistributionSpec from a spec, a family name (the default version, 2) or a dict (``from_dict``: version 1
    unless the dict says otherwise)."""
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


def _fans_of(shape: tuple[int, ...]) -> tuple[int, int]:
    return fans(shape) if len(shape) >= 2 else (1, 1)


def _check(w: Array | torch.Tensor, spec: DistributionSpec, shape: tuple[int, ...], what: str,
           zero_ok: bool) -> None:
    """Refuse a non-finite draw, or an all-zero one unless ``zero_ok`` (the 'zeros' family, gain or rho 0)."""
    where = f"{what} of {spec.name} with {dict(spec.params)}, shape {shape} (draw version {spec.version})"
    if isinstance(w, np.ndarray):
        finite, nonzero = bool(np.isfinite(w).all()), bool(np.any(w))
    elif w.numel() == 0:
        finite, nonzero = True, False
    else:  # one pass: max |w| is nan or inf iff an entry is, and 0 iff all are
        m = float(torch.linalg.vector_norm(w, float("inf")))
        finite, nonzero = math.isfinite(m), m > 0
    if not finite:
        bad = int(w.size - np.isfinite(w).sum()) if isinstance(w, np.ndarray) else int((~torch.isfinite(w)).sum())
        raise ValueError(f"the {where} has {bad} non-finite entries: the parameters (or gain) overflow it")
    if not nonzero and not zero_ok and min(shape, default=0) > 0:
        raise ValueError(f"the {where} is all zero: the parameters (or gain) leave no non-zero entry (use a larger "
                         f"p or shape; the no-scaffold control is the 'zeros' family)")


def _zero_ok(spec: DistributionSpec) -> bool:
    """An all-zero draw is what was asked for: the 'zeros' family, or a zero gain (rho for the spectral rule)."""
    return spec.family.all_zero or (spec.rho == 0 if spec.scaling == "spectral_radius" else spec.gain == 0)


def raw_sample(spec: DistributionSpec | str, shape: tuple[int, ...], seed: int,
               device: torch.device | str | None = None) -> Array | torch.Tensor:
    """Raw float64 draws of the spec's family (no centring, no scaling, not checked: sample and draw check).

    Version 1: a numpy array (CPU). Version 2: a tensor on ``device`` (default CPU).
    """
    spec = as_spec(spec)
    shape = tuple(int(s) for s in shape)
    fan_in, fan_out = _fans_of(shape)
    family = spec.family
    if spec.version == 1:
        raw = np.asarray(family.sample(rng_for(seed), shape, fan_in, fan_out, **spec.params), np.float64)
    else:
        key = stream_key(seed, spec, shape)
        if family.transform is None:  # a family with no version-2 sampler: numpy, seeded by the version-2 key
            raw = torch.from_numpy(np.asarray(family.sample(rng_for(key), shape, fan_in, fan_out, **spec.params),
                                              np.float64)).to(device if device is not None else "cpu")
        else:
            src = Stream(key, int(np.prod(shape)), device)
            raw = family.transform(src, shape, fan_in, fan_out, **spec.params).reshape(shape)
    return raw


def _scaled(spec: DistributionSpec, shape: tuple[int, ...], seed: int, device=None) -> Array | torch.Tensor:
    shape = tuple(int(s) for s in shape)
    raw = raw_sample(spec, shape, seed, device)
    if spec.center:
        raw = raw - spec.mean
    fan_in, fan_out = fans(shape)
    return SCALINGS[spec.scaling](raw, spec, spec.family, spec.params, fan_in, fan_out)


def sample(spec: DistributionSpec | str, shape: tuple[int, ...], seed: int) -> Array:
    """Raw-then-scaled float64 draw of W_seed with the given seed, as a numpy array (the spec's draw version).

    Raises ValueError, naming family, parameters and shape, on a non-finite draw or an
    all-zero one that was not asked for (``_zero_ok``).
    """
    spec = as_spec(spec)
    w = _scaled(spec, shape, seed)
    w = w if isinstance(w, np.ndarray) else w.numpy()
    _check(w, spec, tuple(int(s) for s in shape), "float64 draw", _zero_ok(spec))
    return w


def draw(spec: DistributionSpec | str, shape: tuple[int, ...], seed: int,
         dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The canonical W_seed as a tensor of ``dtype`` on ``device`` (default CPU).

    Version 2 (the default) generates on ``device`` itself and agrees across devices
    to float64 rounding; version 1 draws on the CPU with numpy and copies the result.
    Raises ValueError, naming family, parameters and shape, on a non-finite draw or
    an all-zero one from a family other than 'zeros'.
    """
    spec = as_spec(spec)
    if spec.version == 1:
        w = torch.from_numpy(sample(spec, shape, seed)).to(dtype).to(device if device is not None else "cpu")
    else:
        w = _scaled(spec, shape, seed, device).to(dtype)
    _check(w, spec, tuple(int(s) for s in shape), f"{dtype} draw", _zero_ok(spec))
    return w


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
