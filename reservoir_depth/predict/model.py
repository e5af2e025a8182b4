"""The model of a study at init, as the predictors see it: built and scaffolded like a LottaLoRA run of
the study, before any step; its target weights (those of merge(model) that hold W = beta W_seed + s B A)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..scaffold import scaffold_layers
from ..study import Study
from ..run import Run
from ..sweep import build_model


def init_model(study: Study, rank: int = 0, seed: int | None = None, max_rank: Mapping[str, int] | None = None):
    """(model, data) of a LottaLoRA run of ``study`` at ``rank`` on ``seed`` (default: its first seed), at init,
    with the study's caps at that rank (Study.scaffold_at: rank_caps included) or ``max_rank`` instead."""
    seed = study.seeds[0] if seed is None else seed
    scaffold_cfg = {**study.scaffold_at(int(rank), seed), **({"max_rank": dict(max_rank)} if max_rank else {})}
    run = Run(method="lotta", seed=seed, study=study.study, dataset=study.dataset, arch=study.arch,
              train=study.train, scaffold=scaffold_cfg)
    d = run.data()
    torch.manual_seed(run.seed)
    return build_model(run, d), d


def full_rank(study: Study) -> int:
    """The largest rank any target layer of ``study`` can hold: max over its scaffold layers of
    min(d_in, d_out), under the caps the study or the family sets for every run (llama's SwiGLU at 0).
    At r >= full_rank, s B A can represent any Delta W of every target."""
    model, _ = init_model(study)
    return max((min(*layer.map_shape, *(() if layer.settings.r_max is None else (layer.settings.r_max,)))
                for _, layer in scaffold_layers(model)), default=0)


def training_batches(d, batch_size: int, k: int, seed: int):
    """k seeded training batches (X, y) of ``batch_size`` rows."""
    g = torch.Generator().manual_seed(seed)
    n = len(d.X_train)
    for _ in range(k):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
        yield d.X_train[idx], d.y_train[idx]


def float_input(X: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Inputs as the model reads them: floats as float32, token ids as they are."""
    return X.float() if X.is_floating_point() else X


def target_weights(model: nn.Module, plain: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of merge(model) that hold a scaffold's W (>= 2-D, not a trained parameter of
    ``model``): the target weights W = beta W_seed + s B A, by parameter name."""
    trained = dict(model.named_parameters())
    return {n: p for n, p in plain.named_parameters() if p.ndim >= 2 and n not in trained}
