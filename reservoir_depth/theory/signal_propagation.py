"""Prop. 2 (theory/02_signal_propagation.md): mean-field signal propagation through a random scaffold.

For h_{l+1} = W_l phi(h_l) + b_l with iid zero-mean W_ij of variance sigma_w^2 / N
(Poole et al. 2016, Schoenholz et al. 2017): q_{l+1} = sigma_w^2 E_z[phi(sqrt(q_l) z)^2] + sigma_b^2
(eq. 2.1), the correlation map (eq. 2.2), chi_1 = sigma_w^2 E_z[phi'(sqrt(q*) z)^2] (eq. 2.3), all by
Gauss-Hermite quadrature for any activation, and the finite-width spread of log q_l (eq. 2.4).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Mapping, Sequence

import numpy as np
from numpy.polynomial.hermite_e import hermegauss

from ..distributions import DistributionSpec, layer_seed, rng_for
from .activations import Array, PhiLike, _check_nonneg, as_activation
from .unfolding import untied_weights

# Even, so that no node sits on ReLU's kink at 0 and the symmetric halves give E[relu(z)^2] = 1/2 and
# E[relu'(z)^2] = 1/2 exactly; 200 is about the largest n for which numpy's hermegauss weights are finite.
GH_POINTS = 200


@lru_cache(maxsize=8)
def _gauss_hermite(n: int) -> tuple[Array, Array]:
    if not isinstance(n, (int, np.integer)) or not 2 <= n <= 256:
        raise ValueError(f"number of Gauss-Hermite points n must be an int in [2, 256], got {n!r}")
    return hermegauss(int(n))


def gaussian_expectation(f: Callable[[Array], Array], n: int = GH_POINTS) -> float:
    """E_z[f(z)], z ~ N(0, 1), by n-point Gauss-Hermite (probabilists') quadrature.

    Exact for polynomials of degree < 2n; for f(sqrt(q) z) with a feature of width ~1 (tanh)
    the error grows with q (measured in theory/02: 1e-8 at q = 4, 1e-5 at q = 10).
    """
    z, w = _gauss_hermite(n)
    return float(w @ f(z) / math.sqrt(2 * math.pi))


def gaussian_expectation_2d(f: Callable[[Array, Array], Array], n: int = GH_POINTS) -> float:
    """E[f(z1, z2)], z1, z2 iid N(0, 1), on the n x n tensor Gauss-Hermite grid."""
    z, w = _gauss_hermite(n)
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    return float(np.sum(np.outer(w, w) * f(z1, z2)) / (2 * math.pi))


def variance_map(q: float, phi: PhiLike, sigma_w: float, sigma_b: float = 0.0, n: int = GH_POINTS) -> float:
    """Eq. (2.1): q -> sigma_w^2 E_z[phi(sqrt(q) z)^2] + sigma_b^2."""
    q, sigma_w, sigma_b = _check_nonneg("q", q), _check_nonneg("sigma_w", sigma_w), _check_nonneg("sigma_b", sigma_b)
    act = as_activation(phi)
    return sigma_w**2 * gaussian_expectation(lambda z: act(math.sqrt(q) * z) ** 2, n) + sigma_b**2


def q_trajectory(q0: float, L: int, phi: PhiLike, sigma_w: float, sigma_b: float = 0.0) -> Array:
    """q_0 .. q_L of eq. (2.1), shape (L+1,)."""
    if not isinstance(L, (int, np.integer)) or L < 0:
        raise ValueError(f"depth L must be an int >= 0, got {L!r}")
    q = [_check_nonneg("q0", q0)]
    for _ in range(L):
        q.append(variance_map(q[-1], phi, sigma_w, sigma_b))
    return np.array(q)


def q_star(phi: PhiLike, sigma_w: float, sigma_b: float = 0.0, q0: float = 1.0, rtol: float = 1e-12,
           max_iter: int = 10_000, q_max: float = 1e12) -> float:
    """The fixed point q* of eq. (2.1) reached by iterating from q0 (the stable one a deep net sees).

    Stops when |q_{n+1} - q_n| <= rtol (q_n + rtol). Raises ValueError if q exceeds q_max or
    is not finite (the map diverges, e.g. ReLU with sigma_w^2 > 2), or after max_iter steps
    (a critical, algebraically slow approach).
    """
    act = as_activation(phi)
    q = _check_nonneg("q0", q0)
    for _ in range(max_iter):
        q_next = variance_map(q, act, sigma_w, sigma_b)
        if not math.isfinite(q_next) or q_next > q_max:
            raise ValueError(f"the variance map diverges for phi={act.name}, sigma_w={sigma_w!r}, sigma_b={sigma_b!r} "
                             f"from q0={q0!r}: q reached {q_next:.3g} > q_max={q_max:.3g}; no finite fixed point")
        if abs(q_next - q) <= rtol * (q + rtol):
            return q_next
        q = q_next
    raise ValueError(f"q* not reached in max_iter={max_iter} steps for phi={act.name}, sigma_w={sigma_w!r}, "
                     f"sigma_b={sigma_b!r} (last q={q:.6g}); near chi_1 = 1 the approach is slow: raise max_iter")


def correlation_map(c: float, phi: PhiLike, sigma_w: float, sigma_b: float = 0.0, q: float | None = None,
                    n: int = GH_POINTS) -> float:
    """Eq. (2.2): c -> (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / q, (u1, u2) of variance q, correlation c.

    q defaults to q* (q_star); u1 = sqrt(q) z1, u2 = sqrt(q) (c z1 + sqrt(1 - c^2) z2).
    """
    if not (-1.0 <= c <= 1.0):
        raise ValueError(f"correlation c must lie in [-1, 1], got {c!r}")
    act = as_activation(phi)
    q = q_star(act, sigma_w, sigma_b) if q is None else _check_nonneg("q", q)
    if q == 0:
        raise ValueError(f"q = 0 (phi={act.name}, sigma_w={sigma_w!r}, sigma_b={sigma_b!r}): "
                         "correlations are undefined")
    s, k = math.sqrt(q), math.sqrt(max(0.0, 1.0 - c * c))
    e = gaussian_expectation_2d(lambda z1, z2: act(s * z1) * act(s * (c * z1 + k * z2)), n)
    return (sigma_w**2 * e + sigma_b**2) / q


def chi_1(phi: PhiLike, sigma_w: float, sigma_b: float = 0.0, q: float | None = None, n: int = GH_POINTS) -> float:
    """Eq. (2.3): chi_1 = sigma_w^2 E_z[phi'(sqrt(q*) z)^2], the slope of the c-map at c = 1.

    chi_1 < 1: ordered (nearby inputs converge); chi_1 > 1: chaotic. q defaults to q*.
    """
    act = as_activation(phi)
    q = q_star(act, sigma_w, sigma_b) if q is None else _check_nonneg("q", q)
    return _check_nonneg("sigma_w", sigma_w) ** 2 * gaussian_expectation(
        lambda z: act.derivative(math.sqrt(q) * z) ** 2, n)


def _pair(act, s: float, c: float, f: Callable[[Array, Array], Array]) -> float:
    """E[f(phi(u1), phi(u2))], (u1, u2) Gaussian with variance s^2 and correlation c."""
    k = math.sqrt(max(0.0, 1.0 - c * c))
    return gaussian_expectation_2d(lambda z1, z2: f(act(s * z1), act(s * (c * z1 + k * z2))))


def finite_width_sd(q0: float, L: int, phi: PhiLike, sigma_w: float, sigma_b: float, N: int,
                    batch: int = 1, kurtosis: float = 0.0) -> Array:
    """Eq. (2.4): sd of log(measured q_l / q_l) at width N, l = 0 .. L (0 at l = 0).

    One input: given layer l, the N units of h_{l+1} are iid N(0, v_{l+1}), v_{l+1} = sigma_w^2
    mean_i phi(h_{l,i})^2 + sigma_b^2. v_{l+1} scatters around q_{l+1} because mean_i phi(h_{l,i})^2
    averages N terms (relative variance kappa_l / N), and that scatter is carried on by the gain
    g_l = d log q_{l+1} / d log q_l; the measured q_l = mean_i h_{l,i}^2 scatters around v_l by a chi^2_N / N
    factor (relative variance 2 / N) that is *not* carried on (the next v depends on phi(h_l), already
    counted): sd_l^2 = V_l + 2 / N, V_{l+1} = g_l^2 V_l + sigma_w^4 Var(phi^2)_l / (N q_{l+1}^2), V_0 = 0.
    The input has mean square exactly q0, so at l = 0 only the part of Var(phi^2) not explained by h^2
    counts (0 for the identity).

    ``batch`` = B > 1: q_l averaged over B inputs of independent random directions. Variance
    (V_l + 2/N) / B + (1 - 1/B) (C_l + 2 E[c_l^2] / N), where C_l is V_l's covariance for a pair of inputs
    (Cov(phi(u_a)^2, phi(u_b)^2) in place of Var(phi^2)) and c_l the pair's correlation: its mean follows
    the correlation map at the layer's q_l from c_0 = 0, its scatter variance n_{l+1} = c'(c_l)^2 n_l + 1/N
    from n_0 = 1/N (each layer's N rows add O(1/N)). batch = 1 is also the worst case of a batch of
    parallel inputs. ``kurtosis``: the excess kurtosis k4 of W's entries (0 for a Gaussian family). Two
    inputs then share a row's fourth cumulant, which adds k4 / N^2 to the pair terms of both
    fluctuations (times gamma_l^2, gamma = d log E phi^2 / d log q, for the carried one); for one input it
    is O(1/N^2) against 2/N and is left out.
    """
    if not isinstance(N, (int, np.integer)) or N < 1:
        raise ValueError(f"width N must be an int >= 1, got {N!r}")
    if not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if not (isinstance(kurtosis, (int, float, np.floating, np.integer)) and math.isfinite(kurtosis) and kurtosis >= -2):
        raise ValueError(f"kurtosis (excess, of W's entries) must be a finite number >= -2, got {kurtosis!r}")
    act = as_activation(phi)
    sigma_w, sigma_b = _check_nonneg("sigma_w", sigma_w), _check_nonneg("sigma_b", sigma_b)
    q = q_trajectory(q0, L, act, sigma_w, sigma_b)
    V = C = 0.0
    c, noise = 0.0, 1.0 / N  # mean correlation of two independent random directions, and its variance
    k4_single = k4_pair = 0.0  # W_{l-1}'s fourth-cumulant weights (none before the first layer)
    sd = [0.0]
    for l in range(L):
        s = math.sqrt(q[l])
        m2 = gaussian_expectation(lambda z: act(s * z) ** 2)
        var_phi2 = gaussian_expectation(lambda z: act(s * z) ** 4) - m2**2
        if l == 0 and q[0] > 0:  # the input's mean square is fixed: remove the h^2 component of phi^2
            cov = gaussian_expectation(lambda z: act(s * z) ** 2 * (q[0] * z * z - q[0]))
            var_phi2 -= cov**2 / (2 * q[0] ** 2)
        e2 = np.mean([_pair(act, s, min(1.0, max(-1.0, c + e)), lambda u, v: u**2 * v**2)
                      for e in (-math.sqrt(noise), math.sqrt(noise))])  # E over c's scatter, 2nd order
        cov_pair = e2 - m2**2
        if l > 0 and kurtosis:  # the cumulant of W_{l-1} moves phi(h_l)^2 by (q dm2/dq) per unit of h^2
            gq = (gaussian_expectation(lambda z: act(s * math.sqrt(1.0001) * z) ** 2)
                  - gaussian_expectation(lambda z: act(s * math.sqrt(0.9999) * z) ** 2)) / 0.0002
            var_phi2 += kurtosis * gq**2 * k4_single / N
            cov_pair += kurtosis * gq**2 * k4_pair / N
        if m2 > 0:  # weights of W_l's cumulant: sum_j x_j^4 / |x|^4 and sum_j x_aj^2 x_bj^2 / (|x_a| |x_b|)^2, times N
            k4_single, k4_pair = (var_phi2 + m2**2) / m2**2, e2 / m2**2
        d = 1e-4 * q[l]  # central difference of the variance map in log q
        g = 0.0 if q[l] == 0 else (variance_map(q[l] + d, act, sigma_w, sigma_b)
                                   - variance_map(q[l] - d, act, sigma_w, sigma_b)) * q[l] / (2 * d * q[l + 1])
        if q[l + 1] == 0:
            sd.append(0.0)
            continue
        V = g**2 * V + sigma_w**4 * max(var_phi2, 0.0) / (N * q[l + 1] ** 2)
        C = g**2 * C + sigma_w**4 * cov_pair / (N * q[l + 1] ** 2)
        c_map = lambda c0: (sigma_w**2 * _pair(act, s, c0, lambda u, v: u * v) + sigma_b**2) / q[l + 1]  # noqa: E731
        h = 1e-3
        slope = (c_map(min(c + h, 1.0)) - c_map(max(c - h, -1.0))) / (min(c + h, 1.0) - max(c - h, -1.0))
        c, noise = min(1.0, c_map(c)), slope**2 * noise + 1.0 / N  # each layer's rows add O(1/N) to the variance
        ce2 = min(1.0, c * c + noise)
        single = V + (2.0 + kurtosis * k4_single / N) / N
        pair = C + (2.0 * ce2 + kurtosis * k4_pair / N) / N
        sd.append(math.sqrt(max(single / batch + (1.0 - 1.0 / batch) * pair, 0.0)))
    return np.array(sd)


def input_batch(N: int, batch: int, q0: float, seed: int) -> Array:
    """h_0: (batch, N) Gaussian directions scaled so that every row has mean square exactly q0."""
    g = rng_for(layer_seed(seed, "inputs")).standard_normal((batch, N))
    return g * np.sqrt(_check_nonneg("q0", q0) * N) / np.linalg.norm(g, axis=1, keepdims=True)


def propagate_q(Ws: Sequence[Array], phi: PhiLike, h0: Array, biases: Sequence[Array] | None = None) -> Array:
    """Measured q_l = mean of h_l^2 over batch and units for h_{l+1} = phi(h_l) W_l^T + b_l, shape (L+1,)."""
    act = as_activation(phi)
    h, q = np.asarray(h0, float), [float(np.mean(np.square(h0)))]
    for l, w in enumerate(Ws):
        h = act(h) @ w.T + (0.0 if biases is None else biases[l])
        q.append(float(np.mean(h * h)))
    return np.array(q)


def empirical_q(spec_name: str, widths: Sequence[int], L: int, phi: PhiLike, sigma_w: float, seed: int, *,
                sigma_b: float = 0.0, params: Mapping | None = None, batch: int = 64, q0: float = 1.0,
                center: bool = False) -> dict[int, Array]:
    """Measured q_0 .. q_L per width N (Prop. 2): a batch of inputs with q_0 = q0 through L layers.

    W_l = sample(DistributionSpec(spec_name, params, "fan_in", gain=sigma_w), (N, N), seed_l), seeded
    as untied_weights; b_l ~ N(0, sigma_b^2) per unit, shared by the batch. ``center=True``
    subtracts each W_l's mean entry (the control that removes a rank-one mean component).
    """
    spec = DistributionSpec(spec_name, dict(params or {}), scaling="fan_in", gain=_check_nonneg("sigma_w", sigma_w))
    sigma_b = _check_nonneg("sigma_b", sigma_b)
    out = {}
    for N in widths:
        Ws = untied_weights(spec, N, L, seed)
        if center:
            Ws = [w - w.mean() for w in Ws]
        bs = [sigma_b * rng_for(layer_seed(seed, f"layers.{l}", "bias")).standard_normal(N) for l in range(L)]
        out[int(N)] = propagate_q(Ws, phi, input_batch(N, batch, q0, seed), bs)
    return out


# The i.i.d., zero-mean, finite-variance families of the registry: the assumptions of Props 2 and 3
# (name, parameters). Excluded: cauchy (no variance), exponential / lognormal / beta / erdos_renyi
# (non-zero mean), student_t with df <= 4 (no fourth moment, the edge of Prop. 3 fails).
FINITE_VARIANCE_FAMILIES: tuple[tuple[str, dict], ...] = (
    ("normal", {}), ("uniform", {}), ("laplace", {}), ("binary", {}), ("student_t", {"df": 5.0}),
    ("truncated_normal", {}), ("logistic", {}), ("sparse_normal", {}), ("quantized_normal", {}))
