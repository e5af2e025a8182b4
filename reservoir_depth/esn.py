"""Echo-state networks: the reservoir family at r = 0 as reservoir computing judges it.

Theory as code:
- memory capacity (Jaeger 2001, "Short term memory in echo state networks", GMD report 152):
  MC = sum_k MC_k, MC_k = corr^2(u(t - k), y_k(t)), y_k the best linear reconstruction of the input
  k steps back from the state h_t (a ridge readout fitted on one half of the run, MC_k read on the
  other). Our h_t has already read u(t), so delays run k = 0, 1, ...: a linear reservoir
  h_t = W h_{t-1} + w u(t) with the pair (W, w) controllable has MC = N exactly over all delays
  (``linear_memory_curve``: MC_k = c_k^T C^{-1} c_k, c_k = W^k w, C = sum_k c_k c_k^T, whose sum is
  tr(C^{-1} C) = N); any reservoir of N units has MC <= N (Jaeger 2001).
- the echo-state property (Jaeger 2001; Yildiz, Jaeger & Kiebel 2012): states forget their
  initial condition. Checked empirically (two trajectories from different h_0 under the same input
  contract) beside the two algebraic conditions of the leaky update
  h_t = (1 - a) h_{t-1} + a tanh(u_t + W h_{t-1}):
  sufficient: its Lipschitz constant in h, (1 - a) + a sigma_max(W), is < 1 (i.e. sigma_max(W) < 1);
  necessary under zero input and zero bias: the spectral radius of (1 - a) I + a W is < 1 (else the
  zero state is unstable).

What a reservoirpy user expects:
- ``ESN(...).fit(X, y)``: one call, ridge readout (readout.py), no gradient epochs; ``predict`` (one
  step, teacher forced), ``generate(n_steps, warmup)`` (closed loop, train.generate), ``score``
  (NRMSE); float64 by default.
- ``search``: a grid over the reservoir's knobs (rho, leak, input and bias scaling, ridge lambda),
  each configuration scored on validation windows by the median over several reservoir draws;
  ``grid_search`` is the protocol for any scorer (the ESN comparison runs reservoirpy through it).
- forecast measures: ``valid_prediction_time`` (Lyapunov times until the normalised error first
  exceeds a threshold), ``horizon_nrmse`` (Jaeger & Haas 2004's NRMSE_84 at any horizon).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .checks import is_number
from .models import build, scaffold_defaults
from .readout import COND_MAX, Gram, check_ridge
from .scaffold import ScaffoldConfig, merge, scaffold
from .tasks import target_std
from .train import TRAIN_DTYPES, free_run, generate

KNOBS = ("rho", "leak", "input_scaling", "bias_scaling")  # the reservoir's knobs a search tunes (and ridge)
GRID: dict[str, list[float]] = {"rho": [0.6, 0.9, 1.2], "leak": [0.1, 0.3, 1.0], "input_scaling": [0.1, 0.3, 1.0],
                                "bias_scaling": [0.0, 0.3, 1.0]}
RIDGES = (1e-8, 1e-6, 1e-4, 1e-2)  # lambda: one pass over the states serves them all
SELECT = ("nrmse", "nrmse_free")  # validation metrics a search can select on


def check_dtype(dtype: str) -> torch.dtype:
    """The torch dtype named ``dtype`` (one of train.TRAIN_DTYPES), refused otherwise."""
    if dtype not in TRAIN_DTYPES:
        raise ValueError(f"dtype must be one of {TRAIN_DTYPES}, got {dtype!r}")
    return getattr(torch, dtype)


# ----------------------------------------------------------------------------- memory capacity


def memory_curve(H: np.ndarray | torch.Tensor, u: np.ndarray | torch.Tensor, k_max: int, washout: int = 0,
                 ridge: float = 1e-10) -> np.ndarray:
    """MC_k for k = 0 .. k_max - 1 from states H (T, N) driven by the scalar input u (T,) (H[t] has read u[t]).

    Rows t >= washout + k_max - 1 are used; the ridge readouts of every delay (one solve) are fitted on
    the first half of them and MC_k = corr^2(u(t - k), y_k(t)) is read on the second half."""
    H, u = np.asarray(H, dtype=np.float64), np.asarray(u, dtype=np.float64).reshape(-1)
    if H.ndim != 2 or len(H) != len(u):
        raise ValueError(f"states must be (T, N) and the input (T,), got {H.shape} and {u.shape}")
    if not (isinstance(k_max, int) and k_max >= 1):
        raise ValueError(f"k_max must be an int >= 1, got {k_max!r}")
    t0 = washout + k_max - 1
    if len(H) - t0 < 20:
        raise ValueError(f"{len(H)} steps leave {len(H) - t0} rows after washout {washout} and k_max {k_max}; "
                         f"at least 20 are needed")
    Y = np.stack([u[t0 - k:len(u) - k] for k in range(k_max)], 1)  # Y[:, k] = u(t - k)
    Hs, n = H[t0:], (len(H) - t0) // 2
    W, c = Gram().add(torch.from_numpy(Hs[:n]), torch.from_numpy(Y[:n])).solve(ridge, warn=False)
    P = Hs[n:] @ W.numpy().T + c.numpy()
    Pc, Yc = P - P.mean(0), Y[n:] - Y[n:].mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = (Pc * Yc).sum(0) ** 2 / ((Pc ** 2).sum(0) * (Yc ** 2).sum(0))
    return np.nan_to_num(r2)  # a constant reconstruction carries no memory


def linear_memory_curve(W: np.ndarray, w: np.ndarray, k_max: int) -> np.ndarray:
    """The exact MC_k, k = 0 .. k_max - 1, of the linear reservoir h_t = W h_{t-1} + w u(t) under i.i.d. input:
    MC_k = c_k^T C^{-1} c_k with c_k = W^k w and C = sum_k c_k c_k^T = W C W^T + w w^T (spectral radius of W < 1)."""
    from scipy.linalg import solve_discrete_lyapunov

    W, w = np.asarray(W, dtype=np.float64), np.asarray(w, dtype=np.float64).reshape(-1)
    rho = max(abs(np.linalg.eigvals(W)))
    if not rho < 1:
        raise ValueError(f"the linear reservoir needs spectral radius < 1 (its states diverge otherwise), got {rho:.4g}")
    C = solve_discrete_lyapunov(W, np.outer(w, w))
    Ci_c, c, out = np.linalg.inv(C), w.copy(), np.empty(k_max)
    for k in range(k_max):
        out[k] = c @ Ci_c @ c
        c = W @ c
    return out


@dataclass
class MemoryCapacity:
    """MC (``total``) and its curve MC_k over delays k = 0 .. k_max - 1 (``curve``) of a reservoir of ``units``."""

    total: float
    curve: np.ndarray
    units: int


@torch.no_grad()
def memory_capacity(model: nn.Module, n_steps: int = 4000, k_max: int | None = None, washout: int = 200,
                    ridge: float = 1e-10, seed: int = 0) -> MemoryCapacity:
    """MC of a reservoir (``model.states``, d_in = 1) driven by u(t) ~ U[-1, 1] i.i.d. from ``seed``;
    delays up to k_max (default 2 x units). See ``memory_curve``."""
    units, d_in = model.units, model.d_in
    if d_in != 1:
        raise ValueError(f"memory capacity is defined for a scalar input; the reservoir has d_in = {d_in}")
    k_max = 2 * units if k_max is None else k_max
    u = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, n_steps))
    p = next(model.parameters())
    H = model.states(u.to(p).reshape(1, -1, 1))[0]
    curve = memory_curve(H.double().cpu().numpy(), u.numpy(), k_max, washout, ridge)
    return MemoryCapacity(float(curve.sum()), curve, units)


# ----------------------------------------------------------------------------- the echo-state property


def recurrent_matrix(model: nn.Module) -> torch.Tensor:
    """The effective recurrent matrix W (units, units) of a reservoir, scaffolded (beta W_seed + s B A) or not."""
    return model.W.weight.detach().double().cpu()


@dataclass
class EchoState:
    """The echo-state property of a leaky reservoir (leak a), checked three ways (module docstring)."""

    rho: float  # spectral radius of W
    sigma_max: float  # largest singular value of W
    rho_leaky: float  # spectral radius of (1 - a) I + a W
    lipschitz: float  # (1 - a) + a sigma_max: the update's Lipschitz bound in h
    distances: np.ndarray = field(repr=False)  # ||h_t - h'_t|| for t = 0 .. n_steps (t = 0: the initial states)
    tol: float = 1e-6

    @property
    def contraction(self) -> float:
        """||h_T - h'_T|| / ||h_0 - h'_0||."""
        return float(self.distances[-1] / self.distances[0])

    @property
    def sufficient(self) -> bool:
        return self.lipschitz < 1

    @property
    def necessary(self) -> bool:
        return self.rho_leaky < 1

    @property
    def empirical(self) -> bool:
        return self.contraction < self.tol


@torch.no_grad()
def echo_state(model: nn.Module, x: torch.Tensor | None = None, n_steps: int = 1000, seed: int = 0,
               tol: float = 1e-6) -> EchoState:
    """Drive ``model.states`` from two initial states h_0, h'_0 ~ U[-1, 1]^units (from ``seed``) with the same input
    ``x`` (1, T, d_in) (default: n_steps of U[-1, 1] i.i.d.) and report the distance between the two trajectories
    beside rho(W), sigma_max(W) and rho((1 - a) I + a W)."""
    g = torch.Generator().manual_seed(seed)
    p = next(model.parameters())
    if x is None:
        x = torch.rand(1, n_steps, model.d_in, generator=g, dtype=torch.float64) * 2 - 1
    h0 = (torch.rand(2, model.units, generator=g, dtype=torch.float64) * 2 - 1).to(p)
    H = model.states(x.to(p).expand(2, -1, -1), h0)
    d = torch.cat([(h0[0] - h0[1]).norm().reshape(1), (H[0] - H[1]).norm(dim=-1)]).double().cpu().numpy()
    W, a = recurrent_matrix(model), model.leak
    eff = (1 - a) * torch.eye(len(W), dtype=W.dtype) + a * W
    sigma = float(torch.linalg.matrix_norm(W, ord=2))
    return EchoState(rho=float(torch.linalg.eigvals(W).abs().max()), sigma_max=sigma,
                     rho_leaky=float(torch.linalg.eigvals(eff).abs().max()), lipschitz=(1 - a) + a * sigma,
                     distances=d, tol=tol)


# ----------------------------------------------------------------------------- forecast measures


def _per_step(pred: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
              std: float | np.ndarray) -> np.ndarray:
    """sqrt(mean_d (pred - y)^2 / std_d^2) per window and step: (n, H)."""
    pred, y = np.asarray(pred, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if pred.shape != y.shape or pred.ndim != 3:
        raise ValueError(f"predictions and targets must share a shape (windows, horizon, d), got {pred.shape} and "
                         f"{y.shape}")
    return np.sqrt((((pred - y) / np.asarray(std, dtype=np.float64)) ** 2).mean(-1))


def valid_prediction_time(pred, y, std, dt: float, lyapunov: float, threshold: float = 0.4) -> np.ndarray:
    """Per window (n,): the time, in Lyapunov times (t dt lambda_max), of the first step whose normalised error
    sqrt(mean_d (y_hat - y)^2 / std_d^2) exceeds ``threshold``; the whole horizon when none does. pred and y
    (n, H, d) are closed-loop continuations, step 0 the first forecast."""
    e = _per_step(pred, y, std)
    over = e > threshold
    first = np.where(over.any(1), over.argmax(1), e.shape[1])
    return first * dt * lyapunov


def horizon_nrmse(pred, y, std: float, k: int) -> float:
    """NRMSE_k (Jaeger & Haas 2004): sqrt(mean over windows of (y_hat - y)^2 at horizon k) / std, pooled over
    outputs; pred and y (n, H, d) closed-loop continuations, step 0 at horizon 1."""
    pred, y = np.asarray(pred, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not 1 <= k <= pred.shape[1]:
        raise ValueError(f"horizon k must be in [1, {pred.shape[1]}] (the continuation's length), got {k!r}")
    return float(np.sqrt(((pred[:, k - 1] - y[:, k - 1]) ** 2).mean()) / std)


# ----------------------------------------------------------------------------- one-call fit


def reservoir(d_in: int, n_out: int, units: int = 200, rho: float = 0.9, leak: float = 0.3,
              input_scaling: float = 1.0, bias_scaling: float = 1.0, seed: int = 0,
              dtype: str = "float64", spec: Mapping[str, Any] | None = None) -> nn.Module:
    """Our reservoir at r = 0, merged (B = 0, beta = 1: the plain module holding W_seed): W ~ N(0, 1) rescaled
    to spectral radius rho, W_in ~ N(0, 1 / d_in) (``spec``, a DistributionSpec dict, replaces this draw),
    b ~ U(-1/sqrt(d_in), 1/sqrt(d_in)), all from ``seed``."""
    from .distributions import DistributionSpec

    model = build("reservoir", seed=seed, d_in=d_in, n_out=n_out, units=units, rho=rho, leak=leak,
                  input_scaling=input_scaling, bias_scaling=bias_scaling)
    extra = {} if spec is None else {"spec": DistributionSpec(**spec)}
    model = merge(scaffold(model, ScaffoldConfig(**scaffold_defaults(model), r=0, root_seed=seed, **extra)))
    return model.to(check_dtype(dtype))


def _windows(a: np.ndarray | torch.Tensor, what: str, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    """(n, T, d) tensor of ``dtype`` from (T, d) or (n, T, d); and whether the input was one series."""
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
    if t.dim() not in (2, 3) or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{what} must be a float array (T, d) or (n windows, T, d), got {t.dtype} of shape "
                         f"{tuple(t.shape)}")
    if not torch.isfinite(t.double()).all():
        raise ValueError(f"{what} holds NaN or inf")
    return (t.unsqueeze(0) if t.dim() == 2 else t).to(dtype), t.dim() == 2


def _like(out: torch.Tensor, single: bool, ref: Any) -> Any:
    out = out[0] if single else out
    return out if isinstance(ref, torch.Tensor) else out.numpy()


class ESN:
    """An echo-state network in one call: our reservoir at r = 0 (``reservoir``) with the ridge readout.

        esn = ESN(units=200, rho=0.9, leak=0.3, ridge=1e-6, seed=0).fit(X, y, washout=50)
        esn.predict(X_test)                  # one step ahead, reading the true inputs
        esn.generate(500, warmup=X_test[:100])  # closed loop: 500 steps fed back after the warmup

    X (T, d_in) or (n windows, T, d_in), y likewise with d_out; numpy or torch (results come back as
    given). Fitted: ``model_`` (the reservoir, its readout solved), ``cond_`` (the condition number of
    the ridge system; a warning above readout.COND_MAX), ``n_features_in_``."""

    def __init__(self, units: int = 200, rho: float = 0.9, leak: float = 0.3, input_scaling: float = 1.0,
                 bias_scaling: float = 1.0, ridge: float = 1e-6, seed: int = 0, dtype: str = "float64") -> None:
        self.units, self.rho, self.leak = units, rho, leak
        self.input_scaling, self.bias_scaling, self.ridge = input_scaling, bias_scaling, ridge
        self.seed, self.dtype = seed, dtype

    def fit(self, X, y, washout: int = 0) -> "ESN":
        dtype = check_dtype(self.dtype)
        check_ridge(self.ridge)
        X, _ = _windows(X, "X", dtype)
        y, _ = _windows(y, "y", dtype)
        if X.shape[:2] != y.shape[:2]:
            raise ValueError(f"X and y must have as many windows and steps, got {tuple(X.shape)} and {tuple(y.shape)}")
        if not (isinstance(washout, int) and 0 <= washout < X.shape[1]):
            raise ValueError(f"washout must be an int in [0, T) with T = {X.shape[1]}, got {washout!r}")
        self.model_ = reservoir(X.shape[-1], y.shape[-1], self.units, self.rho, self.leak, self.input_scaling,
                                self.bias_scaling, self.seed, self.dtype)
        with torch.no_grad():
            gram = Gram().add(self.model_.states(X)[:, washout:], y[:, washout:])
            W, c = gram.solve(self.ridge)
            self.model_.readout.weight.copy_(W), self.model_.readout.bias.copy_(c)
        self.cond_ = gram.condition(self.ridge)
        self.n_features_in_ = X.shape[-1]
        return self

    def _fitted(self) -> nn.Module:
        if not hasattr(self, "model_"):
            raise RuntimeError("this ESN is not fitted yet: call fit(X, y) first")
        return self.model_

    @torch.no_grad()
    def predict(self, X):
        """One-step predictions: y_hat_t = W_out h_t + c, h_t driven by the true inputs from a zero state."""
        m = self._fitted()
        Xt, single = _windows(X, "X", check_dtype(self.dtype))
        return _like(m(Xt), single, X)

    @torch.no_grad()
    def generate(self, n_steps: int, warmup):
        """Closed loop: read ``warmup`` (T_w, d) or (n, T_w, d) teacher-forced, then feed each prediction back
        as the next input for ``n_steps`` steps; returns the n_steps predictions (the first forecasts the step
        after the warmup). Needs d_out = d_in (a series forecast from its own past)."""
        m = self._fitted()
        W, single = _windows(warmup, "warmup", check_dtype(self.dtype))
        return _like(generate(m, W, n_steps), single, warmup)

    def score(self, X, y, washout: int = 0) -> float:
        """One-step NRMSE = RMSE / std(y) over steps t >= washout (tasks.Forecasting's)."""
        y_t, _ = _windows(y, "y", torch.float64)
        pred = torch.as_tensor(np.asarray(self.predict(X))).double()
        pred = pred.unsqueeze(0) if pred.dim() == 2 else pred
        return math.sqrt(float(((pred[:, washout:] - y_t[:, washout:]) ** 2).mean())) / target_std(y_t, washout)


# ----------------------------------------------------------------------------- hyper-parameter search


@dataclass
class Search:
    """A grid search's record: ``table`` (one row per configuration and lambda: the median of each validation
    metric over the draws, how many draws were finite, the largest condition number), ``best`` (the chosen
    configuration, ridge included), ``select`` (the metric that chose it), ``seeds`` and ``edges`` (axes whose
    chosen value sits on an edge of the grid: widen them before trusting the choice); ``score`` the chosen
    configuration's median validation metric."""

    table: Any
    best: dict[str, float]
    score: float
    select: str
    seeds: tuple[int, ...]
    edges: list[str]


BOUNDS: dict[str, tuple[float, float]] = {"leak": (0.0, 1.0), "bias_scaling": (0.0, math.inf),
                                         "connectivity": (0.0, 1.0)}  # a choice at a bound is final


def _beyond(values: Sequence[float], v: float, lo: float, hi: float) -> float | None:
    """One step past the edge value v of the sorted ``values`` (geometric; arithmetic from 0), clamped to
    [lo, hi]; None when v is inside, or at a bound."""
    if len(values) < 2 or v in (lo, hi) or v not in (values[0], values[-1]):
        return None
    a, b = (values[0], values[1]) if v == values[0] else (values[-1], values[-2])
    new = a * a / b if a > 0 and b > 0 else 2 * a - b
    new = min(max(new, lo), hi)
    return None if new in values else new


def grid_search(score: Callable[[dict[str, float], int, Sequence[float]], list[dict[str, float]]],
                grid: Mapping[str, Sequence[float]], ridges: Sequence[float], seeds: Sequence[int],
                select: str, extend: int = 0, bounds: Mapping[str, tuple[float, float]] = BOUNDS) -> Search:
    """Score every point of ``grid`` (product of its axes) on every draw ``seeds`` and choose the point and lambda
    with the smallest median of ``select`` over the draws. ``score(config, seed, ridges)`` returns one dict per
    lambda holding ``select`` and "cond" (the ridge system's condition number). A lambda whose solve is
    ill-conditioned on any draw (cond > readout.COND_MAX) is not eligible; a diverged draw (NaN, inf) counts as
    inf in the median. With ``extend`` > 0, a choice on an edge of a numeric axis (not at its bound in
    ``bounds``; default (0, inf)) adds one step beyond it, scored from the chosen point with the other knobs
    fixed, and the choice is made again, up to ``extend`` times."""
    import pandas as pd

    if len(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct reservoir draws (>= 1; >= 3 for a median that means something), "
                         f"got {list(seeds)!r}")
    for lam in ridges:
        check_ridge(lam)
    axes, rows = list(grid), []

    def add(cfg: dict[str, float]) -> None:
        per_seed = [score(cfg, s, ridges) for s in seeds]
        for i, lam in enumerate(ridges):
            got = [p[i] for p in per_seed]
            vals = np.array([v[select] if math.isfinite(v[select]) else math.inf for v in got])
            row = {**cfg, "ridge": lam, "cond": max(v["cond"] for v in got), "finite": int(np.isfinite(vals).sum())}
            for m in got[0]:
                if m != "cond":
                    row[m] = float(np.median([v[m] if math.isfinite(v[m]) else math.inf for v in got]))
            rows.append(row)

    def choose():
        table = pd.DataFrame(rows)
        ok = table[(table["cond"] <= COND_MAX) & np.isfinite(table[select])]
        if ok.empty:
            raise ValueError(f"no configuration of the grid has a finite median {select} with a well-conditioned "
                             f"ridge solve (cond <= {COND_MAX:g}); widen the grid or raise the ridge lambdas")
        return table, ok, ok.loc[ok[select].idxmin()]

    for point in itertools.product(*(grid[k] for k in axes)):
        add(dict(zip(axes, point)))
    values = {k: sorted(grid[k]) for k in axes}
    for _ in range(extend):
        _, _, best = choose()
        grown = False
        for k in axes:
            if not all(is_number(v) for v in values[k]):
                continue
            new = _beyond(values[k], best[k], *bounds.get(k, (0.0, math.inf)))
            if new is not None:
                values[k] = sorted({*values[k], new})
                add({**{a: best[a] for a in axes}, k: new})
                grown = True
        if not grown:
            break
    table, ok, best = choose()
    best_cfg = {k: float(best[k]) for k in (*axes, "ridge")}
    eligible = {**values, "ridge": sorted(set(ok["ridge"]))}
    edges = [k for k, v in eligible.items() if len(v) > 1 and best_cfg[k] in (min(v), max(v))
             and best_cfg[k] not in bounds.get(k, ())]
    return Search(table, best_cfg, float(best[select]), select, tuple(seeds), edges)


def esn_scores(X_fit: torch.Tensor, y_fit: torch.Tensor, X_val: torch.Tensor, y_val: torch.Tensor, washout: int,
               config: Mapping[str, float], seed: int, ridges: Sequence[float], free: bool = True,
               units: int = 200, dtype: str = "float64") -> list[dict[str, float]]:
    """Our ESN of ``config`` (KNOBS) drawn from ``seed``: for each lambda the validation NRMSE one step ahead
    ("nrmse"), free-running ("nrmse_free", with ``free``) and the ridge system's condition number ("cond")."""
    unknown = set(config) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown reservoir knob(s) {sorted(unknown)}; allowed: {KNOBS} (and ridge)")
    model = reservoir(X_fit.shape[-1], y_fit.shape[-1], units, seed=seed, dtype=dtype, **config)
    return ridge_scores(model, X_fit, y_fit, X_val, y_val, washout, ridges, free)


def _nrmse(pred: torch.Tensor, y: torch.Tensor, washout: int, sd: float) -> float:
    """tasks.Forecasting's NRMSE (inf when the prediction is not finite)."""
    mse = float(((pred[:, washout:].double() - y[:, washout:].double()) ** 2).mean())
    return math.sqrt(mse) / sd if math.isfinite(mse) else math.inf


def ridge_scores(model: nn.Module, X_fit: torch.Tensor, y_fit: torch.Tensor, X_val: torch.Tensor,
                 y_val: torch.Tensor, washout: int, ridges: Sequence[float], free: bool = True) -> list[dict[str, float]]:
    """A reservoir's (``model.states``, a linear ``readout``) validation scores, one dict per lambda: "nrmse", with
    ``free`` "nrmse_free", and "cond" (the ridge system's condition number); the readout is left at the last lambda."""
    dt = next(model.parameters()).dtype
    X_fit, y_fit, X_val, y_val = (a.to(dt) for a in (X_fit, y_fit, X_val, y_val))
    with torch.no_grad():
        gram = Gram().add(model.states(X_fit)[:, washout:], y_fit[:, washout:])
        H_val = model.states(X_val)
    sd, rows = target_std(y_val, washout), []
    for lam in ridges:
        W, c = gram.solve(lam, warn=False)
        with torch.no_grad():
            model.readout.weight.copy_(W), model.readout.bias.copy_(c)
            row = {"nrmse": _nrmse(H_val @ W.T.to(dt) + c.to(dt), y_val, washout, sd)}
            if free:
                row["nrmse_free"] = _nrmse(free_run(model, X_val, washout), y_val, washout, sd)
        rows.append({**row, "cond": gram.condition(lam)})
    return rows


def search(X: torch.Tensor, y: torch.Tensor, washout: int, grid: Mapping[str, Sequence[float]] = GRID,
           ridges: Sequence[float] = RIDGES, seeds: Sequence[int] = (0, 1, 2), select: str = "nrmse_free",
           val: float = 0.2, units: int = 200, dtype: str = "float64", extend: int = 2) -> Search:
    """Tune our ESN's knobs on validation: the last ``val`` fraction of the windows X (n, T, d_in), y (n, T, d_out)
    (at least one) validate, the others fit; every configuration is scored on each draw in ``seeds`` and chosen
    by the median (``grid_search``; a choice on a grid's edge extends that knob, up to ``extend`` times).
    ``select``: "nrmse_free" (closed loop after the washout; needs a series
    forecast from its own past) or "nrmse" (one step). Refit ``ESN(**search.best, seed=...)`` on all windows
    (with fresh seeds) before touching the test split."""
    if select not in SELECT:
        raise ValueError(f"select must be one of {SELECT}, got {select!r}")
    if not (is_number(val) and 0 < val < 1):
        raise ValueError(f"val (the validation fraction of the windows) must be in (0, 1), got {val!r}")
    X, _ = _windows(X, "X", check_dtype(dtype))
    y, _ = _windows(y, "y", check_dtype(dtype))
    if len(X) < 2:
        raise ValueError(f"{len(X)} window(s): a validation split needs at least 2 (cut the series into windows)")
    n = len(X) - max(1, round(val * len(X)))
    free = select == "nrmse_free"
    return grid_search(lambda cfg, s, lams: esn_scores(X[:n], y[:n], X[n:], y[n:], washout, cfg, s, lams, free,
                                                       units, dtype), grid, ridges, seeds, select, extend)
