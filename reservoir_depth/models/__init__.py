"""Architecture families built from ordinary torch layers, scaffolded by name.

Each family declares ``scaffold_targets`` (the layers that become frozen scaffolds)
and ``scaffold_trainable`` (what else trains: heads, norms, embeddings); where they
depend on the configuration (llama, vit) the instance's attributes hold the resolved
ones. The reservoir also declares ``scaffold_specs``, its per-layer distribution
override (the spectral-radius rule for the recurrent weight W).
``build(arch, **kwargs)`` rebuilds a model from the architecture config stored in
an adapter file.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .encoder import Encoder
from .linear import Linear
from .llama import SIZES as LLAMA_SIZES
from .llama import Llama, count_llama
from .mlp import MLP, SIZES
from .plain import Plain
from .reservoir import Reservoir
from .vit import ViT

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP, "linear": Linear, "plain": Plain,
    "llama": Llama, "encoder": Encoder, "vit": ViT, "reservoir": Reservoir,
}


def build(arch: str, **kwargs: Any) -> nn.Module:
    """Build a registered architecture; records ``model.arch_config`` for adapter files."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(sorted(ARCHITECTURES))}")
    model = ARCHITECTURES[arch](**kwargs)
    model.arch_config = {"name": arch, **kwargs}
    return model


def scaffold_defaults(model: nn.Module) -> dict[str, Any]:
    """The ScaffoldConfig keywords a model declares: target_modules, trainable and, where it declares
    per-layer distribution overrides (the reservoir's spectral-radius rule), specs. Read from the
    instance, since llama's and vit's depend on their configuration:
    ``ScaffoldConfig(**scaffold_defaults(model), r=8)``."""
    out: dict[str, Any] = {"target_modules": tuple(model.scaffold_targets),
                           "trainable": tuple(model.scaffold_trainable)}
    specs = getattr(model, "scaffold_specs", None)
    if specs:
        out["specs"] = {p: dict(s) for p, s in specs.items()}
    return out


__all__ = ["ARCHITECTURES", "Encoder", "LLAMA_SIZES", "Linear", "Llama", "MLP", "Plain", "Reservoir", "SIZES", "ViT",
           "build", "count_llama", "scaffold_defaults"]
