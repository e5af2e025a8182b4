"""A GRU forecaster: torch's nn.GRU, every gate matrix a frozen seeded scaffold (eq. (1)), a trained readout.

    h_t = GRU(x_t, h_{t-1}),    y_t = readout(h_t)

The recurrent counterpart of the reservoir family on the same forecasting tasks: scaffolded (the
``rnn`` target), each of the r, z, n blocks of weight_ih and weight_hh is beta W_seed + s B A
(scaffold/recurrent.py), so at B = 0 it is a GRU holding random weights. ``scaffold_specs`` puts the
recurrent blocks at spectral radius rho (the echo-state rule, as the reservoir's W); ``scaffold_max_rank``
caps the input blocks at d_in (a scalar series has d_in = 1), as the reservoir caps W_in.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..distributions import is_number
from .reservoir import spectral_spec


class GRU(nn.Module):
    """forward(x (B, T, d_in) float) -> (B, T, n_out); step(x_t (B, d_in), h | None) -> (y_t, h)."""

    scaffold_targets = ("rnn",)
    scaffold_trainable = ("readout",)
    scaffold_head = "readout"  # the output layer "all-linear" leaves out

    def __init__(self, d_in: int, n_out: int, units: int = 64, layers: int = 1, rho: float = 0.9) -> None:
        super().__init__()
        for what, v in (("units", units), ("layers", layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{what} must be an int >= 1, got {v!r}")
        if not (is_number(rho) and math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho (spectral radius of each recurrent gate block) must be a finite number > 0, "
                             f"got {rho!r}")
        self.d_in, self.units, self.rho = d_in, units, float(rho)
        self.rnn = nn.GRU(d_in, units, num_layers=layers, batch_first=True)
        self.readout = nn.Linear(units, n_out)
        self.scaffold_specs: dict[str, dict[str, Any]] = {r"rnn\.hh_l\d+\..*": spectral_spec(rho)}
        self.scaffold_max_rank: dict[str, int] = {r"rnn\.ih_l0\..*": d_in}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_in or not x.is_floating_point():
            raise ValueError(f"x: expected a float tensor of shape (batch, T, d_in) with d_in={self.d_in}, "
                             f"got {x.dtype} of shape {tuple(x.shape)}")
        return self.readout(self.rnn(x)[0])

    def step(self, x_t: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for free-running prediction: (y_t (B, n_out), h_t (layers, B, units)); state None = zeros."""
        out, h = self.rnn(x_t.unsqueeze(1), state)
        return self.readout(out[:, 0]), h
