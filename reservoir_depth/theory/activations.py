"""Elementwise activations phi for the theory of Props 1-3: numpy form, torch form, phi' and Lipschitz constant."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import special

Array = np.ndarray


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
