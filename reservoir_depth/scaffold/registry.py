"""The layer-type registry: the one place that knows every scaffoldable module class.

LAYER_TYPES maps a module class (or its dotted path, for transformers' Conv1D, never imported here) to
a LayerType entry: the Scaffolded class that replaces it (a ScaffoldLayer declares the weight layout,
fan-in axis, base and adapter ops and how it merges back into the same class; a container such as
ScaffoldMultiheadAttention holds several), whether "all-linear" takes it, and how spectra read its
input and output rows. Registered: nn.Linear, transformers' Conv1D, nn.Conv1d, nn.Conv2d,
nn.Embedding, nn.MultiheadAttention, nn.RNN, nn.GRU, nn.LSTM; register_layer_type() adds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .attention import ScaffoldMultiheadAttention, attention_output_rows
from .base import ScaffoldLayer, Scaffolded
from .recurrent import ScaffoldRecurrent
from .layers import (ScaffoldConv1d, ScaffoldConv2d, ScaffoldEmbedding, ScaffoldLinear, ScaffoldTransposedLinear,
                     affine_probe, channel_rows, conv_rows, feature_rows, one_hot_rows)

@dataclass(frozen=True)
class LayerType:
    """A module class that can be scaffolded, declared in one place.

    module: the class, or its dotted path "package.module.Class" (matched by the class's own
        __module__ and __qualname__, so registering it never imports the package).
    layer: the Scaffolded class; ``layer.from_module(module, name, config)`` wraps one. A ScaffoldLayer
        subclass declares the weight layout (``transposed``, ``fan_in_axis``), base and adapter ops and
        the merge (``to_plain``); a container (ScaffoldMultiheadAttention) holds ScaffoldLayers and
        merges them back into the same class.
    linear: part of target_modules="all-linear".
    container: ``layer`` holds several ScaffoldLayers (it is not one) and reads the plain module's own
        weights directly (``layer.plain_weights``): no layer inside the module is scaffolded on its own.
    same_map: for a subclass of ``module`` with its own forward: ``same_map(instance)`` is True when that
        forward still computes the registered class's map (checked on a probe input), so the subclass is
        scaffolded like its base (transformers' FalconLinear); None: such a subclass is never taken.
    rows: how spectra read the module's input as the (rows, d_in) its A sees: ``rows(module, x)``;
        None: not read. output_rows: the same for its output (rows, d_out).
    """

    module: type[nn.Module] | str
    layer: type[Scaffolded]
    linear: bool = False
    container: bool = False
    same_map: Callable[[nn.Module], bool] | None = None
    rows: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = feature_rows
    output_rows: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = feature_rows

    @property
    def name(self) -> str:
        return self.module.rpartition(".")[2] if isinstance(self.module, str) else self.module.__name__


LAYER_TYPES: dict[type[nn.Module] | str, LayerType] = {}


def _key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_layer_type(entry: LayerType) -> LayerType:
    """Add a scaffoldable module class (see LayerType); a class can be registered once."""
    keys = {entry.module, entry.module if isinstance(entry.module, str) else _key(entry.module)}
    taken = [k for k in LAYER_TYPES if k in keys or (not isinstance(k, str) and _key(k) in keys)]
    if taken:
        raise ValueError(f"layer type {entry.name} is already registered")
    if not (isinstance(entry.layer, type) and issubclass(entry.layer, Scaffolded)):
        raise ValueError(f"layer type {entry.name}: layer must be a Scaffolded subclass, got {entry.layer!r}")
    if entry.container == issubclass(entry.layer, ScaffoldLayer):
        raise ValueError(f"layer type {entry.name}: container={entry.container} but {entry.layer.__name__} "
                         f"{'is one ScaffoldLayer' if entry.container else 'is no ScaffoldLayer (one weight)'}; "
                         f"declare container={not entry.container}")
    LAYER_TYPES[entry.module] = entry
    return entry


register_layer_type(LayerType(nn.Linear, ScaffoldLinear, linear=True, same_map=affine_probe))
register_layer_type(LayerType("transformers.pytorch_utils.Conv1D", ScaffoldTransposedLinear, linear=True))
register_layer_type(LayerType(nn.Conv1d, ScaffoldConv1d, rows=conv_rows, output_rows=channel_rows))
register_layer_type(LayerType(nn.Conv2d, ScaffoldConv2d, rows=conv_rows, output_rows=channel_rows))
register_layer_type(LayerType(nn.Embedding, ScaffoldEmbedding, rows=one_hot_rows))
register_layer_type(LayerType(nn.MultiheadAttention, ScaffoldMultiheadAttention, linear=True, container=True,
                              output_rows=attention_output_rows))
for _rnn in (nn.RNN, nn.GRU, nn.LSTM):  # one scaffold layer per gate matrix; spectra read none of them
    register_layer_type(LayerType(_rnn, ScaffoldRecurrent, linear=True, container=True, rows=None, output_rows=None))


def layer_type(module: nn.Module) -> LayerType | None:
    """The registry entry for ``module``, or None. A subclass counts if it keeps its registered base's
    forward, or if its own forward passes the entry's ``same_map`` probe (else it computes something else)."""
    for cls in type(module).__mro__:
        entry = LAYER_TYPES.get(cls) or LAYER_TYPES.get(_key(cls))
        if entry is not None:
            if type(module).forward is cls.forward:
                return entry
            return entry if entry.same_map is not None and entry.same_map(module) else None
    return None


def is_container(module: nn.Module) -> bool:
    """A registered module whose scaffold holds several layers (it reads its children's weights directly)."""
    entry = layer_type(module)
    return entry is not None and entry.container


def effective_weight(module: nn.Module) -> torch.Tensor | None:
    """The (d_out, d_in, *kernel) map of a one-weight layer: beta W_seed + s B A of a ScaffoldLayer, W of a
    registered plain module; None for anything else (a container, an unregistered module)."""
    if isinstance(module, ScaffoldLayer):
        return module.to_map(module.merged_weight())
    entry = layer_type(module)
    if entry is None or entry.container:
        return None
    return module.weight.T if entry.layer.transposed else module.weight


def effective_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, effective_weight) of every one-weight layer of ``model``, scaffolded or plain; a plain
    container's own weights come under its scaffold layers' names (an nn.MultiheadAttention ``attn``
    gives ``attn.in_proj``; its out_proj is a Linear child)."""
    for n, m in model.named_modules():
        w = effective_weight(m)
        if w is not None:
            yield n, w
        elif is_container(m):
            for local, w in layer_type(m).layer.plain_weights(m).items():
                yield f"{n}.{local}" if n else local, w


def layer_rows(module: nn.Module, x: Any, side: str = "input") -> torch.Tensor | None:
    """``x``, the input (side="input": the rows its adapter's A sees) or output of ``module``, as
    (rows, features) by its layer type's ``rows`` / ``output_rows``; None for a module no entry reads.
    ``x`` is a tensor, or what a container returns (an attention's (output, weights))."""
    plain = getattr(module, "_template", module) if isinstance(module, Scaffolded) else module
    entry = layer_type(plain)
    read = None if entry is None else entry.rows if side == "input" else entry.output_rows
    if read is None or not (isinstance(x, torch.Tensor) or is_container(plain)):
        return None
    return read(plain, x)


def _type_names() -> str:
    return ", ".join(t.name for t in LAYER_TYPES.values())

