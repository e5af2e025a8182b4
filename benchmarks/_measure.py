"""Measurements the benchmarks share (imported from the benchmarks/ folder, which a script run as
``python benchmarks/X.py`` has on its path)."""

from __future__ import annotations

from typing import Callable, Iterable

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


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def peak_step_bytes(alive: Iterable[torch.Tensor], step: Callable[[], object]) -> int:
    """Peak bytes allocated on the CPU while ``step()`` runs, the CPU's counterpart of CUDA's
    ``max_memory_allocated``: the storages in ``alive`` (what lives between steps: parameters, buffers,
    gradients, optimizer state, the batch) plus the highest running sum of the allocations and frees
    that the profiler records during the step (activations, temporaries, new gradients)."""
    from torch.profiler import ProfilerActivity, profile

    base = _storage_bytes(alive)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    running = peak = 0
    for _, n in events:
        running += n
        peak = max(peak, running)
    return base + peak
