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

BIAS_MODES = ("none", "frozen", "trainable")
SCHEDULES = ("static", "epoch", "step", "batch")


@dataclass(frozen=True)
class ScaffoldConfig:
    """Everything that turns a torch model into a LottaLoRA model.

    target_modules: names or regexes (peft semantics: exact name, name suffix after
        a dot, or regex full match) of the nn.Linear / nn.Conv2d layers to replace.
    trainable: names or regexes of other modules whose parameters stay trainable
        (heads, embeddings, norms). Everything else is frozen.
    r, alpha, rslora: LoRA rank and scale s = alpha / r, or alpha / sqrt(r).
    bias: "none" drops the bias; "frozen" and "trainable" draw it from the seed
        as U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default law).
    schedule, k: the destabilised scaffolds of Sec. 4 of the paper. "static" (the
        default) keeps W_seed; "epoch" redraws it every epoch; "step" cycles k
        scaffolds, one per optimiser step; "batch" splits each training batch into
        k sub-batches, each through its own scaffold.
    """

    target_modules: Sequence[str] = (r".*",)
    r: int = 8
    alpha: float = 16.0
    rslora: bool = False
    spec: DistributionSpec = field(default_factory=DistributionSpec)
    root_seed: int = 0
    bias: str = "frozen"
    trainable: Sequence[str] = ()
    schedule: str = "static"
    k: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", as_spec(self.spec))
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "trainable", tuple(self.trainable))
        if not isinstance(self.r, numbers.Integral) or isinstance(self.r, bool) or self.r < 0:
            raise ValueError(f"rank r must be an int >= 0, got {self.r!r}")
        object.__setattr__(self, "r", int(self.r))
        if not (is_number(self.alpha) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
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
    for p in patterns:
        if name == p or name.endswith("." + p):
            return True
        try:
            if re.fullmatch(p, name):
                return True
        except re.error:
            pass
    return False


class ScaffoldLayer(nn.Module):
    """Shared machinery of a frozen-scaffold layer; subclasses give the geometry.

    ``trainable`` declares, in one place, the tensors this layer trains and saves.
    """

    trainable: tuple[str, ...] = ("beta", "lora_A", "lora_B")

    def __init__(self, weight_shape: tuple[int, ...], name: str, config: ScaffoldConfig) -> None:
        super().__init__()
        self.name, self.config, self.weight_shape = name, config, tuple(weight_shape)
        d_out, d_in = weight_shape[0], int(np.prod(weight_shape[1:]))
        r = config.r
        if r > min(d_in, d_out):
            raise ValueError(f"rank r={r} for layer {name!r} must lie in [0, min(d_in, d_out)] = [0, {min(d_in, d_out)}]")
        self.r, self.s = r, config.s
        self.register_buffer("W_seed", self._draw(0), persistent=False)
        self.register_buffer("_stack", None, persistent=False)
        self.index = 0  # which scaffold of a destabilised schedule is current
        self.beta = nn.Parameter(torch.ones(()))
        self.lora_A = nn.Parameter(self._uniform("lora_A", (r, d_in), 1.0 / math.sqrt(d_in)))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r))
        if config.bias == "none":
            self.bias = None
        else:
            b = self._uniform("bias", (d_out,), 1.0 / math.sqrt(d_in))
            self.bias = nn.Parameter(b, requires_grad=config.bias == "trainable")
            if config.bias == "trainable":
                self.trainable = (*type(self).trainable, "bias")
        if config.schedule in ("step", "batch") and config.k > 1:
            self._stack = torch.stack([self.W_seed] + [self._draw(("cycle", i)) for i in range(1, config.k)])

    # -- seeded draws -------------------------------------------------------------------
    def seed(self, *salt: Any) -> int:
        return layer_seed(self.config.root_seed, self.name, *salt)

    def _draw(self, which: Any) -> torch.Tensor:
        """Scaffold 0 is the canonical W_seed; others are seeded by (schedule, index)."""
        salt = () if which == 0 else tuple(which)
        return draw(self.config.spec, self.weight_shape, self.seed("W_seed", *salt))

    def _uniform(self, what: str, shape: tuple[int, ...], bound: float) -> torch.Tensor:
        u = rng_for(self.seed(what)).uniform(-bound, bound, shape)
        return torch.from_numpy(u).float()

    # -- destabilised schedules -----------------------------------------------------------
    def advance(self, epoch: int | None = None, step: int | None = None) -> None:
        """Point W_seed at the scaffold of this epoch / step (no-op when static)."""
        sched, dev = self.config.schedule, self.W_seed.device
        if sched == "epoch" and epoch is not None:
            w = self._draw(0) if epoch == 0 else self._draw(("epoch", epoch))
            self.W_seed = w.to(dev, self.W_seed.dtype)
        elif sched == "step" and step is not None and self._stack is not None:
            self.index = step % self.config.k
            self.W_seed = self._stack[self.index]

    # -- forward --------------------------------------------------------------------------
    def base(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adapter(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _bias_shape(self) -> tuple[int, ...]:
        return (-1,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.schedule == "batch" and self.training and self._stack is not None:
            parts = x.tensor_split(self.config.k, dim=0)  # always k parts (some empty if batch < k)
            h = torch.cat([self.base(p, self._stack[i]) for i, p in enumerate(parts)])
        else:
            h = self.base(x, self.W_seed)
        y = self.beta * h
        if self.r:
            y = y + self.s * self.adapter(x)
        if self.bias is not None:
            y = y + self.bias.view(self._bias_shape())
        return y

    # -- merged view --------------------------------------------------------------------------
    def delta(self) -> torch.Tensor:
        """The adapter update s * B A, shaped like W_seed."""
        return (self.s * (self.lora_B @ self.lora_A)).view(self.weight_shape)

    def merged_weight(self) -> torch.Tensor:
        """W = beta * W_seed + s * B A."""
        return self.beta * self.W_seed + self.delta()

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

    def __init__(self, in_features: int, out_features: int, name: str, config: ScaffoldConfig) -> None:
        super().__init__((out_features, in_features), name, config)
        self.in_features, self.out_features = in_features, out_features

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

    def to_plain(self) -> nn.Linear:
        m = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            m.weight.copy_(self.merged_weight())
            if self.bias is not None:
                m.bias.copy_(self.bias)
        return m


class ScaffoldConv2d(ScaffoldLayer):
    """nn.Conv2d geometry (groups = 1): A is a conv with the kernel, B a 1x1 conv (as peft)."""

    def __init__(self, conv: nn.Conv2d, name: str, config: ScaffoldConfig) -> None:
        if conv.groups != 1:
            raise ValueError(f"layer {name!r}: grouped convolutions (groups={conv.groups}) are not supported")
        super().__init__(tuple(conv.weight.shape), name, config)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.padding_mode = conv.padding_mode
        if self.padding_mode != "zeros":
            raise ValueError(f"layer {name!r}: padding_mode={self.padding_mode!r}; only 'zeros' is supported")

    def _conv(self, x, w):
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation)

    def base(self, x, w):
        return self._conv(x, w)

    def adapter(self, x):
        a = self.lora_A.view(self.r, *self.weight_shape[1:])
        return F.conv2d(self._conv(x, a), self.lora_B[:, :, None, None])

    def _bias_shape(self):
        return (1, -1, 1, 1)

    def to_plain(self) -> nn.Conv2d:
        out_c, in_c, kh, kw = self.weight_shape
        m = nn.Conv2d(in_c, out_c, (kh, kw), self.stride, self.padding, self.dilation, bias=self.bias is not None)
        with torch.no_grad():
            m.weight.copy_(self.merged_weight())
            if self.bias is not None:
                m.bias.copy_(self.bias)
        return m


def _wrap(module: nn.Module, name: str, config: ScaffoldConfig) -> ScaffoldLayer:
    if isinstance(module, nn.Linear):
        return ScaffoldLinear(module.in_features, module.out_features, name, config)
    if isinstance(module, nn.Conv2d):
        return ScaffoldConv2d(module, name, config)
    raise TypeError(f"layer {name!r} is a {type(module).__name__}; only nn.Linear and nn.Conv2d can be scaffolded")


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def scaffold(model: nn.Module, config: ScaffoldConfig) -> nn.Module:
    """Replace the target layers of ``model`` (in place) by frozen scaffold layers.

    Every other parameter is frozen unless its module matches ``config.trainable``.
    Returns the model, with ``model.scaffold_config`` set.
    """
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    targets = [(n, m) for n, m in candidates if n and matches(n, config.target_modules)]
    if not targets:
        raise ValueError(f"target_modules {list(config.target_modules)} match no nn.Linear / nn.Conv2d layer; "
                         f"candidates: {[n for n, _ in candidates]}")
    for n, m in targets:  # validate everything before touching the model
        if matches(n, config.trainable):
            raise ValueError(f"layer {n!r} is both a scaffold target and in trainable={list(config.trainable)}")
    wrapped = [(n, _wrap(m, n, config)) for n, m in targets]
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
        _set_submodule(plain, n, m.to_plain().to(m.W_seed.device, m.W_seed.dtype))
    for p in plain.parameters():
        p.requires_grad_(True)
    if hasattr(plain, "scaffold_config"):
        del plain.scaffold_config
    return plain
