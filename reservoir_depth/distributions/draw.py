"""The checked draw of W_seed: raw draws of the spec's family and version, centred, scaled, refused when bad.

    raw_sample(spec, shape, seed)   raw float64 draws (version 1: numpy; version 2: a tensor on ``device``)
    sample(spec, shape, seed)       raw, centred (``center``), scaled (the spec's rule), checked: float64 numpy
    draw(spec, shape, seed)         the canonical W_seed as a tensor of ``dtype`` on ``device``, checked

Every draw is checked: a non-finite entry, or an all-zero draw from a family that is not all-zero by
construction (and not a zero gain), is an error naming the family, its parameters and the shape.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import torch

from .philox import Stream
from .scaling import SCALINGS, fans
from .seeds import rng_for
from .spec import DistributionSpec, as_spec

Array = np.ndarray


def stream_key(seed: int, spec: DistributionSpec, shape: tuple[int, ...]) -> int:
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
        raw = np.asarray(family.numpy_sample(rng_for(seed), shape, fan_in, fan_out, **spec.params), np.float64)
    else:
        key = stream_key(seed, spec, shape)
        if family.transform is None:  # a family with no version-2 sampler: numpy, seeded by the version-2 key
            raw = torch.from_numpy(np.asarray(family.numpy_sample(rng_for(key), shape, fan_in, fan_out, **spec.params),
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
