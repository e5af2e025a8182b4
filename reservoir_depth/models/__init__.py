"""Architecture families built from ordinary torch layers, scaffolded by name.

Each family declares ``scaffold_targets`` (the layers that become frozen scaffolds)
and ``scaffold_trainable`` (what else trains: heads, norms, embeddings); where they
depend on the configuration (llama, vit) the instance's attributes hold the resolved
ones. The reservoir also declares ``scaffold_specs``, its per-layer distribution
override (the spectral-radius rule for the recurrent weight W); llama and the reservoir
declare ``scaffold_max_rank``, per-layer rank caps (llama's SwiGLU layers at rank 0 with
adapters="attention", the reservoir's W_in at d_in).
``build(arch, seed=0, **kwargs)`` rebuilds a model from the architecture config stored in
an adapter file.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..distributions import torch_rng

from .decision import DecisionTransformer
from .encoder import Encoder
from .graph import GCN, GIN
from .gru import GRU
from .linear import Linear
from .llama import SIZES as LLAMA_SIZES
from .llama import Llama, count_llama
from .mlp import MLP, SIZES
from .plain import Plain
from .reservoir import Reservoir
from .vit import ViT

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP, "linear": Linear, "plain": Plain,
    "llama": Llama, "encoder": Encoder, "vit": ViT, "reservoir": Reservoir, "gru": GRU,
    "gcn": GCN, "gin": GIN, "decision-transformer": DecisionTransformer,
}


def build(arch: str, seed: int | None = 0, **kwargs: Any) -> nn.Module:
    """Build a registered architecture; records ``model.arch_config`` for adapter files.

    ``seed`` (default 0) seeds what the layers draw from torch's RNG at construction (the head, any layer
    that is not scaffolded; W_seed comes from ScaffoldConfig.root_seed), and the caller's global RNG is
    left as it was: the same call builds the same model. ``seed=None`` draws from the global RNG. The seed
    is not part of ``arch_config``: an adapter file stores the trained tensors it would set."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(sorted(ARCHITECTURES))}")
    if seed is None:
        model = ARCHITECTURES[arch](**kwargs)
    else:
        with torch_rng(seed):
            model = ARCHITECTURES[arch](**kwargs)
    model.arch_config = {"name": arch, **kwargs}
    return model


def scaffold_defaults(model: nn.Module) -> dict[str, Any]:
    """The ScaffoldConfig keywords a model declares: target_modules, trainable and, where it declares
    them (non-empty), specs (``scaffold_specs``: the reservoir's spectral-radius rule) and max_rank
    (``scaffold_max_rank``: llama's rank-0 SwiGLU layers, the reservoir's W_in capped at d_in). Read
    from the instance, since they depend on its configuration:
    ``ScaffoldConfig(**scaffold_defaults(model), r=8)``."""
    out: dict[str, Any] = {"target_modules": tuple(model.scaffold_targets),
                           "trainable": tuple(model.scaffold_trainable)}
    specs = getattr(model, "scaffold_specs", None)
    if specs:
        out["specs"] = {p: dict(s) for p, s in specs.items()}
    max_rank = getattr(model, "scaffold_max_rank", None)
    if max_rank:
        out["max_rank"] = dict(max_rank)
    return out


__all__ = ["ARCHITECTURES", "DecisionTransformer", "Encoder", "GCN", "GIN", "GRU", "LLAMA_SIZES", "Linear", "Llama", "MLP", "Plain", "Reservoir", "SIZES", "ViT",
           "build", "count_llama", "scaffold_defaults"]
