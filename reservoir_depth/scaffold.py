"""Frozen-scaffold layers with a learned scale beta and LoRA adapters.

Eq. (1) of the design:

    y = beta * W_seed x + s * B (A x) + b,   s = alpha / r  (rsLoRA: alpha / sqrt(r))

W_seed is a non-persistent buffer drawn from (spec, root seed, layer name): it is
never trained and never stored in a checkpoint. A is drawn kaiming-uniform
(a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))) from the same seed, B = 0
and beta = 1, so at step 0 the network is exactly the random reservoir.
"""

from __future__ import annotations

import copy
import math
import numbers
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .distributions import DistributionSpec, as_spec, draw, is_number, layer_seed, rng_for

BIAS_MODES = ("keep", "none", "frozen", "trainable")
SCHEDULES = ("static", "epoch", "step", "batch")
ALL_LINEAR = "all-linear"


def _patterns(value: Any, what: str) -> tuple[str, ...]:
    """Module-name patterns: a str is ONE pattern (never its characters); each must be a str and a valid regex."""
    if isinstance(value, str):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{what} must be a pattern (str) or a list of patterns, got {value!r}") from None
    for p in items:
        if not isinstance(p, str):
            raise ValueError(f"{what}: every pattern must be a str, got {p!r} in {list(items)!r}")
        if p == ALL_LINEAR:
            if what != "target_modules" or len(items) != 1:
                raise ValueError(f"{what}: {ALL_LINEAR!r} stands alone in target_modules, got {list(items)!r}")
            continue
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"{what}: pattern '{p}' is not a valid regular expression ({e})") from None
    return items


@dataclass(frozen=True)
class ScaffoldConfig:
    """Everything that turns a torch model into a LottaLoRA model.

    target_modules: the layers to replace: "all-linear" (the default: every linear-like
        layer except the output layer, as peft) or names / regexes, peft's rule: exact
        name, name suffix after a dot, or regex full match. A str is one pattern. Every
        pattern must match; a matched module of a type no LAYER_TYPES entry handles is an
        error, never a silent skip.
    trainable: names or regexes of other modules whose parameters stay trainable
        (heads, embeddings, norms); each must match a module. Everything else is frozen.
    r, alpha, rslora: LoRA rank and scale s = alpha / r, or alpha / sqrt(r).
    bias: "keep" (default) draws a frozen bias from the seed only where the replaced layer
        had one, so merge() gives a state_dict of the original class; "frozen" and
        "trainable" give every layer a seeded bias (frozen / trained); "none" drops it.
        Seeded biases are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default law).
    schedule, k: the destabilised scaffolds of Sec. 4 of the paper. "static" (the
        default) keeps W_seed; "epoch" redraws it every epoch; "step" cycles k
        scaffolds, one per optimiser step; "batch" splits each training batch into
        k sub-batches, each through its own scaffold.
    """

    target_modules: Sequence[str] | str = (ALL_LINEAR,)
    r: int = 8
    alpha: float = 16.0
    rslora: bool = False
    spec: DistributionSpec = field(default_factory=DistributionSpec)
    root_seed: int = 0
    bias: str = "keep"
    trainable: Sequence[str] | str = ()
    schedule: str = "static"
    k: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", as_spec(self.spec))
        object.__setattr__(self, "target_modules", _patterns(self.target_modules, "target_modules"))
        object.__setattr__(self, "trainable", _patterns(self.trainable, "trainable"))
        if not self.target_modules:
            raise ValueError("target_modules is empty: give 'all-linear' or at least one pattern")
        if not isinstance(self.r, numbers.Integral) or isinstance(self.r, bool) or self.r < 0:
            raise ValueError(f"rank r must be an int >= 0, got {self.r!r}")
        object.__setattr__(self, "r", int(self.r))
        if not (is_number(self.alpha) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if not isinstance(self.rslora, bool):
            raise ValueError(f"rslora must be True or False, got {self.rslora!r}")
        if self.bias not in BIAS_MODES:
            raise ValueError(f"bias must be one of {BIAS_MODES}, got {self.bias!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not isinstance(self.k, numbers.Integral) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"k (number of scaffolds) must be an int >= 1, got {self.k!r}")
        if self.schedule == "static" and self.k != 1:
            raise ValueError(f"k={self.k} needs a destabilised schedule ('step' or 'batch'), got 'static'")

    @property
    def s(self) -> float:
        """LoRA scale s = alpha / r or alpha / sqrt(r) (rsLoRA); 0 at r = 0."""
        if self.r == 0:
            return 0.0
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec"] = self.spec.to_dict()
        d["target_modules"], d["trainable"] = list(self.target_modules), list(self.trainable)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScaffoldConfig":
        return cls(**{**d, "spec": DistributionSpec.from_dict(d["spec"])})


def matches(name: str, patterns: Sequence[str]) -> bool:
    """peft's target_modules rule: exact name, '.'-suffix, or regex full match."""
    return any(name == p or name.endswith("." + p) or re.fullmatch(p, name) for p in patterns)


def _skeleton(module: nn.Module) -> nn.Module:
    """A copy of ``module`` on the meta device (no memory): the class and attributes merge() rebuilds."""
    memo: dict[int, Any] = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
                            for p in module.parameters(recurse=False)}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in module.buffers(recurse=False)})
    return copy.deepcopy(module, memo)


class ScaffoldLayer(nn.Module):
    """Shared machinery of a frozen-scaffold layer; subclasses give the geometry.

    ``trained`` declares, in one place, the names of the tensors this layer trains and saves
    (ScaffoldConfig.trainable is a different thing: patterns of other modules that train);
    ``frozen()`` are the other parameters (a seeded bias), regenerated from the seed.
    Every tensor takes the replaced layer's dtype and device.
    """

    trained: tuple[str, ...] = ("beta", "lora_A", "lora_B")

    def __init__(self, weight_shape: tuple[int, ...], name: str, config: ScaffoldConfig, template: nn.Module,
                 has_bias: bool = True, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 ) -> None:
        super().__init__()
        self.name, self.config, self.weight_shape = name, config, tuple(weight_shape)
        dtype = template.weight.dtype if dtype is None else dtype
        device = template.weight.device if device is None else device
        object.__setattr__(self, "_template", _skeleton(template))  # not a submodule: no state
        d_out, d_in = weight_shape[0], int(np.prod(weight_shape[1:]))
        r = config.r
        if r > min(d_in, d_out):
            raise ValueError(f"rank r={r} for layer {name!r} must lie in [0, min(d_in, d_out)] = [0, {min(d_in, d_out)}]")
        self.r, self.s = r, config.s
        self.register_buffer("W_seed", self._draw(0, dtype, device), persistent=False)
        self.register_buffer("_stack", None, persistent=False)
        self.draw_id: Any = 0  # the W_seed in use: 0 (canonical), ["epoch", e] or ["cycle", i]
        self.beta = nn.Parameter(torch.ones((), dtype=dtype, device=device))
        self.lora_A = nn.Parameter(self._uniform("lora_A", (r, d_in), 1.0 / math.sqrt(d_in), dtype).to(device))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r, dtype=dtype, device=device))
        if config.bias == "none" or (config.bias == "keep" and not has_bias):
            self.bias = None
        else:
            b = self._uniform("bias", (d_out,), 1.0 / math.sqrt(d_in), dtype).to(device)
            self.bias = nn.Parameter(b, requires_grad=config.bias == "trainable")
            if config.bias == "trainable":
                self.trained = (*type(self).trained, "bias")
        if config.schedule in ("step", "batch") and config.k > 1:
            self._stack = torch.stack([self.W_seed] + [self._draw(("cycle", i), dtype, device)
                                                       for i in range(1, config.k)])

    def frozen(self) -> tuple[str, ...]:
        """Names of this layer's parameters that are not trained (regenerated from the seed)."""
        return tuple(n for n, _ in self.named_parameters(recurse=False) if n not in self.trained)

    # -- seeded draws -------------------------------------------------------------------
    def seed(self, *salt: Any) -> int:
        return layer_seed(self.config.root_seed, self.name, *salt)

    def _draw(self, which: Any, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """Scaffold 0 is the canonical W_seed; others are seeded by (schedule, index). Drawn on
        ``device`` itself (a meta layer holds no values)."""
        if torch.device(device).type == "meta":
            return torch.empty(self.weight_shape, dtype=dtype, device="meta")
        salt = () if which == 0 else tuple(which)
        return draw(self.config.spec, self.weight_shape, self.seed("W_seed", *salt), dtype=dtype, device=device)

    def _uniform(self, what: str, shape: tuple[int, ...], bound: float, dtype: torch.dtype) -> torch.Tensor:
        u = rng_for(self.seed(what)).uniform(-bound, bound, shape)
        return torch.from_numpy(u).to(dtype)

    # -- destabilised schedules -----------------------------------------------------------
    def _check_draw_id(self, draw_id: Any) -> Any:
        """``draw_id`` in canonical form (0 or [kind, index]) if this layer's schedule produces it."""
        sched, k = self.config.schedule, self.config.k
        if isinstance(draw_id, numbers.Integral) and not isinstance(draw_id, bool) and draw_id == 0:
            return 0
        if isinstance(draw_id, (list, tuple)) and len(draw_id) == 2:
            kind, i = draw_id
            ok_i = isinstance(i, numbers.Integral) and not isinstance(i, bool)
            if ok_i and kind == "epoch" and sched == "epoch" and i >= 0:
                return 0 if i == 0 else ["epoch", int(i)]
            if ok_i and kind == "cycle" and sched == "step" and 0 <= i < k:
                return 0 if i == 0 else ["cycle", int(i)]
        allowed = {"epoch": "0 or ['epoch', e >= 1]", "step": f"0 or ['cycle', i] with 1 <= i < k = {k}"}
        raise ValueError(f"layer {self.name!r}: draw id {draw_id!r} is not one the {sched!r} schedule produces; "
                         f"allowed: {allowed.get(sched, '0')}")

    def set_draw(self, draw_id: Any) -> None:
        """Point W_seed at the draw ``draw_id`` (0, ["epoch", e] or ["cycle", i]), regenerated from the seed."""
        draw_id = self._check_draw_id(draw_id)
        if draw_id == 0:
            w = self._stack[0] if self._stack is not None else self._draw(0, self.W_seed.dtype, self.W_seed.device)
        elif draw_id[0] == "cycle":
            w = self._stack[draw_id[1]]
        else:
            w = self._draw(tuple(draw_id), self.W_seed.dtype, self.W_seed.device)
        self.W_seed = w.to(self.W_seed.device)
        self.draw_id = draw_id

    def advance(self, epoch: int | None = None, step: int | None = None) -> None:
        """Point W_seed at the scaffold of this epoch / step (no-op when static)."""
        sched = self.config.schedule
        if sched == "epoch" and epoch is not None:
            self.set_draw(["epoch", epoch])
        elif sched == "step" and step is not None and self._stack is not None:
            self.set_draw(["cycle", step % self.config.k])

    # -- forward --------------------------------------------------------------------------
    def base(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adapter(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _bias_shape(self) -> tuple[int, ...]:
        return (-1,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (1), computed in the dtype of beta W_seed x (autocast's choice), as the fused path."""
        if self.config.schedule == "batch" and self.training and self._stack is not None:
            parts = x.tensor_split(self.config.k, dim=0)  # always k parts (some empty if batch < k)
            h = torch.cat([self.base(p, self._stack[i]) for i, p in enumerate(parts)])
        else:
            h = self.base(x, self.W_seed)
        y = h * self.beta.to(h.dtype)
        if self.r:
            y = y + self.s * self.adapter(x).to(h.dtype)
        if self.bias is not None:
            y = y + self.bias.to(h.dtype).view(self._bias_shape())
        return y

    # -- merged view --------------------------------------------------------------------------
    def delta(self) -> torch.Tensor:
        """The adapter update s * B A, shaped like W_seed."""
        return (self.s * (self.lora_B @ self.lora_A)).view(self.weight_shape)

    def merged_weight(self) -> torch.Tensor:
        """W = beta * W_seed + s * B A."""
        return self.beta * self.W_seed + self.delta()

    def to_plain(self) -> nn.Module:
        """The replaced layer's own class holding W = beta W_seed + s B A and this layer's bias."""
        w = self.W_seed  # the layer's current dtype and device (it may have moved since scaffold())
        m = copy.deepcopy(self._template).to_empty(device=w.device).to(w.dtype)
        with torch.no_grad():
            m.weight = nn.Parameter(self.merged_weight().detach().view(m.weight.shape).clone())
            if self.bias is None:
                m.register_parameter("bias", None)
            else:
                m.bias = nn.Parameter(self.bias.detach().to(w.dtype).clone())
        return m

    def extra_repr(self) -> str:
        c = self.config
        return f"{self.name!r}, shape={self.weight_shape}, r={self.r}, s={self.s:g}, spec={c.spec.name}, schedule={c.schedule}"


class _LottaLinear(torch.autograd.Function):
    """Eq. (1) for a Linear layer with a hand-written backward.

    No weight gradient for W_seed, and nothing saved but x and u = A x: the gradient
    of beta, <g, W x>, is computed as <g W, x>, where g W is needed for dL/dx anyway.
    Every product runs in the dtype autocast chose for x W^T (bf16 on CUDA).
    """

    @staticmethod
    def forward(ctx, x, W, beta, A, B, s: float):
        y = x @ W.T  # autocast decides the compute dtype here
        dt = y.dtype
        u = x.to(dt) @ A.to(dt).T
        y.mul_(beta.to(dt)).addmm_(u, B.to(dt).T, alpha=s)  # in place: one output buffer
        ctx.save_for_backward(x, W, beta, A, B, u)
        ctx.s = s
        return y

    @staticmethod
    def backward(ctx, g):
        x0, W, beta, A0, B0, u = ctx.saved_tensors
        s, dt = ctx.s, g.dtype  # compute in the gradient's dtype, return each grad in its input's
        x, W, A, B = x0.to(dt), W.to(dt), A0.to(dt), B0.to(dt)
        gW = g @ W
        acc = torch.promote_types(dt, torch.float32)
        grad_beta = torch.dot(gW.reshape(-1).to(acc), x.reshape(-1).to(acc)).to(beta.dtype)
        gB = g @ B
        grad_x = gW.mul_(beta.to(dt)).addmm_(gB, A, alpha=s)
        grad_A = (s * gB.T @ x).to(A0.dtype)
        grad_B = (s * g.T @ u.to(dt)).to(B0.dtype)
        return grad_x.to(x0.dtype), None, grad_beta, grad_A, grad_B, None


class ScaffoldLinear(ScaffoldLayer):
    """nn.Linear geometry: W_seed (d_out, d_in), A (r, d_in), B (d_out, r)."""

    def __init__(self, in_features: int, out_features: int, name: str, config: ScaffoldConfig,
                 template: nn.Module | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        """``template``: the nn.Linear replaced (its class, bias structure, dtype and device);
        without one, a float32 CPU nn.Linear with a bias (or ``dtype`` / ``device``)."""
        if template is None:
            template = nn.Linear(in_features, out_features, device="meta", dtype=dtype)
            device = "cpu" if device is None else device
        super().__init__((out_features, in_features), name, config, template, has_bias=template.bias is not None,
                         dtype=dtype, device=device)
        self.in_features, self.out_features = in_features, out_features

    @classmethod
    def from_module(cls, module: nn.Linear, name: str, config: ScaffoldConfig) -> "ScaffoldLinear":
        return cls(module.in_features, module.out_features, name, config, template=module)

    def base(self, x, w):
        return F.linear(x, w)

    def adapter(self, x):
        return F.linear(F.linear(x, self.lora_A), self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r == 0 or (self.config.schedule == "batch" and self.training and self._stack is not None):
            return super().forward(x)
        shape = x.shape
        y = _LottaLinear.apply(x.reshape(-1, shape[-1]), self.W_seed, self.beta, self.lora_A, self.lora_B, self.s)
        y = y.reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class ScaffoldConv2d(ScaffoldLayer):
    """nn.Conv2d geometry (groups = 1): A is a conv with the kernel, B a 1x1 conv (as peft)."""

    def __init__(self, conv: nn.Conv2d, name: str, config: ScaffoldConfig) -> None:
        if conv.groups != 1:
            raise ValueError(f"layer {name!r}: grouped convolutions (groups={conv.groups}) are not supported")
        if conv.padding_mode != "zeros":
            raise ValueError(f"layer {name!r}: padding_mode={conv.padding_mode!r}; only 'zeros' is supported")
        super().__init__(tuple(conv.weight.shape), name, config, conv, has_bias=conv.bias is not None)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    @classmethod
    def from_module(cls, module: nn.Conv2d, name: str, config: ScaffoldConfig) -> "ScaffoldConv2d":
        return cls(module, name, config)

    def _conv(self, x, w):
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation)

    def base(self, x, w):
        return self._conv(x, w)

    def adapter(self, x):
        a = self.lora_A.view(self.r, *self.weight_shape[1:])
        return F.conv2d(self._conv(x, a), self.lora_B[:, :, None, None])

    def _bias_shape(self):
        return (1, -1, 1, 1)


# ----------------------------------------------------------------------------- the layer-type registry

@dataclass(frozen=True)
class LayerType:
    """A module class that can be scaffolded: ``layer.from_module(module, name, config)`` wraps it;
    ``linear``: part of target_modules="all-linear"."""

    module: type[nn.Module]
    layer: type[ScaffoldLayer]
    linear: bool = False


LAYER_TYPES: dict[type[nn.Module], LayerType] = {}


def register_layer_type(entry: LayerType) -> LayerType:
    """Add a scaffoldable module class (see LayerType); a class can be registered once."""
    if entry.module in LAYER_TYPES:
        raise ValueError(f"layer type {entry.module.__name__} is already registered")
    LAYER_TYPES[entry.module] = entry
    return entry


register_layer_type(LayerType(nn.Linear, ScaffoldLinear, linear=True))
register_layer_type(LayerType(nn.Conv2d, ScaffoldConv2d))

# Parents that read a child's weight directly instead of calling it: scaffolding the child is wrong.
_OPAQUE_PARENTS: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)


def layer_type(module: nn.Module) -> LayerType | None:
    """The registry entry for ``module``, or None. A subclass counts only if it keeps its
    registered base's forward (a subclass with its own forward computes something else)."""
    for cls in type(module).__mro__:
        if cls in LAYER_TYPES:
            return LAYER_TYPES[cls] if type(module).forward is cls.forward else None
    return None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _describe(pairs: Sequence[tuple[str, nn.Module]]) -> str:
    return ", ".join(f"{n} ({type(m).__name__})" for n, m in pairs)


def _output_layer(model: nn.Module, linear: Sequence[tuple[str, nn.Module]]) -> nn.Module | None:
    """The output layer "all-linear" leaves out: get_output_embeddings() where the model has
    it (transformers), else the last linear-like module in registration order."""
    get = getattr(model, "get_output_embeddings", None)
    out = get() if callable(get) else None
    if isinstance(out, nn.Module):
        return out
    return linear[-1][1] if linear else None


def _unmatched(patterns: Sequence[str], names: Sequence[str]) -> list[str]:
    return [p for p in patterns if not any(matches(n, (p,)) for n in names)]


def _select_targets(model: nn.Module, config: ScaffoldConfig) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs to replace; every refusal of ScaffoldConfig's docstring is raised here."""
    if getattr(model, "scaffold_config", None) is not None or any(isinstance(m, ScaffoldLayer) for m in model.modules()):
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
    if config.target_modules == (ALL_LINEAR,):
        linear = [(n, m) for n, m in named if (t := layer_type(m)) is not None and t.linear]
        out = _output_layer(model, linear)
        targets = [(n, m) for n, m in linear if m is not out and not matches(n, config.trainable)]
        if not targets:
            raise ValueError(f"target_modules='all-linear' finds no linear layer besides the output layer; modules: "
                             f"{_describe(named)}")
    else:
        missing = _unmatched(config.target_modules, all_names)
        if missing:
            raise ValueError(f"target_modules patterns {missing} match no module; modules: {names}")
        matched = [(n, m) for n, m in model.named_modules(remove_duplicate=False) if n and matches(n, config.target_modules)]
        unsupported = [(n, m) for n, m in matched if layer_type(m) is None and any(True for _ in m.parameters(recurse=False))]
        if unsupported:
            raise ValueError(f"target_modules {list(config.target_modules)} match modules that cannot be scaffolded: "
                             f"{_describe(unsupported)}; scaffoldable types: "
                             f"{', '.join(t.__name__ for t in LAYER_TYPES)} (register_layer_type adds one). "
                             f"Narrow the patterns, e.g. to the names above that should stay as they are.")
        targets = [(n, m) for n, m in matched if layer_type(m) is not None]
        if not targets:
            raise ValueError(f"target_modules {list(config.target_modules)} match no scaffoldable layer "
                             f"({', '.join(t.__name__ for t in LAYER_TYPES)}); modules: {_describe(named)}")
    for n, m in targets:
        if len(aliases[id(m)]) > 1:
            raise ValueError(f"layer {n!r} is reachable under several names {aliases[id(m)]}: a shared module "
                             f"cannot be replaced under one name only")
        if matches(n, config.trainable):
            raise ValueError(f"layer {n!r} is both a scaffold target and in trainable={list(config.trainable)}")
        parent = model.get_submodule(n.rpartition(".")[0]) if "." in n else model
        if isinstance(parent, _OPAQUE_PARENTS):
            raise ValueError(f"layer {n!r} belongs to a {type(parent).__name__}, which reads its weight directly; "
                             f"it cannot be scaffolded on its own")
    owners: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(n)
    for n, m in targets:
        for local, p in m.named_parameters(recurse=False):
            others = [o for o in owners[id(p)] if o != f"{n}.{local}"]
            if others:
                raise ValueError(f"layer {n!r}: {local} is tied to {others} (shared tensor); scaffolding it would "
                                 f"untie them. Leave {n!r} out of target_modules (e.g. train it with trainable=) ")
    return targets


def scaffold(model: nn.Module, config: ScaffoldConfig) -> nn.Module:
    """Replace the target layers of ``model`` (in place) by frozen scaffold layers, eq. (1).

    Every other parameter is frozen unless its module matches ``config.trainable``.
    Each new layer takes the replaced layer's dtype and device. Nothing is changed when
    a check fails. Returns the model, with ``model.scaffold_config`` set.
    """
    targets = _select_targets(model, config)
    wrapped = [(n, layer_type(m).layer.from_module(m, n, config)) for n, m in targets]
    for p in model.parameters():
        p.requires_grad_(False)
    for n, m in model.named_modules():
        if n and matches(n, config.trainable):
            for p in m.parameters():
                p.requires_grad_(True)
    for n, layer in wrapped:
        _set_submodule(model, n, layer)
    model.scaffold_config = config
    return model


def scaffold_layers(model: nn.Module) -> Iterator[tuple[str, ScaffoldLayer]]:
    """(qualified name, layer) of every scaffold layer, in module order."""
    for n, m in model.named_modules():
        if isinstance(m, ScaffoldLayer):
            yield n, m


def betas(model: nn.Module) -> dict[str, float]:
    """beta of every scaffold layer, by layer name."""
    return {n: float(m.beta.detach()) for n, m in scaffold_layers(model)}


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
    for n, m in list(scaffold_layers(plain)):
        _set_submodule(plain, n, m.to_plain())
    for p in plain.parameters():
        p.requires_grad_(True)
    if hasattr(plain, "scaffold_config"):
        del plain.scaffold_config
    return plain
