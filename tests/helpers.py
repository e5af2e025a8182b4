"""What tests of several modules share: a stand-in for training (every trainable tensor moves) and
scaffolding a model by what its architecture declares. Cases of one package stay with it
(scaffold_cases.py, distribution_cases.py); pytest fixtures stay in conftest.py."""

from __future__ import annotations

import torch
from torch import nn

from reservoir_depth.models import scaffold_defaults
from reservoir_depth.scaffold import ScaffoldConfig, scaffold


def nudge_trainable(model: nn.Module, scale: float = 0.1, seed: int = 1) -> nn.Module:
    """Stand-in for training: every trainable tensor moves by scale * N(0, 1), drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def scaffolded(model: nn.Module, r: int = 2, **config) -> nn.Module:
    """Scaffold by the model's own declared targets, trainable extras and specs (scaffold_defaults)."""
    return scaffold(model, ScaffoldConfig(**scaffold_defaults(model), r=r, **config))
