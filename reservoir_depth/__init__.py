"""reservoir-depth: deep networks as reservoirs unfolded along depth (LottaLoRA).

The public surface fits on one screen; everything else lives in its module.
"""

__version__ = "0.1.0"

from .distributions import DISTRIBUTIONS, DistributionSpec, Family, draw, layer_seed, register, sample
from .io import load, save
from .scaffold import (LAYER_TYPES, LayerType, ScaffoldConfig, ScaffoldConv2d, ScaffoldLinear, advance, betas,
                       count_parameters, merge, register_layer_type, scaffold, scaffold_layers)
from .train import History, TrainConfig, evaluate, train

__all__ = [
    "DISTRIBUTIONS", "DistributionSpec", "Family", "History", "LAYER_TYPES", "LayerType", "ScaffoldConfig",
    "ScaffoldConv2d", "ScaffoldLinear", "TrainConfig", "__version__", "advance", "betas", "count_parameters", "draw",
    "evaluate", "layer_seed", "load", "merge", "register", "register_layer_type", "sample", "save", "scaffold",
    "scaffold_layers", "train",
]
