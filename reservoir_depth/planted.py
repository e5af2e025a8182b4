"""Planted-rank teacher tasks: the ground truth for the saturation rank r*.

The teacher is a scaffold (the same W_seed a student with the same spec, root
seed and layer names regenerates) plus a planted rank-k update in every scaffold
layer, s B A = strength * U V^T with orthonormal U, V (Prop. 4 of theory/):

    y = f(x; beta = 1, W_l = W_seed,l + strength * U_l V_l^T),   x ~ N(0, I)

A student on the same scaffold represents the teacher exactly iff r >= k, so
r*(eps) = k for every eps below the loss of one missing direction.

The teacher needs scaffold/ and models/, which sit above data/, so this module registers
the data set "planted" from here (``data.register_dataset``); the package imports it, so
``data.load("planted", ...)`` works whichever module is imported first.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .data import register_dataset
from .data.dataset import Dataset
from .distributions import DistributionSpec, layer_seed, rng_for
from .models import build, scaffold_defaults
from .scaffold import ScaffoldConfig, scaffold, scaffold_layers


def _orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))


def teacher(k: int, d: int = 32, n_out: int = 32, hidden: Sequence[int] = (), strength: float = 1.0,
            seed: int = 0, spec: dict[str, Any] | str = "normal"):
    """The teacher network: arch 'linear' (hidden=()) or a dropout-free 'mlp', scaffolded with planted updates."""
    arch = {"name": "mlp", "hidden": list(hidden), "dropout": 0.0} if hidden else {"name": "linear"}
    name = arch.pop("name")
    model = build(name, seed=seed, d_in=d, n_out=n_out, **arch)
    spec = DistributionSpec(spec) if isinstance(spec, str) else DistributionSpec.from_dict(spec)
    model = scaffold(model, ScaffoldConfig(**scaffold_defaults(model), r=k, root_seed=seed, spec=spec))
    for lname, layer in scaffold_layers(model):
        d_out, d_in = layer.map_shape  # scaffold() checked k
        rng = rng_for(layer_seed(seed, lname, "planted"))
        U, V = _orthonormal(rng, d_out, k), _orthonormal(rng, d_in, k)
        with torch.no_grad():
            layer.lora_A.copy_(torch.from_numpy(V.T))
            layer.lora_B.copy_(torch.from_numpy(U * (strength / layer.s if k else 0.0)))
    return model.eval().requires_grad_(False)


def planted(k: int = 4, d: int = 32, n_out: int = 32, hidden: Sequence[int] = (), strength: float = 1.0,
            noise: float = 0.0, n_train: int = 2048, n_test: int = 1024, seed: int = 0,
            spec: dict[str, Any] | str = "normal"):
    """A regression Dataset (x, teacher(x) + noise * N(0, 1)) with a planted rank k; see module doc."""
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"planted rank k must be an int >= 0, got {k!r}")
    net = teacher(k, d, n_out, hidden, strength, seed, spec)
    g = torch.Generator().manual_seed(layer_seed(seed, "planted-data"))
    X = torch.randn(n_train + n_test, d, generator=g)
    with torch.no_grad():
        clean = net(X)
        Y = clean + noise * torch.randn(n_train + n_test, n_out, generator=g)
    # the Bayes-optimal predictor is the teacher itself: its test loss (the noise it cannot predict) is the
    # reference a study with reference = "bayes" measures r* against
    bayes = {"test_loss": float((Y[n_train:] - clean[n_train:]).double().pow(2).sum(-1).mean())}
    return Dataset(f"planted-k{k}", X[:n_train], Y[:n_train], X[n_train:], Y[n_train:], 0, task="regression",
                   bayes=bayes)


register_dataset("planted", planted, seeded_by_run=True, task="regression")  # the teacher shares the student's scaffold
