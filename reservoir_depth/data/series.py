"""Generated time series as forecasting Datasets: Lorenz, Mackey-Glass (tau = 17) and NARMA-10, from a seed.

One trajectory of ``n_train + n_test`` steps is generated; steps [0, n_train) make the
training windows and the following ``n_test`` steps the test windows, so the two splits
never share a step. Both are standardised with the training part's mean and standard
deviation (per dimension). A window of T = ``window`` steps starting at s pairs the
inputs X[s : s + T] with the targets Y[s + 1 : s + T + 1] (y[:, t] = series[t + 1]), and
the first ``washout`` steps of every window are left out of loss and metrics.

- Lorenz: (x, y, z), dx/dt = sigma (y - x), dy/dt = x (rho - z) - y, dz/dt = x y - beta z,
  sigma = 10, rho = 28, beta = 8/3, fourth-order Runge-Kutta with step ``dt``.
- Mackey-Glass: dx/dt = a x(t - tau) / (1 + x(t - tau)^n) - b x(t), tau = 17, a = 0.2,
  b = 0.1, n = 10; Runge-Kutta with step h = 0.1 over a history buffer of tau / h
  steps, sampled every ``dt`` time units.
- NARMA-10: an input-output task. u(t) ~ U[0, 0.5] i.i.d. and
  y(t+1) = 0.3 y(t) + 0.05 y(t) sum_{i=0}^{9} y(t-i) + 1.5 u(t-9) u(t) + 0.1.
  X holds the input u and y the system's output one step on (y[:, t] = y(t+1), which
  depends on u up to t); y is NOT the next step of X.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .dataset import Dataset, positive_int, windows

LORENZ = {"sigma": 10.0, "rho": 28.0, "beta": 8 / 3}
MACKEY_GLASS = {"a": 0.2, "b": 0.1, "n": 10}
MG_STEP = 0.1  # the integration step h of Mackey-Glass
NARMA_BOUND, NARMA_DRAWS = 10.0, 100  # |y| above the bound: that input draw diverged


def _steps(key: str, t: float, h: float) -> int:
    """t / h as an int, refusing a t off the grid of step h."""
    k = round(t / h)
    if k < 1 or abs(k * h - t) > 1e-9 * max(1.0, abs(t)):
        raise ValueError(f"{key} = {t!r} must be a multiple of the integration step {h!r} (and > 0)")
    return k


def lorenz_series(n: int, seed: int = 0, dt: float = 0.02, transient: float = 50.0) -> np.ndarray:
    """(n, 3) Lorenz states every ``dt`` (RK4), after ``transient`` time units from a start drawn from ``seed``."""
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt!r}")
    sigma, rho, beta = LORENZ["sigma"], LORENZ["rho"], LORENZ["beta"]

    def f(x, y, z):
        return sigma * (y - x), x * (rho - z) - y, x * y - beta * z

    x, y, z = np.random.default_rng(seed).normal(0.0, 1.0, 3) + (0.0, 0.0, 25.0)
    skip = round(transient / dt)
    out = np.empty((n, 3))
    for k in range(skip + n):
        k1 = f(x, y, z)
        k2 = f(x + dt / 2 * k1[0], y + dt / 2 * k1[1], z + dt / 2 * k1[2])
        k3 = f(x + dt / 2 * k2[0], y + dt / 2 * k2[1], z + dt / 2 * k2[2])
        k4 = f(x + dt * k3[0], y + dt * k3[1], z + dt * k3[2])
        x += dt / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        y += dt / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        z += dt / 6 * (k1[2] + 2 * k2[2] + 2 * k3[2] + k4[2])
        if k >= skip:
            out[k - skip] = x, y, z
    return out


def mackey_glass_series(n: int, seed: int = 0, tau: float = 17.0, dt: float = 1.0,
                        transient: float = 500.0) -> np.ndarray:
    """(n,) Mackey-Glass values every ``dt`` time units, after ``transient`` time units.

    RK4 with step h = 0.1; the delayed value x(t - tau) is read from a buffer of the last
    tau / h steps (the half step x(t - tau + h/2) as the mean of its two neighbours).
    The initial history is 1.2 + U[-0.1, 0.1] drawn from ``seed``.
    """
    a, b, p, h = MACKEY_GLASS["a"], MACKEY_GLASS["b"], MACKEY_GLASS["n"], MG_STEP
    D, every = _steps("tau", tau, h), _steps("dt", dt, h)
    hist = list(1.2 + np.random.default_rng(seed).uniform(-0.1, 0.1, D + 1))  # x at t - D h, ..., t
    skip = round(transient / dt)
    g = lambda x, xd: a * xd / (1 + xd**p) - b * x
    out = np.empty(n)
    for k in range((skip + n) * every):
        x, xd0, xd1 = hist[-1], hist[-D - 1], hist[-D]  # x(t), x(t - tau), x(t - tau + h)
        xdm = (xd0 + xd1) / 2
        k1 = g(x, xd0)
        k2 = g(x + h / 2 * k1, xdm)
        k3 = g(x + h / 2 * k2, xdm)
        k4 = g(x + h * k3, xd1)
        hist.append(x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
        del hist[0]
        if (k + 1) % every == 0 and (k + 1) // every > skip:
            out[(k + 1) // every - skip - 1] = hist[-1]
    return out


def narma10_output(u: np.ndarray) -> np.ndarray:
    """The NARMA-10 output y for input u, from y = 0 (and u = 0 before the start):
    y(t+1) = 0.3 y(t) + 0.05 y(t) sum_{i=0}^{9} y(t-i) + 1.5 u(t-9) u(t) + 0.1."""
    y = np.zeros(len(u))
    for t in range(len(u) - 1):
        u9 = u[t - 9] if t >= 9 else 0.0
        y[t + 1] = 0.3 * y[t] + 0.05 * y[t] * y[max(0, t - 9):t + 1].sum() + 1.5 * u9 * u[t] + 0.1
    return y


def narma10_series(n: int, seed: int = 0, transient: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(u, y), each (n,): u ~ U[0, 0.5] from ``seed`` and the NARMA-10 output, after ``transient`` steps.

    NARMA-10 diverges for some input draws (about 1 seed in 20 at 12,000 steps); such a draw
    is replaced by the next draw of the same generator, so a seed still names one series.
    """
    rng = np.random.default_rng(seed)
    for _ in range(NARMA_DRAWS):
        u = rng.uniform(0.0, 0.5, transient + n)
        with np.errstate(over="ignore", invalid="ignore"):
            y = narma10_output(u)
        if np.isfinite(y).all() and np.abs(y).max() < NARMA_BOUND:
            return u[transient:], y[transient:]
    raise ValueError(f"NARMA-10 diverged in all {NARMA_DRAWS} input draws of seed {seed} for n = {n} steps; "
                     f"use fewer steps")


def _autonomous(series: Callable[..., np.ndarray]) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """A series forecast from itself: inputs and targets are the same trajectory."""
    def trajectory(n: int, seed: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
        s = series(n, seed, **kwargs)
        return s, s
    return trajectory


# name -> (n, seed, **kwargs) -> (inputs, targets), each (n,) or (n, d); targets are read one step later
TRAJECTORIES: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "lorenz": _autonomous(lorenz_series),
    "mackey-glass": _autonomous(mackey_glass_series),
    "narma10": narma10_series,
}


def forecasting(name: str, window: int = 200, washout: int = 50, n_train: int = 10_000, n_test: int = 2_000,
                stride: int | None = None, seed: int = 0, **kwargs) -> Dataset:
    """The forecasting Dataset of a registered trajectory (see module doc); training windows start every
    ``stride`` steps (default ``window``: disjoint), test windows are disjoint."""
    window, n_train, n_test = (positive_int(k, v) for k, v in
                               (("window", window), ("n_train", n_train), ("n_test", n_test)))
    stride = window if stride is None else positive_int("stride", stride)
    u, v = TRAJECTORIES[name](n_train + n_test, seed, **kwargs)
    u, v = u.reshape(n_train + n_test, -1), v.reshape(n_train + n_test, -1)
    (mu_u, sd_u), (mu_v, sd_v) = ((a[:n_train].mean(0), a[:n_train].std(0)) for a in (u, v))
    u, v = (u - mu_u) / sd_u, (v - mu_v) / sd_v
    Xtr, ytr = windows(u[:n_train], v[:n_train], window, stride, name, "train")
    Xte, yte = windows(u[n_train:], v[n_train:], window, window, name, "test")
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return Dataset(name, t(Xtr), t(ytr), t(Xte), t(yte), 0, task="forecasting", washout=washout)


def lorenz(window: int = 200, washout: int = 50, n_train: int = 10_000, n_test: int = 2_000,
           stride: int | None = None, dt: float = 0.02, seed: int = 0) -> Dataset:
    """Lorenz (sigma = 10, rho = 28, beta = 8/3, RK4 step ``dt``): forecast (x, y, z) one step ahead."""
    return forecasting("lorenz", window, washout, n_train, n_test, stride, seed, dt=dt)


def mackey_glass(window: int = 200, washout: int = 50, n_train: int = 10_000, n_test: int = 2_000,
                 stride: int | None = None, tau: float = 17.0, dt: float = 1.0, seed: int = 0) -> Dataset:
    """Mackey-Glass (tau = 17, a = 0.2, b = 0.1, n = 10), sampled every ``dt``: forecast x one step ahead."""
    return forecasting("mackey-glass", window, washout, n_train, n_test, stride, seed, tau=tau, dt=dt)


def narma10(window: int = 200, washout: int = 50, n_train: int = 10_000, n_test: int = 2_000,
            stride: int | None = None, seed: int = 0) -> Dataset:
    """NARMA-10: X = the input u ~ U[0, 0.5], y = the system output y(t+1) (not X one step ahead)."""
    return forecasting("narma10", window, washout, n_train, n_test, stride, seed)
