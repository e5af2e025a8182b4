"""A recurrent reservoir (echo-state style) with scaffolded input and recurrent weights.

    h_t = (1 - leak) h_{t-1} + leak * tanh(sigma_in W_in x_t + sigma_b b + W h_{t-1}),    y_t = readout(h_t)

W_in (with its bias b) and W are nn.Linear layers and the scaffold targets: scaffolded,
each is beta W_seed x + s B A x (eq. (1)), so LoRA adapts both; the readout trains.
With B = 0 and beta = 1 it is exactly an echo state network with W_in = W_in's W_seed
and W = W's W_seed. Unrolled in time it is the depth-unfolded network of Prop. 1
(theory/01_unfolding.md): step t is a layer with the tied weight W and the bias
W_in x_t + b, i.e. eq. (1.1) driven by x_t, with a leak. sigma_in (``input_scaling``) and sigma_b
(``bias_scaling``), both 1 by default, are an ESN's input and bias scalings.

A LoRA rank is at most min(d_in, units) for W_in, so the reservoir caps W_in's rank at
d_in (``scaffold_max_rank = {"W_in": d_in}``, for ScaffoldConfig(max_rank=...)): a rank
sweep with r > d_in (a scalar series has d_in = 1) keeps LoRA on W_in at its largest
possible rank and on W at rank r. ``adapters="both"`` (default) scaffolds both;
``adapters="recurrent"`` scaffolds W only and keeps W_in frozen at its random init (an
ESN's fixed input weights, stored in the adapter file).

The recurrent weight wants the echo-state scaling rule, spectral radius rho, not the
fan-in rule: ``scaffold_specs`` is the recommended per-layer override, to pass as
``ScaffoldConfig(specs=model.scaffold_specs, ...)`` (``models.scaffold_defaults(model)``
includes it); the instance's rho is used. Unscaffolded, W_in and W keep torch's default
init (W then has spectral radius about 0.6).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..checks import is_number


def spectral_spec(rho: float) -> dict[str, Any]:
    """N(0, 1) entries rescaled to spectral radius rho (distributions.py's "spectral_radius" rule), draw version 2."""
    return {"name": "normal", "scaling": "spectral_radius", "rho": float(rho), "version": 2}


ADAPTERS: dict[str, tuple[str, ...]] = {"both": ("W_in", "W"), "recurrent": ("W",)}


class Reservoir(nn.Module):
    """forward(x (B, T, d_in) float) -> (B, T, n_out); step(x_t (B, d_in), h | None) -> (y_t, h)."""

    scaffold_targets = ("W_in", "W")
    scaffold_trainable = ("readout",)
    scaffold_head = "readout"  # the output layer "all-linear" leaves out
    scaffold_specs: dict[str, dict[str, Any]] = {"W": spectral_spec(0.9)}
    scaffold_max_rank: dict[str, int] = {}  # an instance's caps W_in at its d_in

    def __init__(self, d_in: int, n_out: int, units: int = 200, leak: float = 0.3, rho: float = 0.9,
                 adapters: str = "both", input_scaling: float = 1.0, bias_scaling: float = 1.0) -> None:
        super().__init__()
        if adapters not in ADAPTERS:
            raise ValueError(f"adapters must be one of {', '.join(map(repr, ADAPTERS))}, got {adapters!r}")
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise ValueError(f"units must be an int >= 1, got {units!r}")
        if not (is_number(leak) and 0 < leak <= 1):
            raise ValueError(f"leak must be a number in (0, 1], got {leak!r}")
        if not (is_number(rho) and math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho (spectral radius of W) must be a finite number > 0, got {rho!r}")
        for k, v in (("input_scaling", input_scaling), ("bias_scaling", bias_scaling)):
            if not (is_number(v) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{k} must be a finite number >= 0, got {v!r}")
        self.d_in, self.units, self.leak, self.rho = d_in, units, float(leak), float(rho)
        self.input_scaling, self.bias_scaling = float(input_scaling), float(bias_scaling)
        self.W_in = nn.Linear(d_in, units)  # its bias is b
        self.W = nn.Linear(units, units, bias=False)
        self.readout = nn.Linear(units, n_out)
        self.scaffold_specs = {"W": spectral_spec(rho)}
        self.scaffold_targets = ADAPTERS[adapters]
        self.scaffold_max_rank = {"W_in": d_in} if "W_in" in self.scaffold_targets else {}

    def _check(self, x: torch.Tensor, dims: int, what: str) -> None:
        if x.dim() != dims or x.shape[-1] != self.d_in or not x.is_floating_point():
            shape = "(batch, T, d_in)" if dims == 3 else "(batch, d_in)"
            raise ValueError(f"{what}: expected a float tensor of shape {shape} with d_in={self.d_in}, "
                             f"got {x.dtype} of shape {tuple(x.shape)}")

    def _drive(self, x: torch.Tensor) -> torch.Tensor:
        """u = sigma_in W_in x + sigma_b b (W_in as scaffolded: beta W_seed + s B A, eq. (1))."""
        u = self.W_in(x * self.input_scaling if self.input_scaling != 1 else x)
        b = self.W_in.bias
        return u + (self.bias_scaling - 1) * b if b is not None and self.bias_scaling != 1 else u

    def _update(self, u_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One leaky step, given u_t = sigma_in W_in x_t + sigma_b b."""
        return (1 - self.leak) * h + self.leak * torch.tanh(u_t + self.W(h))

    def states(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """The reservoir states h_1 .. h_T (B, T, units) from h_0 = ``h`` (zeros if None)."""
        self._check(x, 3, "x")
        u = self._drive(x)  # every sigma_in W_in x_t + sigma_b b in one call
        h = u.new_zeros(len(x), self.units) if h is None else h
        out = []
        for t in range(x.shape[1]):
            h = self._update(u[:, t], h)
            out.append(h)
        return torch.stack(out, 1) if out else u.new_zeros(len(x), 0, self.units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.states(x))

    def step(self, x_t: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for free-running prediction: (y_t (B, n_out), h_t (B, units)); state None = zeros."""
        self._check(x_t, 2, "x_t")
        h = x_t.new_zeros(len(x_t), self.units) if state is None else state
        if h.shape != (len(x_t), self.units):
            raise ValueError(f"state: expected shape {(len(x_t), self.units)}, got {tuple(h.shape)}")
        h = self._update(self._drive(x_t), h)
        return self.readout(h), h
