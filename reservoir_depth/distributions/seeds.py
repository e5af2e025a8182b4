"""Seeds: sha256 of (root seed, layer name, salt), numpy's PCG64, and a scoped seeding of torch's global RNG.

Each layer's seed depends only on (root seed, qualified layer name), so adding a layer never changes another
layer's draw (draw.stream_key adds the family, its parameters and the shape for version-2 draws).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

def layer_seed(root_seed: int, name: str, *salt: Any) -> int:
    """Seed of one draw: sha256 of (root seed, qualified name, salt), 64 bits.

    Depends only on its arguments, never on the model's size or the device.
    """
    if not isinstance(root_seed, (int, np.integer)) or isinstance(root_seed, bool):
        raise TypeError(f"root_seed must be an int, got {root_seed!r}")
    key = "/".join([str(int(root_seed)), name, *map(str, salt)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def rng_for(seed: int) -> np.random.Generator:
    """numpy's PCG64 generator for one seed: the only source of randomness of every draw."""
    return np.random.Generator(np.random.PCG64(seed))


class torch_rng:
    """Context: torch's global RNG seeded, and restored on exit.

    For the few torch calls that take no generator (nn.Linear's default init,
    dropout masks), so that no global state leaks in or out.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self._ctx = torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else [])
        self._ctx.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)
