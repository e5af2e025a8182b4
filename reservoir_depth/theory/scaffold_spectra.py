"""Prop. 3 (theory/03_scaffold_spectra.md): spectra of scaffolds, and when a reservoir forgets its start.

Marchenko-Pastur (eq. 3.1), the circular law (eq. 3.2), a KS distance for laws with atoms,
and the echo-state contraction ||x_t - x'_t|| <= (Lip(phi) sigma_max(W))^t ||x_0 - x'_0|| (eq. 3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from numpy.polynomial.legendre import leggauss

from .activations import Array, PhiLike, as_activation
from .unfolding import esn_states


def squared_singular_values(W: Array) -> Array:
    """Eigenvalues of W W^T for W (n, m): the min(n, m) squared singular values and n - m zeros if n > m."""
    W = np.asarray(W, float)
    s2 = np.linalg.svd(W, compute_uv=False) ** 2
    return np.sort(np.concatenate([s2, np.zeros(max(0, W.shape[0] - W.shape[1]))]))


def _check_ratio(ratio: float, sigma2: float) -> None:
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"ratio n/m must be a finite number > 0, got {ratio!r}")
    if not (math.isfinite(sigma2) and sigma2 > 0):
        raise ValueError(f"sigma2 must be a finite number > 0, got {sigma2!r}")


def mp_support(ratio: float, sigma2: float = 1.0) -> tuple[float, float]:
    """Edges [sigma2 (1 - sqrt(ratio))^2, sigma2 (1 + sqrt(ratio))^2] of the continuous part (eq. 3.1)."""
    _check_ratio(ratio, sigma2)
    return sigma2 * (1 - math.sqrt(ratio)) ** 2, sigma2 * (1 + math.sqrt(ratio)) ** 2


def mp_atom(ratio: float) -> float:
    """Point mass at 0 of the MP law: 1 - 1/ratio when ratio = n/m > 1 (W W^T has rank m < n), else 0."""
    _check_ratio(ratio, 1.0)
    return max(0.0, 1.0 - 1.0 / ratio)


def mp_pdf(x: Array, ratio: float, sigma2: float = 1.0) -> Array:
    """Eq. (3.1): density of the continuous part of the eigenvalues of W W^T, W (n, m) with iid
    entries of variance sigma2 / m, ratio = n / m (the atom at 0, mp_atom, is not included):

        p(x) = sqrt((b - x)(x - a)) / (2 pi sigma2 ratio x) on [a, b].
    """
    a, b = mp_support(ratio, sigma2)
    x = np.asarray(x, float)
    inside = (x > a) & (x < b) & (x > 0)
    xs = np.where(inside, x, 0.5 * (a + b))
    return np.where(inside, np.sqrt((b - xs) * (xs - a)) / (2 * math.pi * sigma2 * ratio * xs), 0.0)


def mp_cdf(x: Array, ratio: float, sigma2: float = 1.0, n_nodes: int = 64) -> Array:
    """CDF of the MP law, atom at 0 included: mp_atom + int_a^x mp_pdf.

    With x = a + (b - a)(1 - cos theta) / 2 the edge square-root singularities cancel and the
    integrand ((b - a)/2)^2 sin^2 theta / (2 pi sigma2 ratio x) is smooth: Gauss-Legendre on [0, theta(x)].
    """
    a, b = mp_support(ratio, sigma2)
    x = np.asarray(x, float)
    theta = np.arccos(np.clip(1 - 2 * (x - a) / (b - a), -1.0, 1.0))  # 0 at a, pi at b
    t, w = leggauss(n_nodes)
    th = theta[..., None] * (t + 1) / 2  # nodes mapped onto [0, theta]
    xx = a + (b - a) * (1 - np.cos(th)) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(xx > 0, ((b - a) / 2) ** 2 * np.sin(th) ** 2 / (2 * math.pi * sigma2 * ratio * xx), 0.0)
    cont = theta / 2 * (f @ w)
    return np.where(x < 0, 0.0, mp_atom(ratio) + cont)


def circular_cdf(r: Array, radius: float = 1.0) -> Array:
    """Eq. (3.2): CDF of |lambda| under the circular law on the disc of this radius: (r / radius)^2 on [0, radius]."""
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
    return np.clip((np.asarray(r, float) / radius) ** 2, 0.0, 1.0)


def ks_distance(samples: Array, cdf: Callable[[Array], Array]) -> float:
    """sup_x |F_n(x) - F(x)| for a right-continuous F that may have atoms.

    Between sample points F_n is flat and F monotone, so the sup is attained at a sample
    point, from the right (F_n(x), F(x)) or from the left (F_n(x-), F(x-)).
    """
    x = np.sort(np.asarray(samples, float).ravel())
    if x.size == 0:
        raise ValueError("ks_distance needs at least one sample")
    xu, counts = np.unique(x, return_counts=True)
    right = np.cumsum(counts) / x.size
    left = right - counts / x.size
    return float(max(np.max(np.abs(right - cdf(xu))), np.max(np.abs(left - cdf(np.nextafter(xu, -np.inf))))))


@dataclass(frozen=True)
class Contraction:
    """Two trajectories x_t, x'_t of one driven ESN: distance_t = ||x_t - x'_t|| and the bound of eq. (3.3)."""

    distance: Array
    bound: Array  # (Lip(phi) sigma_max)^t ||x_0 - x'_0||
    rounding: Array  # float64 allowance: 4 N eps (t + 1) max(||x||, ||x'||, ||W_in u||)
    sigma_max: float
    rho: float
    lipschitz: float

    @property
    def holds(self) -> bool:
        """distance_t <= bound_t + rounding_t for every t."""
        return bool(np.all(self.distance <= self.bound + self.rounding))

    @property
    def ratio(self) -> float:
        """||x_T - x'_T|| / ||x_0 - x'_0||: below 1 when the states forgot their start."""
        return float(self.distance[-1] / self.distance[0]) if self.distance[0] > 0 else 0.0


def echo_state_contraction(W: Array, W_in: Array, inputs: Array, x0: Array, x0p: Array,
                           phi: PhiLike = "tanh") -> Contraction:
    """Eq. (3.3): drive x_{t+1} = phi(W x_t + W_in u_t) from x0 and from x0p with the same inputs (T, d).

    phi is Lipschitz(Lip): ||x_{t+1} - x'_{t+1}|| <= Lip ||W (x_t - x'_t)|| <= Lip sigma_max(W) ||x_t - x'_t||.
    """
    act = as_activation(phi)
    if act.lipschitz is None:
        raise ValueError(f"activation {act.name!r} has no known Lipschitz constant; pass an Activation with lipschitz")
    inputs = np.asarray(inputs, float)
    if inputs.ndim != 2:
        raise ValueError(f"inputs must be a sequence of shape (T, d), got {inputs.shape}")
    T = inputs.shape[0]
    xs = esn_states(W, W_in, inputs, T, act, x0)
    xps = esn_states(W, W_in, inputs, T, act, x0p)
    W = np.asarray(W, float)
    sigma_max = float(np.linalg.norm(W, 2))
    rho = float(np.max(np.abs(np.linalg.eigvals(W))))
    d = np.linalg.norm(xs - xps, axis=1)
    t = np.arange(T + 1)
    with np.errstate(over="ignore"):  # an infinite bound (Lip sigma_max > 1, long T) says nothing: fine
        bound = (act.lipschitz * sigma_max) ** t * d[0]
    scale = max(np.max(np.linalg.norm(xs, axis=1)), np.max(np.linalg.norm(xps, axis=1)),
                np.max(np.linalg.norm(inputs @ np.asarray(W_in, float).T, axis=1)))
    rounding = 4 * W.shape[0] * np.finfo(float).eps * (t + 1) * scale
    return Contraction(d, bound, rounding, sigma_max, rho, act.lipschitz)
