"""The closed-form ridge readout of a reservoir computer (an echo-state network's W_out).

Given the washed-out states h_t (rows of H, N x n) and targets y_t (rows of Y, N x d), the readout
y_hat_t = W_out h_t + c minimises

    sum_t ||y_t - W_out h_t - c||^2 + lambda ||W_out||_F^2          (the intercept c unpenalised).

With H_c, Y_c the states and targets centred at their means h_bar, y_bar, the ridge (Tikhonov) normal
equations (Hoerl & Kennard 1970; Lukosevicius, "A practical guide to applying echo state networks",
2012, eq. 9) give

    W_out^T = (H_c^T H_c + lambda I)^{-1} H_c^T Y_c,        c = y_bar - W_out h_bar.

H_c^T H_c = H^T H - N h_bar h_bar^T and H_c^T Y_c = H^T Y - N h_bar y_bar^T, so one pass over the data
accumulates what every lambda needs (``Gram``). reservoirpy's Ridge (fit_bias=True) solves the same
equations. With the reservoir's weights frozen (r = 0, B = 0, beta = 1) this is an echo-state
network fitted in one pass; train.TrainConfig(readout="ridge") uses it as a model's readout.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

READOUTS = ("gradient", "ridge")  # TrainConfig.readout: the head trained by AdamW, or solved in closed form
# the largest condition number of H_c^T H_c + lambda I at which a float64 solve is trusted: its relative error
# is bounded by about cond x 2.2e-16, so 1e12 keeps W_out to about 2e-4; above it three correct solvers
# (ours, reservoirpy's, numpy's lstsq) were seen to give test errors up to 9x apart on the same states
COND_MAX = 1e12


class RidgeConditionWarning(RuntimeWarning):
    """The ridge system H_c^T H_c + lambda I is ill-conditioned (cond > COND_MAX): W_out is not to be trusted."""


def check_ridge(lam: float) -> float:
    """lambda must be a finite number >= 0 (0: least squares, where H_c^T H_c is invertible)."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"ridge (lambda of the ridge readout) must be a finite number >= 0, got {lam!r}")
    return float(lam)


class Gram:
    """Sums over rows of (H, Y) in float64: H^T H, H^T Y, sum h, sum y and N; ``solve(lambda)`` the readout."""

    def __init__(self) -> None:
        self.HtH = self.HtY = self.h_sum = self.y_sum = None
        self.n = 0

    def add(self, H: torch.Tensor, Y: torch.Tensor) -> "Gram":
        """Add rows H (N, n) and Y (N, d) (any leading shape: flattened to rows)."""
        H, Y = H.detach().reshape(-1, H.shape[-1]).double(), Y.detach().reshape(-1, Y.shape[-1]).double()
        if len(H) != len(Y):
            raise ValueError(f"states and targets must have as many rows, got {len(H)} and {len(Y)}")
        bad = int((~torch.isfinite(Y)).sum())
        if bad:  # bad input, which no lambda fixes
            raise ValueError(f"the ridge readout's targets hold {bad} non-finite value(s); clean the data")
        bad = int((~torch.isfinite(H)).sum())
        if bad:  # a numerical divergence (of the model's weights or its inputs), as a NaN loss is
            raise FloatingPointError(f"the ridge readout's states hold {bad} non-finite value(s): the model diverged "
                                     f"(its learning rate, or the reservoir's spectral radius or input scaling)")
        parts = (H.T @ H, H.T @ Y, H.sum(0), Y.sum(0))
        if self.HtH is None:
            self.HtH, self.HtY, self.h_sum, self.y_sum = parts
        else:
            for k, v in zip(("HtH", "HtY", "h_sum", "y_sum"), parts):
                setattr(self, k, getattr(self, k) + v)
        self.n += len(H)
        return self

    def _centred(self) -> torch.Tensor:
        """H_c^T H_c = H^T H - N h_bar h_bar^T."""
        if not self.n:
            raise ValueError("no rows added: the ridge readout needs states after the washout")
        h_bar = self.h_sum / self.n
        return self.HtH - self.n * torch.outer(h_bar, h_bar)

    def condition(self, lam: float) -> float:
        """The condition number (2-norm) of H_c^T H_c + lambda I, the matrix ``solve`` inverts: its largest
        over its smallest eigenvalue (inf when singular)."""
        ev = torch.linalg.eigvalsh(self._centred()).clamp(min=0) + check_ridge(lam)
        return float(ev[-1] / ev[0]) if ev[0] > 0 else math.inf

    def solve(self, lam: float, warn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_out (d, n), c (d,)) in float64 from the centred normal equations above. With ``warn``, a
        RidgeConditionWarning names lambda and the condition number when it exceeds COND_MAX."""
        lam = check_ridge(lam)
        C = self._centred()
        h_bar, y_bar = self.h_sum / self.n, self.y_sum / self.n
        A = C + lam * torch.eye(len(h_bar), dtype=torch.float64)
        if warn:
            cond = self.condition(lam)
            if cond > COND_MAX:
                warnings.warn(f"the ridge readout's system H_c^T H_c + lambda I has condition number {cond:.3g} > "
                              f"{COND_MAX:g} at lambda = {lam:g}: float64 cannot be trusted to solve it (solvers "
                              f"disagree); raise lambda", RidgeConditionWarning, stacklevel=2)
        Wt = torch.linalg.solve(A, self.HtY - self.n * torch.outer(h_bar, y_bar))
        return Wt.T.contiguous(), y_bar - h_bar @ Wt


def ridge(H: torch.Tensor, Y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ridge readout (W_out (d, n), c (d,)) of states H (..., n) for targets Y (..., d)."""
    return Gram().add(H, Y).solve(lam)


def readout_of(model: nn.Module) -> nn.Linear:
    """``model.readout``, refused unless the model has ``states(x) -> (batch, T, units)`` and a readout
    nn.Linear(units, n_out) with a bias (the reservoir family)."""
    head = getattr(model, "readout", None)
    if not callable(getattr(model, "states", None)) or not isinstance(head, nn.Linear) or head.bias is None:
        raise ValueError(f"a ridge readout needs a model with states(x) -> (batch, T, units) and a readout "
                        f"nn.Linear(units, n_out) with a bias (the 'reservoir' family); {type(model).__name__} has "
                        f"not: use readout='gradient'")
    return head


@torch.no_grad()
def fit_readout(model: nn.Module, X: torch.Tensor, y: torch.Tensor, lam: float, washout: int = 0,
                batch_size: int = 256) -> nn.Module:
    """Set ``model.readout`` (an nn.Linear) to the ridge readout of ``model.states(X)`` for y, over the steps
    t >= washout of every window (X (n, T, d_in), y (n, T, d_out)); returns the model. The model must have
    ``states(x) -> (n, T, units)`` and a linear ``readout`` (the reservoir family)."""
    check_ridge(lam)
    head = readout_of(model)
    if not 0 <= washout < X.shape[1]:
        raise ValueError(f"washout must be in [0, T) with T = {X.shape[1]} steps per window, got {washout}")
    was_training, dev = model.training, head.weight.device
    model.eval()
    gram = Gram()
    for i in range(0, len(X), batch_size):
        H = model.states(X[i:i + batch_size].to(dev))
        gram.add(H[:, washout:], y[i:i + batch_size, washout:])
    model.train(was_training)
    W, c = gram.solve(lam)
    if not (torch.isfinite(W).all() and torch.isfinite(c).all()):
        raise FloatingPointError(f"the ridge readout (lambda {lam:g}) is not finite; the states are degenerate: "
                                 f"raise lambda")
    head.weight.copy_(W.to(head.weight))
    head.bias.copy_(c.to(head.bias))
    return model
