"""What scaffold() passes over, and why: nothing linear-like is left frozen at its own init in silence.

"Every backbone weight comes from the seed" holds for the layers scaffold() replaces; any other module
that holds a weight matrix keeps the values it was built with, frozen unless ``trainable`` names it. The
survey names each such module with its reason:

- an output layer (the model's ``get_output_embeddings()``, a family's declared ``scaffold_head``, the
  config's ``exclude``) that is neither a target nor trainable: it stays at its random init, and a
  forgotten head trains to nothing;
- under "all-linear", every convolution and embedding (a registered type it does not take, as peft's
  "all-linear" does not): they keep their own unseeded init;
- under "all-linear", every linear-like module it cannot take: a parametrized weight (weight_norm,
  spectral_norm, any torch.nn.utils.parametrize), an nn.Linear subclass whose forward is not the plain
  affine map, a module holding weight matrices of a type no layer type handles (MoE experts' fused 3-D
  weights, a router's matrix).

scaffold() warns with the list (PassedOverWarning) or, with strict=True, raises it.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn
from torch.nn.utils import parametrize

from .config import ALL_LINEAR, ScaffoldConfig, matches
from .registry import layer_type


class PassedOverWarning(UserWarning):
    """scaffold() leaves a linear-like module or an output layer frozen at its own init (see survey.py)."""


def refusal(module: nn.Module) -> str | None:
    """Why ``module`` cannot be scaffolded although it holds a weight matrix; None if a layer type takes it
    (or it holds no weight matrix: norms, containers of other layers)."""
    if parametrize.is_parametrized(module) and (isinstance(module, nn.Linear) or layer_type(module) is not None):
        names = ", ".join(f"{k} ({', '.join(type(p).__name__ for p in ps)})"
                          for k, ps in module.parametrizations.items())
        return (f"its {names} is parametrized (torch.nn.utils.parametrize): merge() could not write "
                f"W = beta W_seed + s B A back through the parametrization; remove it first "
                f"(torch.nn.utils.parametrize.remove_parametrizations(module, name)) or leave the module out")
    if layer_type(module) is not None:
        return None
    if isinstance(module, nn.Linear):
        return (f"an nn.Linear subclass ({type(module).__name__}) whose forward is not the plain affine map "
                f"F.linear(x, W, b) (checked on a probe input)")
    if isinstance(module, (nn.Embedding, nn.modules.conv._ConvNd)):
        return None  # not linear-like: "all-linear" never takes convolutions or embeddings
    weights = [(k, tuple(p.shape)) for k, p in module.named_parameters(recurse=False)
               if p.dim() >= 2 and min(p.shape) > 1]
    if not weights:
        return None
    shapes = ", ".join(f"{k} {s}" for k, s in weights)
    fused = " (fused MoE expert weights)" if any(len(s) == 3 for _, s in weights) else ""
    return f"{type(module).__name__} holds weight matrices {shapes}{fused} of a type no layer type handles"


def _linear_like(module: nn.Module) -> bool:
    """Not a registered type that "all-linear" never takes (a convolution, an embedding)."""
    entry = layer_type(module)
    return entry is None or entry.linear


def output_layers(model: nn.Module, config: ScaffoldConfig) -> list[tuple[str, str]]:
    """(name, how it is declared) of the model's output layers: get_output_embeddings(), the family's
    ``scaffold_head`` patterns, the config's ``exclude`` patterns. Never "the last linear registered"."""
    get = getattr(model, "get_output_embeddings", None)
    out = get() if callable(get) else None
    head = getattr(model, "scaffold_head", ())
    head = (head,) if isinstance(head, str) else tuple(head)
    found: dict[str, str] = {}
    for n, m in model.named_modules():
        if not n:
            continue
        if isinstance(out, nn.Module) and m is out:
            found.setdefault(n, "the output layer (get_output_embeddings())")
        elif matches(n, head):
            found.setdefault(n, f"the family's declared head (scaffold_head={head!r})")
        elif matches(n, config.exclude):
            found.setdefault(n, f"an output layer (exclude={list(config.exclude)!r})")
    return list(found.items())


def _trainable_ids(model: nn.Module, trainable: Sequence[str]) -> set[int]:
    return {id(p) for n, m in model.named_modules() if n and matches(n, trainable) for p in m.parameters()}


def passed_over(model: nn.Module, config: ScaffoldConfig, targets: Sequence[str]) -> list[tuple[str, str]]:
    """(name, reason) of every module left frozen at its own init that the user should hear about: output
    layers neither targeted nor trainable and, under "all-linear", every linear-like module it cannot take.
    ``targets``: the names scaffold() replaces (their submodules go with them)."""
    trained = _trainable_ids(model, config.trainable)
    heads = dict(output_layers(model, config))
    report: list[tuple[str, str]] = []

    def covered(n: str) -> bool:
        return any(n == t or n.startswith(t + ".") for t in (*targets, *(r for r, _ in report)))

    for n, m in model.named_modules():
        if not n or covered(n):
            continue
        params = list(m.parameters())
        if params and all(id(p) in trained for p in params):
            continue  # left to trainable
        if n in heads:
            report.append((n, f"{heads[n]} is neither adapted nor trainable: it stays frozen at its random "
                              f"init and trains to nothing; name it in trainable= (or target it)"))
        elif config.target_modules == (ALL_LINEAR,) and _linear_like(m) and (why := refusal(m)) is not None:
            report.append((n, why))
        elif config.target_modules == (ALL_LINEAR,) and not _linear_like(m):
            report.append((n, f"a {type(m).__name__} left at its own (unseeded) init: \"all-linear\" takes linear-like "
                              f"layers only, as peft's does; name it in target_modules to scaffold it, or in "
                              f"trainable= to train it"))
    return report


def describe(report: Sequence[tuple[str, str]]) -> str:
    """A report [(name, reason), ...] as one line: "name: reason; name: reason"."""
    return "; ".join(f"{n}: {why}" for n, why in report)
