"""Numerical predictions for the scaffold as a reservoir (theory/01, 02, 03).

Prop. 1  depth unfolding: an echo state network x_{t+1} = phi(W x_t + W_in u) run
         T steps on a held input u is a weight-tied scaffold of depth T with bias
         b = W_in u; an untied scaffold (W_t drawn from (root seed, "layers.t")) is
         the non-autonomous ESN x_{t+1} = phi(W_t x_t + W_in u).
Prop. 2  signal propagation (Poole et al. 2016, Schoenholz et al. 2017): for
         h_{l+1} = W_l phi(h_l) + b_l with iid zero-mean W_ij of variance sigma_w^2 / N,
         q_{l+1} = sigma_w^2 E_z[phi(sqrt(q_l) z)^2] + sigma_b^2 (eq. 2.1), the
         correlation map (eq. 2.2) and chi_1 = sigma_w^2 E_z[phi'(sqrt(q*) z)^2] (eq. 2.3),
         all by Gauss-Hermite quadrature for any activation.
Prop. 3  spectra: Marchenko-Pastur (eq. 3.1), the circular law (eq. 3.2), and the
         echo-state contraction ||x_t - x'_t|| <= (Lip(phi) sigma_max(W))^t ||x_0 - x'_0|| (eq. 3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from numpy.polynomial.hermite_e import hermegauss
from numpy.polynomial.legendre import leggauss
from scipy import special
from torch import nn

from ..distributions import DistributionSpec, as_spec, layer_seed, rng_for, sample

Array = np.ndarray

# ============================================================================ activations


@dataclass(frozen=True)
class Activation:
    """An elementwise phi: numpy form, optional torch form, closed-form phi' and Lipschitz constant.

    ``dphi=None`` means phi' is taken by a central finite difference; ``torch_fn=None``
    means the activation cannot be put in a torch module; ``lipschitz=None`` means unknown.
    """

    name: str
    phi: Callable[[Array], Array]
    dphi: Callable[[Array], Array] | None = None
    torch_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    lipschitz: float | None = None

    def __call__(self, x: Array) -> Array:
        return self.phi(x)

    def derivative(self, x: Array) -> Array:
        """phi'(x): the closed form if given, else a central difference with step eps^(1/3) max(1, |x|)."""
        x = np.asarray(x, float)
        if self.dphi is not None:
            return self.dphi(x)
        h = np.cbrt(np.finfo(float).eps) * np.maximum(1.0, np.abs(x))
        return (self.phi(x + h) - self.phi(x - h)) / (2 * h)


def _relu(x: Array) -> Array:
    return np.maximum(x, 0.0)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("tanh", np.tanh, lambda x: 1.0 - np.tanh(x) ** 2, torch.tanh, 1.0),
        Activation("relu", _relu, lambda x: (x > 0).astype(float), torch.relu, 1.0),
        Activation("identity", lambda x: np.asarray(x, float), lambda x: np.ones_like(x, dtype=float),
                   lambda x: x, 1.0),
        Activation("erf", special.erf, lambda x: 2.0 / math.sqrt(math.pi) * np.exp(-x**2), torch.erf,
                   2.0 / math.sqrt(math.pi)),
        Activation("sin", np.sin, np.cos, torch.sin, 1.0),
    ]
}
_BY_FUNCTION = {np.tanh: "tanh", np.sin: "sin", special.erf: "erf", _relu: "relu"}

PhiLike = str | Activation | Callable[[Array], Array]


def as_activation(phi: PhiLike) -> Activation:
    """A name in ACTIVATIONS, an Activation, or any numpy callable (phi' by finite difference)."""
    if isinstance(phi, Activation):
        return phi
    if isinstance(phi, str):
        if phi not in ACTIVATIONS:
            raise ValueError(f"unknown activation {phi!r}; allowed: {', '.join(sorted(ACTIVATIONS))}")
        return ACTIVATIONS[phi]
    if callable(phi):
        known = _BY_FUNCTION.get(phi)  # type: ignore[call-overload]
        return ACTIVATIONS[known] if known else Activation(getattr(phi, "__name__", "custom"), phi)
    raise ValueError(f"phi must be an activation name, an Activation or a callable, got {phi!r}")


def _check_nonneg(name: str, v: float) -> float:
    if not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return float(v)


# ============================================================================ Prop. 1: unfolding


def _inputs(W_in: Array, u: Array, T: int) -> Array:
    """The per-step bias b_t = W_in u_t, shape (T, N): u held (d,) or a sequence (T, d)."""
    W_in, u = np.asarray(W_in, float), np.asarray(u, float)
    if u.ndim == 1:
        return np.broadcast_to(W_in @ u, (T, W_in.shape[0]))
    if u.ndim == 2 and u.shape[0] == T:
        return u @ W_in.T
    raise ValueError(f"u must be a held input (d,) or a sequence (T={T}, d), got shape {u.shape}")


def _weights(W: Array | Sequence[Array], T: int | None) -> list[Array]:
    """W (tied, needs T) or a list of T matrices W_t (untied)."""
    if isinstance(W, (np.ndarray, torch.Tensor)) and np.ndim(W) == 2:
        if T is None or not isinstance(T, (int, np.integer)) or T < 0:
            raise ValueError(f"a single (tied) W needs a depth T >= 0, got T={T!r}")
        return [np.asarray(W, float)] * int(T)
    Ws = [np.asarray(w, float) for w in W]
    if T is not None and T != len(Ws):
        raise ValueError(f"T={T} but {len(Ws)} matrices W_t were given")
    for t, w in enumerate(Ws):
        if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape != Ws[0].shape:
            raise ValueError(f"W_{t} must be square and all W_t of one shape, got {w.shape} (W_0: {Ws[0].shape})")
    return Ws


def esn_states(W: Array | Sequence[Array], W_in: Array, u: Array, T: int | None = None,
               phi: PhiLike = np.tanh, x0: Array | None = None) -> Array:
    """States x_0 .. x_T of x_{t+1} = phi(W_t x_t + W_in u_t) (Prop. 1), shape (T+1, N).

    W: one matrix (an autonomous ESN, tied; T required) or a list of T matrices (non-autonomous).
    u: a held input (d,) or an input sequence (T, d). x0 defaults to 0.
    """
    Ws = _weights(W, T)
    act = as_activation(phi)
    N = np.shape(W_in)[0]
    b = _inputs(W_in, u, len(Ws))
    x = np.zeros(N) if x0 is None else np.asarray(x0, float)
    if x.shape != (N,):
        raise ValueError(f"x0 must have shape ({N},), got {x.shape}")
    states = [x]
    for t, w in enumerate(Ws):
        x = act(w @ x + b[t])
        states.append(x)
    return np.stack(states)


class _Elementwise(nn.Module):
    def __init__(self, act: Activation) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act.torch_fn(x)  # type: ignore[misc]

    def extra_repr(self) -> str:
        return self.act.name


class UnfoldedScaffold(nn.Module):
    """A depth-T scaffold: layer t is ``layers.t`` = nn.Linear(N, N) (weight W_t, bias W_in u_t), then phi.

    ``forward(x0)`` is x_T; ``states(x0)`` stacks x_0 .. x_T. Its layer names match the
    toolkit's MLP (``layers\\.\\d+``), so ``scaffold()`` can replace them by ScaffoldLinear.
    """

    def __init__(self, linears: Sequence[nn.Linear], act: Activation) -> None:
        super().__init__()
        self.layers = nn.ModuleList(linears)
        self.phi = _Elementwise(act)

    def states(self, x0: torch.Tensor) -> torch.Tensor:
        xs = [x0]
        for layer in self.layers:
            xs.append(self.phi(layer(xs[-1])))
        return torch.stack(xs)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x0 = self.phi(layer(x0))
        return x0


def unfolded_scaffold(W: Array | Sequence[Array], W_in: Array, u: Array, phi: PhiLike = "tanh",
                      T: int | None = None, dtype: torch.dtype = torch.float64) -> UnfoldedScaffold:
    """Prop. 1: the feed-forward scaffold whose layer t computes x_{t+1} = phi(W_t x_t + W_in u_t).

    A single W (with T) gives the weight-tied scaffold (the autonomous ESN); a list of W_t
    the untied one (the non-autonomous ESN).
    """
    Ws = _weights(W, T)
    act = as_activation(phi)
    if act.torch_fn is None:
        raise ValueError(f"activation {act.name!r} has no torch form; use one of {', '.join(sorted(ACTIVATIONS))}")
    b = _inputs(W_in, u, len(Ws))
    linears = []
    for t, w in enumerate(Ws):
        lin = nn.Linear(w.shape[1], w.shape[0], dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(np.array(b[t])))
        lin.requires_grad_(False)
        linears.append(lin)
    return UnfoldedScaffold(linears, act)


def untied_weights(spec: DistributionSpec | str, N: int, T: int, root_seed: int) -> list[Array]:
    """W_t, t < T: float64 (N, N) draws seeded as a ScaffoldLinear named ``layers.t`` (Prop. 1).

    The seed is layer_seed(root_seed, "layers.t", "W_seed"): exactly the draw that
    ``scaffold()`` gives layer ``layers.t`` (before its cast to float32).
    """
    if not isinstance(N, (int, np.integer)) or N < 1:
        raise ValueError(f"width N must be an int >= 1, got {N!r}")
    if not isinstance(T, (int, np.integer)) or T < 0:
        raise ValueError(f"depth T must be an int >= 0, got {T!r}")
    spec = as_spec(spec)
    return [sample(spec, (N, N), layer_seed(root_seed, f"layers.{t}", "W_seed")) for t in range(T)]


# ============================================================================ Prop. 2: mean field

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


def finite_width_sd(q0: float, L: int, phi: PhiLike, sigma_w: float, sigma_b: float, N: int) -> Array:
    """Eq. (2.4): worst-case sd of log(measured q_l / q_l) at width N, l = 0 .. L.

    Layer l adds two zero-mean fluctuations: drawing W_l (the N rows are iid; a row's squared
    output has relative variance 2 for Gaussian pre-activations) and sampling phi(h) over N units
    (relative variance kappa_l = Var_z[phi(sqrt(q_l) z)^2] / E_z[phi(sqrt(q_l) z)^2]^2), plus the bias
    draw (2 sigma_b^4 / N). Worst case: the batch's inputs are parallel (one effective input).
    Independent layers add in quadrature, each carried on by the map's gain g = d log q_{l+1} / d log q_l.
    """
    if not isinstance(N, (int, np.integer)) or N < 1:
        raise ValueError(f"width N must be an int >= 1, got {N!r}")
    act = as_activation(phi)
    q = q_trajectory(q0, L, act, sigma_w, sigma_b)
    var = [0.0]
    for l in range(L):
        m2 = gaussian_expectation(lambda z: act(math.sqrt(q[l]) * z) ** 2)
        m4 = gaussian_expectation(lambda z: act(math.sqrt(q[l]) * z) ** 4)
        kappa = m4 / m2**2 - 1.0 if m2 > 0 else 0.0
        spread = sigma_w**2 * m2 * (math.sqrt(2.0) + math.sqrt(kappa)) + math.sqrt(2.0) * sigma_b**2
        s = 0.0 if q[l + 1] == 0 else spread / (math.sqrt(N) * q[l + 1])
        d = 1e-4 * q[l]  # central difference of the variance map in log q
        g = 0.0 if q[l] == 0 else (variance_map(q[l] + d, act, sigma_w, sigma_b)
                                   - variance_map(q[l] - d, act, sigma_w, sigma_b)) * q[l] / (2 * d * q[l + 1])
        var.append(g**2 * var[-1] + s**2)
    return np.sqrt(var)


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


# ============================================================================ Prop. 3: spectra


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
