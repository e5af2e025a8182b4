"""Frozen-scaffold layers with a learned scale beta and LoRA adapters, eq. (1): y = beta W_seed x + s B (A x) + b,
s = alpha / r (rsLoRA: alpha / sqrt(r)). Everything public is re-exported here.

One job per module: ``config`` (ScaffoldConfig, the pattern language, and LayerSettings: one layer's
settings, resolved once per target by scaffold()), ``base`` (eq. (1) for one
weight: draws, dtype, destabilised schedules, merged weight), ``fused`` (the autograd functions),
``layers`` (Linear, transformers' Conv1D, Conv1d / Conv2d, Embedding and their row readers),
``attention`` (nn.MultiheadAttention), ``recurrent`` (nn.RNN / GRU / LSTM, one scaffold per gate),
``survey`` (what scaffold() passes over, and why), ``registry`` (LAYER_TYPES, the one place that knows every
type) and ``apply`` (scaffold(), merge(), counts).
"""

from .apply import (ParameterCount, advance, betas, count_parameters, merge, scaffold, scaffold_layers,
                    set_seed_dtype)
from .attention import ScaffoldMultiheadAttention, attention_output_rows
from .base import ScaffoldLayer, Scaffolded
from .survey import PassedOverWarning
from .config import ALL_LINEAR, BIAS_MODES, SCHEDULES, LayerSettings, Resolver, ScaffoldConfig, matches
from .layers import (ONE_HOT_LIMIT, ScaffoldConv, ScaffoldConv1d, ScaffoldConv2d, ScaffoldEmbedding, ScaffoldLinear,
                     ScaffoldTransposedLinear, channel_rows, conv_rows, feature_rows, one_hot_rows)
from .recurrent import ScaffoldRecurrent
from .registry import (LAYER_TYPES, LayerType, effective_weight, effective_weights, is_container, layer_rows,
                       layer_type, register_layer_type)

__all__ = [
    "ALL_LINEAR", "BIAS_MODES", "LAYER_TYPES", "LayerSettings", "LayerType", "Resolver", "ONE_HOT_LIMIT", "ParameterCount", "PassedOverWarning", "SCHEDULES",
    "ScaffoldConfig", "ScaffoldConv", "ScaffoldConv1d", "ScaffoldConv2d", "ScaffoldEmbedding", "ScaffoldLayer",
    "ScaffoldLinear", "ScaffoldMultiheadAttention", "ScaffoldRecurrent", "ScaffoldTransposedLinear", "Scaffolded", "advance",
    "attention_output_rows", "betas", "channel_rows", "conv_rows", "count_parameters", "effective_weight",
    "effective_weights", "feature_rows", "is_container", "layer_rows", "layer_type", "matches", "merge",
    "one_hot_rows", "register_layer_type", "scaffold", "scaffold_layers", "set_seed_dtype",
]
