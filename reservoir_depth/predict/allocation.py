"""Per-layer ranks r_l from per-layer predictions, at the adapter budget of uniform rank r, and the
ScaffoldConfig that trains them."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any, Mapping

import numpy as np
from torch import nn

from ..scaffold import ScaffoldConfig, merge
from .model import target_weights


def layer_dims(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each target weight W of a scaffolded ``model`` (W reshaped to (d_out, -1)), keyed
    as a predictor's ``per_layer_`` (the parameter names of merge(model))."""
    weights = target_weights(model, merge(model))
    if not weights:
        raise ValueError("the model has no scaffold weight (scaffold() it first)")
    return {n: (int(p[0].numel()), int(p.shape[0])) for n, p in weights.items()}


def _check_dims(name: str, d: Any) -> tuple[int, int]:
    ok = isinstance(d, (tuple, list)) and len(d) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in d)
    if not ok:
        raise ValueError(f"dims[{name!r}] must be (d_in, d_out), two ints >= 1, got {d!r}")
    return int(d[0]), int(d[1])


def allocate_ranks(per_layer: Mapping[str, float], dims: Mapping[str, tuple[int, int]], r: int) -> dict[str, int]:
    """Per-layer ranks r_l from per-layer predictions p_l at the adapter budget of uniform rank r.

    A layer of rank r_l trains r_l (d_in + d_out) adapter parameters (A: r_l x d_in, B: d_out x r_l) and
    r_l <= cap_l = min(d_in, d_out). The budget is that of every layer at min(r, cap_l):
    P = sum_l min(r, cap_l) (d_in + d_out). Target ranks t_l = min(lambda p_l, cap_l), with lambda set
    so that sum_l t_l (d_in + d_out) = P (water-filling over the caps; exact rational arithmetic). Then
    r_l = floor(t_l), and the leftover budget goes one rank at a time to the layer, among those below
    their cap that it still pays for, with the largest t_l - r_l (ties: the cheaper layer, then the
    larger p_l, then the name). So sum_l r_l (d_in + d_out) <= P, and the leftover is smaller than
    the cost of one more rank on any layer below its cap; a layer with p_i > p_j and
    d_in + d_out no larger than j's never gets fewer ranks than min(r_j, cap_i).
    Keys of ``per_layer`` and ``dims`` must be the same layers; p_l finite and >= 0 (all 0: every t_l = 0
    and the budget is spent by the leftover rule alone)."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"rank r must be an int >= 0, got {r!r}")
    if not isinstance(per_layer, Mapping) or not isinstance(dims, Mapping):
        raise ValueError(f"per_layer and dims must be mappings by layer name, got {type(per_layer).__name__} "
                         f"and {type(dims).__name__}")
    if not per_layer:
        raise ValueError("per_layer has no layer: nothing to allocate")
    unknown, missing = sorted(set(per_layer) - set(dims)), sorted(set(dims) - set(per_layer))
    if unknown or missing:
        raise ValueError(f"per_layer and dims must name the same layers: no dims for {unknown}, "
                         f"no prediction for {missing}")
    p: dict[str, Fraction] = {}
    for name, v in per_layer.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                or not math.isfinite(v) or v < 0:
            raise ValueError(f"per_layer[{name!r}] must be a finite number >= 0, got {v!r}")
        p[name] = Fraction(float(v))
    d = {name: _check_dims(name, dims[name]) for name in per_layer}
    cost = {n: d_in + d_out for n, (d_in, d_out) in d.items()}
    cap = {n: min(v) for n, v in d.items()}
    budget = sum(min(r, cap[n]) * cost[n] for n in d)
    # water-filling: layers whose share passes their cap are held at it, lambda refit on the rest
    capped: set[str] = set()
    while True:
        free = [n for n in d if n not in capped]
        weight = sum(p[n] * cost[n] for n in free)
        lam = (budget - sum(cap[n] * cost[n] for n in capped)) / weight if weight else Fraction(0)
        over = {n for n in free if lam * p[n] >= cap[n]}
        if not over:
            break
        capped |= over
    t = {n: Fraction(cap[n]) if n in capped else lam * p[n] for n in d}
    ranks = {n: math.floor(t[n]) for n in d}
    left = budget - sum(ranks[n] * cost[n] for n in d)
    while True:
        open_ = [n for n in d if ranks[n] < cap[n] and cost[n] <= left]
        if not open_:
            break
        n = min(open_, key=lambda n: (-(t[n] - ranks[n]), cost[n], -p[n], n))
        ranks[n] += 1
        left -= cost[n]
    return ranks


def ranks_config(ranks: Mapping[str, int], base: ScaffoldConfig | Mapping[str, Any] | None = None) -> ScaffoldConfig:
    """The ScaffoldConfig of per-layer ranks r_l (``allocate_ranks``; keys: the target weights' parameter
    names, "<module>.weight"): ``base`` (a ScaffoldConfig or its fields; default: the defaults) with
    r = max_l r_l and max_rank = {re.escape(module): r_l}, one exact pattern per layer. Each layer's
    scale is then s = alpha / r_l (alpha / sqrt(r_l) with rsLoRA): a layer given fewer ranks gets a
    larger s, as any capped layer does. A ``base`` with its own max_rank is refused."""
    caps = {}
    for name, v in ranks.items():
        if not (isinstance(name, str) and name.endswith(".weight")):
            raise ValueError(f"ranks are keyed by a target weight's parameter name '<module>.weight', got {name!r}")
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"ranks[{name!r}] must be an int >= 0, got {v!r}")
        caps[re.escape(name[:-len(".weight")])] = int(v)
    fields = base.to_dict() if isinstance(base, ScaffoldConfig) else dict(base or {})
    if isinstance(base, ScaffoldConfig):
        fields = {**fields, "spec": base.spec, "specs": dict(base.specs)}
    if fields.get("max_rank"):  # replacing them would drop a cap silently; keeping them, a layer has two
        raise ValueError(f"base already caps layers (max_rank={dict(fields['max_rank'])!r}): the allocated ranks "
                         f"set every layer's rank; give a base without max_rank")
    return ScaffoldConfig(**{**fields, "r": max(caps.values(), default=0), "max_rank": caps})
