"""Prop. 1 (theory/01_unfolding.md): a scaffold is an echo state network unfolded along depth.

An ESN x_{t+1} = phi(W x_t + W_in u) run T steps on a held input u is a weight-tied
scaffold of depth T with bias b = W_in u; an untied scaffold (W_t drawn from
(root seed, "layers.t")) is the non-autonomous ESN x_{t+1} = phi(W_t x_t + W_in u).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..distributions import DistributionSpec, as_spec, layer_seed, sample
from .activations import ACTIVATIONS, Activation, Array, PhiLike, as_activation


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
