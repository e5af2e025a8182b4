"""reservoir-depth: deep networks as reservoirs unfolded along depth (LottaLoRA).

The public surface fits on one screen; everything else lives in its module.
"""

from ._version import __version__
from .distributions import DISTRIBUTIONS, DistributionSpec, Family, draw, layer_seed, register, sample
from .io import load, save
from .models import scaffold_defaults
from . import planted  # registers the data set "planted" (data/ sits below the teacher's scaffold)
from .scaffold import (LAYER_TYPES, LayerType, ScaffoldConfig, ScaffoldConv1d, ScaffoldConv2d, Scaffolded,
                       ScaffoldEmbedding, ScaffoldLayer, ScaffoldLinear, ScaffoldMultiheadAttention,
                       ScaffoldTransposedLinear, advance, betas, count_parameters, layer_type, merge,
                       register_layer_type, scaffold, scaffold_layers)
from .train import History, TrainConfig, evaluate, train

__all__ = [
    "DISTRIBUTIONS", "DistributionSpec", "Family", "History", "LAYER_TYPES", "LayerType", "ScaffoldConfig",
    "ScaffoldConv1d", "ScaffoldConv2d", "ScaffoldEmbedding", "ScaffoldLayer", "ScaffoldLinear",
    "ScaffoldMultiheadAttention", "ScaffoldTransposedLinear", "Scaffolded", "TrainConfig", "__version__", "advance",
    "betas", "count_parameters", "draw", "evaluate", "layer_seed", "layer_type", "load", "merge", "register",
    "register_layer_type", "sample", "save", "scaffold", "scaffold_defaults", "scaffold_layers", "train",
]
