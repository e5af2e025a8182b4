"""Scaling rules of W_seed, applied to the raw draws of a family: fan-in (the default), spectral radius, none.

    fan_in           W = raw / scale * gain / sqrt(fan_in)   (scale: the family's std, or its scale parameter)
    spectral_radius  W = raw * rho / max |eig raw|            (largest singular value when W is not square)
    none             W = raw * gain                           (orthogonal, kaiming, xavier, zeros are self-scaled)

A rule is ``rule(w, spec, family, params, fan_in, fan_out) -> W``, registered in SCALINGS.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .seeds import rng_for

Array = np.ndarray


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight (out, in, *kernel), as torch.nn.init does."""
    if len(shape) < 2:
        raise ValueError(f"a weight needs at least 2 dims, got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


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
    """Rescale so that the spectral radius is exactly rho (post-processing, as reservoirpy). The eigenvalues
    (singular values) are computed on one BLAS thread: LAPACK's blocked paths sum in another order with more
    threads, which moved the last bits of r, and so of every float64 entry of W_seed, with the thread count."""
    m = _numpy(w)
    if not np.any(m):
        return w
    with threadpool_limits(limits=1, user_api="blas"):
        r, norm = spectral_radius(m), float(np.linalg.norm(m.reshape(m.shape[0], -1), 2))
        trustworthy = r > NILPOTENT_RTOL * norm and _radius_is_trustworthy(m, r, norm)
    if not trustworthy:  # rounding noise, not a radius
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
