"""scaffold(): replace a model's target layers by frozen scaffold layers, eq. (1); merge() back.

Target selection (every refusal of ScaffoldConfig's docstring), the model-wide operations on scaffold
layers (betas, set_seed_dtype, advance) and the parameter counts the paper reports.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from .base import ScaffoldLayer, Scaffolded
from .config import ALL_LINEAR, Resolver, ScaffoldConfig, matches
from .registry import _type_names, is_container, layer_type
from .survey import PassedOverWarning, describe, output_layers, passed_over, refusal

def _outermost(targets: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Targets less those inside a targeted container (an nn.MultiheadAttention scaffolds its out_proj)."""
    containers = [n for n, m in targets if is_container(m)]
    return [(n, m) for n, m in targets if not any(n.startswith(c + ".") for c in containers)]


def _trainable_owner(name: str, trainable: Sequence[str]) -> tuple[str, str] | None:
    """(module, pattern): the outermost of ``name`` and its parents that a ``trainable`` pattern matches."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        for p in trainable:
            if matches(prefix, (p,)):
                return prefix, p
    return None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _describe(pairs: Sequence[tuple[str, nn.Module]]) -> str:
    return ", ".join(f"{n} ({type(m).__name__})" for n, m in pairs)


def _unmatched(patterns: Sequence[str], names: Sequence[str]) -> list[str]:
    return [p for p in patterns if not any(matches(n, (p,)) for n in names)]


def _select_targets(model: nn.Module, config: ScaffoldConfig) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs to replace; every refusal of ScaffoldConfig's docstring is raised here."""
    if getattr(model, "scaffold_config", None) is not None or any(isinstance(m, Scaffolded) for m in model.modules()):
        raise ValueError("the model is already scaffolded: scaffold a fresh instance (or load() an adapter file "
                         "into a fresh instance)")
    named = [(n, m) for n, m in model.named_modules() if n]
    names = [n for n, _ in named]
    aliases: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        if n:
            aliases.setdefault(id(m), []).append(n)
    all_names = [n for ns in aliases.values() for n in ns]
    missing = _unmatched(config.trainable, all_names)
    if missing:
        raise ValueError(f"trainable patterns {missing} match no module; modules: {names}")
    missing = _unmatched(config.exclude, all_names)
    if missing:
        raise ValueError(f"exclude patterns {missing} match no module; modules: {names}")
    heads = dict(output_layers(model, config))
    if config.target_modules == (ALL_LINEAR,):
        linear = [(n, m) for n, m in named if (t := layer_type(m)) is not None and t.linear and refusal(m) is None]
        targets = _outermost([(n, m) for n, m in linear if n not in heads and not _trainable_owner(n, config.trainable)])
        if not targets:
            report = passed_over(model, config, [])
            raise ValueError(f"target_modules='all-linear' finds no layer it can scaffold besides the output layers "
                             f"{sorted(heads)}{'; passed over: ' + describe(report) if report else ''}; modules: "
                             f"{_describe(named)}")
    else:
        missing = _unmatched(config.target_modules, all_names)
        if missing:
            raise ValueError(f"target_modules patterns {missing} match no module; modules: {names}")
        matched = [(n, m) for n, m in model.named_modules(remove_duplicate=False) if n and matches(n, config.target_modules)]
        unsupported = [(n, m) for n, m in matched if refusal(m) is not None
                       or (layer_type(m) is None and any(True for _ in m.parameters(recurse=False)))]
        if unsupported:
            why = {n: r for n, m in unsupported if (r := refusal(m)) is not None}
            named_why = ", ".join(f"{n} ({type(m).__name__}){': ' + why[n] if n in why else ''}" for n, m in unsupported)
            raise ValueError(f"target_modules {list(config.target_modules)} match modules that cannot be scaffolded: "
                             f"{named_why}; scaffoldable types: "
                             f"{_type_names()} (register_layer_type adds one). "
                             f"Narrow the patterns, e.g. to the names above that should stay as they are.")
        targets = [(n, m) for n, m in matched if layer_type(m) is not None]
        targets = _outermost(targets)
        both = [n for n, _ in targets if n in heads and matches(n, config.exclude)]
        if both:
            raise ValueError(f"layers {both} are both scaffold targets and in exclude={list(config.exclude)}")
        if not targets:
            raise ValueError(f"target_modules {list(config.target_modules)} match no scaffoldable layer "
                             f"({_type_names()}); modules: {_describe(named)}")
    for n, m in targets:
        if len(aliases[id(m)]) > 1:
            raise ValueError(f"layer {n!r} is reachable under several names {aliases[id(m)]}: a shared module "
                             f"cannot be replaced under one name only")
        owner = _trainable_owner(n, config.trainable)
        if owner and owner[0] == n:
            raise ValueError(f"layer {n!r} is both a scaffold target and in trainable={list(config.trainable)}")
        if owner:
            raise ValueError(f"layer {n!r} is a scaffold target inside trainable module {owner[0]!r} (pattern "
                             f"{owner[1]!r}): its parameters would be frozen; narrow target_modules or trainable")
        inner = [d for d in all_names if d.startswith(n + ".") and matches(d, config.trainable)]
        if inner:
            raise ValueError(f"trainable modules {inner} lie inside scaffold target {n!r}, which replaces them; "
                             f"narrow trainable or target_modules")
        parent = model.get_submodule(n.rpartition(".")[0]) if "." in n else model
        if is_container(parent):
            raise ValueError(f"layer {n!r} belongs to a {type(parent).__name__}, which reads its weight directly; "
                             f"it cannot be scaffolded on its own")
    owners: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(n)
    for n, m in targets:
        for local, p in m.named_parameters():
            others = [o for o in owners[id(p)] if o != f"{n}.{local}"]
            if others:
                raise ValueError(f"layer {n!r}: {local} is tied to {others} (shared tensor); scaffolding it would "
                                 f"untie them. Leave {n!r} out of target_modules (e.g. train it with trainable=) ")
    return targets


def scaffold(model: nn.Module, config: ScaffoldConfig, strict: bool = False) -> nn.Module:
    """Replace the target layers of ``model`` (in place) by frozen scaffold layers, eq. (1).

    Every other parameter is frozen unless its module matches ``config.trainable``.
    Each new layer takes the replaced layer's dtype and device. Nothing is changed when
    a check fails. Returns the model, with ``model.scaffold_config`` set.

    What it passes over (survey.py: an output layer neither adapted nor trainable; under "all-linear",
    every linear-like module it cannot take, with the reason) is one PassedOverWarning, or with
    ``strict=True`` a ValueError raised before anything changes.
    """
    if not isinstance(strict, bool):
        raise ValueError(f"strict must be True or False, got {strict!r}")
    targets = _select_targets(model, config)
    report = passed_over(model, config, [n for n, _ in targets])
    if report and strict:
        raise ValueError(f"scaffold(strict=True): these modules would stay frozen at their own init: "
                         f"{describe(report)}")
    # each target's layers get their settings resolved here, once (the layer types see no config, no pattern)
    wrapped = [(n, layer_type(m).layer.from_module(m, n, Resolver(config, n))) for n, m in targets]
    layers = [layer for _, unit in wrapped for layer in unit.modules() if isinstance(layer, ScaffoldLayer)]
    for what, attr in (("specs", "spec_pattern"), ("max_rank", "rank_pattern")):
        unused = [p for p in getattr(config, what) if p not in {getattr(layer.settings, attr) for layer in layers}]
        if unused:
            raise ValueError(f"{what} patterns {unused} match no scaffold layer; layers: {[l.name for l in layers]}")
    for p in model.parameters():
        p.requires_grad_(False)
    for n, m in model.named_modules():
        if n and matches(n, config.trainable):
            for p in m.parameters():
                p.requires_grad_(True)
    for n, layer in wrapped:
        _set_submodule(model, n, layer)
    model.scaffold_config = config
    if report:
        warnings.warn(f"scaffold() leaves {len(report)} module(s) frozen at their own init: {describe(report)}",
                      PassedOverWarning, stacklevel=2)
    return model


def scaffold_layers(model: nn.Module) -> Iterator[tuple[str, ScaffoldLayer]]:
    """(qualified name, layer) of every scaffold layer, in module order."""
    for n, m in model.named_modules():
        if isinstance(m, ScaffoldLayer):
            yield n, m


def _units(model: nn.Module) -> list[tuple[str, Scaffolded]]:
    """(name, module) of every Scaffolded module not inside another: what merge() replaces."""
    units: list[tuple[str, Scaffolded]] = []
    for n, m in model.named_modules():
        if isinstance(m, Scaffolded) and not any(n.startswith(u + ".") for u, _ in units):
            units.append((n, m))
    return units


def betas(model: nn.Module) -> dict[str, float]:
    """beta of every scaffold layer, by layer name."""
    return {n: float(m.beta.detach()) for n, m in scaffold_layers(model)}


def set_seed_dtype(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """Hold every scaffold layer's W_seed in ``dtype`` (ScaffoldLayer.set_seed_dtype), e.g. torch.bfloat16
    for bf16 autocast: half the memory and no cast of W_seed per step; None holds the draws in the parameter
    dtype again. Call it after moving or converting the model. Returns the model."""
    for _, m in scaffold_layers(model):
        m.set_seed_dtype(dtype)
    return model


def advance(model: nn.Module, epoch: int | None = None, step: int | None = None) -> None:
    """Move every destabilised scaffold to this epoch / step (see ScaffoldConfig.schedule)."""
    for _, m in scaffold_layers(model):
        m.advance(epoch=epoch, step=step)


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameters; W_seed (a buffer) counts in total, as in the paper."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} / total {self.total:,} ({100 * self.fraction:.2f}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameters of a model (scaffolded or not); W_seed counts in total."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    total += sum(m.W_seed.numel() for _, m in scaffold_layers(model))
    return ParameterCount(trainable, total)


def merge(model: nn.Module) -> nn.Module:
    """A plain torch module with W = beta * W_seed + s * B A in every scaffold layer.

    All parameters of the merged copy are trainable: it is also the fully trained
    twin's starting point (full training started from the same scaffold).
    """
    plain = copy.deepcopy(model)
    for n, m in _units(plain):
        _set_submodule(plain, n, m.to_plain())
    for p in plain.parameters():
        p.requires_grad_(True)
    if hasattr(plain, "scaffold_config"):
        del plain.scaffold_config
    return plain
