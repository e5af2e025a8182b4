"""Architecture families built from ordinary torch layers, scaffolded by name.

Each family declares ``scaffold_targets`` (the layers that become frozen scaffolds)
and ``scaffold_trainable`` (what else trains: heads, norms, embeddings).
``build(arch, **kwargs)`` rebuilds a model from the architecture config stored in
an adapter file.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .linear import Linear
from .mlp import MLP, SIZES
from .plain import Plain

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "linear": Linear, "plain": Plain}


def build(arch: str, **kwargs: Any) -> nn.Module:
    """Build a registered architecture; records ``model.arch_config`` for adapter files."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(sorted(ARCHITECTURES))}")
    model = ARCHITECTURES[arch](**kwargs)
    model.arch_config = {"name": arch, **kwargs}
    return model


__all__ = ["ARCHITECTURES", "Linear", "MLP", "Plain", "SIZES", "build"]
