"""Measurements the benchmarks share (imported from the benchmarks/ folder, which a script run as
``python benchmarks/X.py`` has on its path)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def saved_bytes(model: nn.Module, forward: Callable[[], object]) -> int:
    """Bytes autograd keeps for backward while ``forward()`` runs (activations; ``model``'s parameters and
    buffers not counted), measured with saved-tensor hooks: a device-independent view of activation memory."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())
