"""Frozen-scaffold layers with a learned scale beta and LoRA adapters.

Eq. (1) of the design:

    y = beta * W_seed x + s * B (A x) + b,   s = alpha / r  (rsLoRA: alpha / sqrt(r))

with r the layer's own rank (ScaffoldConfig.max_rank caps it per layer; r = 0 leaves beta W_seed x + b).

W_seed is a non-persistent buffer drawn from (spec, root seed, layer name): it is
never trained and never stored in a checkpoint. A is drawn kaiming-uniform
(a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))) from the same seed, B = 0
and beta = 1, so at step 0 the network is exactly the random reservoir.

Layer types: LAYER_TYPES maps a module class (or its dotted path, for transformers' Conv1D, never
imported here) to a LayerType entry: the Scaffolded class that replaces it (a ScaffoldLayer declares
the weight layout, fan-in axis, base and adapter ops and how it merges back into the same class; a
container such as ScaffoldMultiheadAttention holds several), whether "all-linear" takes it, and how
spectra read its input and output rows. Registered: nn.Linear, transformers' Conv1D, nn.Conv1d,
nn.Conv2d, nn.Embedding, nn.MultiheadAttention; register_layer_type() adds one.
"""

from __future__ import annotations

import copy
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .distributions import DistributionSpec, as_spec, draw, is_number, layer_seed, rng_for
from .identity import added, identity

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
        layer except the output layer, as peft: the LayerType entries with linear=True,
        nn.Linear, transformers' Conv1D and nn.MultiheadAttention) or names / regexes, peft's rule: exact
        name, name suffix after a dot, or regex full match. A str is one pattern. Every
        pattern must match; a matched module of a type no LAYER_TYPES entry handles is an
        error, never a silent skip.
    trainable: names or regexes of other modules whose parameters stay trainable
        (heads, embeddings, norms); each must match a module. Everything else is frozen.
    r, alpha, rslora: LoRA rank and scale s = alpha / r, or alpha / sqrt(r), with r the layer's own
        rank (see max_rank): a layer capped to a smaller rank gets the larger s of that rank.
    bias: "keep" (default) draws a frozen bias from the seed only where the replaced layer
        had one, so merge() gives a state_dict of the original class; "frozen" and
        "trainable" give every layer a seeded bias (frozen / trained); "none" drops it.
        Seeded biases are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default law).
    schedule, k: the destabilised scaffolds of Sec. 4 of the paper. "static" (the
        default) keeps W_seed; "epoch" redraws it every epoch; "step" cycles k
        scaffolds, one per optimiser step; "batch" splits each training batch into
        k sub-batches, each through its own scaffold.
    specs: per-layer distribution overrides {pattern: spec} (e.g. the spectral-radius rule
        for a reservoir's recurrent weight). A pattern matches a scaffold layer by the peft
        rule on the layer's name or on the name of the target that holds it (an
        nn.MultiheadAttention's ``attn`` holds ``attn.in_proj`` and ``attn.out_proj``). Every
        pattern must match a scaffold layer, and a layer matched by two patterns is an error
        (no order-dependent "first wins": the adapter file stores the patterns sorted). Layers
        no pattern matches take ``spec``. Empty by default and then left out of to_dict(),
        so configs without overrides keep their stored form and run ids.
    max_rank: per-layer rank caps {pattern: r_max} (r_max an int >= 0), matched exactly as ``specs``
        (same rules, same errors): a matched layer has rank r_layer = min(r, r_max), which sets the
        shapes of its A (r_layer, d_in) and B (d_out, r_layer), its scale s, what an adapter file
        stores and the rank check (r_layer > min(d_in, d_out) is refused, naming the layer).
        r_max = 0 makes a frozen scaffold with a trained beta only: y = beta W_seed x + b. Empty by
        default and then left out of to_dict().
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
    specs: Mapping[str, DistributionSpec] = field(default_factory=dict, metadata=added({}))
    max_rank: Mapping[str, int] = field(default_factory=dict, metadata=added({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", as_spec(self.spec))
        object.__setattr__(self, "specs", {p: as_spec(v) for p, v in _per_layer(self.specs, "specs", "spec")})
        caps = _per_layer(self.max_rank, "max_rank", "r_max")
        for p, v in caps:
            if not _is_size(v):
                raise ValueError(f"max_rank[{p!r}] must be an int >= 0, got {v!r}")
        object.__setattr__(self, "max_rank", {p: int(v) for p, v in caps})
        object.__setattr__(self, "target_modules", _patterns(self.target_modules, "target_modules"))
        object.__setattr__(self, "trainable", _patterns(self.trainable, "trainable"))
        if not self.target_modules:
            raise ValueError("target_modules is empty: give 'all-linear' or at least one pattern")
        if not _is_size(self.r):
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
        """LoRA scale at the config's rank r (a layer uses ``scale`` of its own rank)."""
        return self.scale(self.r)

    def scale(self, r: int) -> float:
        """s = alpha / r or alpha / sqrt(r) (rsLoRA) of a layer of rank r; 0 at r = 0."""
        if r == 0:
            return 0.0
        return self.alpha / (math.sqrt(r) if self.rslora else r)

    def spec_for(self, *names: str) -> tuple[str | None, DistributionSpec]:
        """(pattern, spec) of the layer known by ``names`` (its own name, the target holding it):
        the one ``specs`` pattern matching any of them, else (None, ``spec``); two patterns is an error."""
        p = _layer_pattern(self.specs, "specs", names)
        return (p, self.spec if p is None else self.specs[p])

    def rank_for(self, *names: str) -> tuple[str | None, int]:
        """(pattern, r_layer) of the layer known by ``names``, as spec_for: r_layer = min(r, r_max) of
        the one ``max_rank`` pattern matching, else (None, r)."""
        p = _layer_pattern(self.max_rank, "max_rank", names)
        return (p, self.r if p is None else min(self.r, self.max_rank[p]))

    def to_dict(self) -> dict[str, Any]:
        return identity(self, spec=DistributionSpec.to_dict, target_modules=list, trainable=list, max_rank=dict,
                        specs=lambda specs: {p: v.to_dict() for p, v in specs.items()})  # specs, max_rank: when set

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScaffoldConfig":
        specs = {p: DistributionSpec.from_dict(v) for p, v in d.get("specs", {}).items()}
        return cls(**{**d, "spec": DistributionSpec.from_dict(d["spec"]), "specs": specs})


PER_LAYER = ("specs", "max_rank")  # ScaffoldConfig's {pattern: value} overrides, matched by _layer_pattern


def _is_size(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0


def _per_layer(value: Any, what: str, item: str) -> list[tuple[str, Any]]:
    """A per-layer override {pattern: value}, checked (a mapping of valid patterns), sorted by pattern."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a mapping {{pattern: {item}}}, got {value!r}")
    _patterns(tuple(value), what)
    return sorted(value.items())


def _layer_pattern(overrides: Mapping[str, Any], what: str, names: Sequence[str]) -> str | None:
    """The one pattern of ``overrides`` matching any of ``names`` (a layer's name, the target holding it),
    by the peft rule; None if none does; two patterns is an error (no order-dependent "first wins")."""
    hits = [p for p in overrides if any(matches(n, (p,)) for n in names)]
    if len(hits) > 1:
        raise ValueError(f"layer {names[0]!r} is matched by several {what} patterns {hits}: make them disjoint")
    return hits[0] if hits else None


def matches(name: str, patterns: Sequence[str]) -> bool:
    """peft's target_modules rule: exact name, '.'-suffix, or regex full match."""
    return any(name == p or name.endswith("." + p) or re.fullmatch(p, name) for p in patterns)


def _skeleton(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (and its children) on the meta device (no memory): the class and attributes
    to_plain() rebuilds."""
    memo: dict[int, Any] = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
                            for p in module.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in module.buffers()})
    return copy.deepcopy(module, memo)


class Scaffolded(nn.Module):
    """A module that replaced a registered layer type; ``to_plain()`` rebuilds that class (merge()).
    ``_template``: a meta skeleton of the replaced module (``_skeleton``), read for its geometry."""

    def to_plain(self) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def plain_weights(module: nn.Module) -> dict[str, torch.Tensor]:
        """A container's weights that the plain module holds itself (not in a registered child), keyed by
        the local name of the scaffold layer that replaces each; {} for a one-weight layer."""
        return {}


class ScaffoldLayer(Scaffolded):
    """Shared machinery of a frozen-scaffold layer with one weight; subclasses give the geometry.

    Geometry a subclass declares (the layer type's one place):
      ``transposed``: the stored weight is the transpose of the (d_out, d_in) map (Conv1D, Embedding);
        A is (r, d_in), B (d_out, r) and ``delta()`` returns s B A in the stored layout.
      ``fan_in_axis``: the stored axis the draw's fan-in counts (times the kernel): 1 draws the stored
        shape as it is (torch's (out, in, *kernel) convention); 0 draws the transpose and transposes it
        back, so a (d_in, d_out) weight gets fan_in = d_in.
      ``base(x, w)``: the replaced layer's op with weight w; ``adapter(x)``: B (A x) in that geometry;
      ``a_bound()``: A ~ U(-a, a); ``to_plain()``: the replaced class holding the merged weight.
    ``trained`` declares, in one place, the names of the tensors this layer trains and saves
    (ScaffoldConfig.trainable is a different thing: patterns of other modules that train);
    ``frozen()`` are the other parameters (a seeded bias), regenerated from the seed.
    Every tensor takes the replaced layer's dtype and device.
    """

    trained: tuple[str, ...] = ("beta", "lora_A", "lora_B")
    transposed: bool = False
    fan_in_axis: int = 1

    def __init__(self, weight_shape: tuple[int, ...], name: str, config: ScaffoldConfig, template: nn.Module,
                 has_bias: bool = True, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 target: str | None = None) -> None:
        """``target``: the name of the replaced module holding this layer, if it is not the layer itself
        (``specs`` patterns match either name)."""
        super().__init__()
        self.name, self.config, self.weight_shape = name, config, tuple(int(n) for n in weight_shape)
        if (self.transposed or self.fan_in_axis != 1) and len(self.weight_shape) != 2:
            raise ValueError(f"layer {name!r}: a transposed layout needs a 2-D weight, got {self.weight_shape}")
        names = (name, *(() if target is None else (target,)))
        self.spec_pattern, self.spec = config.spec_for(*names)
        self.rank_pattern, r = config.rank_for(*names)
        dtype = template.weight.dtype if dtype is None else dtype
        device = template.weight.device if device is None else device
        object.__setattr__(self, "_template", _skeleton(template))  # not a submodule: no state
        d_out, d_in = self.map_shape
        if r > min(d_in, d_out):
            capped = f" (r={config.r} capped by max_rank[{self.rank_pattern!r}])" if self.rank_pattern else ""
            raise ValueError(f"rank r={r} for layer {name!r} must lie in [0, min(d_in, d_out)] = "
                             f"[0, {min(d_in, d_out)}]{capped}; cap this layer with max_rank={{{name!r}: "
                             f"{min(d_in, d_out)}}} or lower r")
        self.r, self.s = r, config.scale(r)  # eq. (1) with the layer's own rank
        self.register_buffer("W_seed", self._draw(0, dtype, device), persistent=False)
        self.register_buffer("_stack", None, persistent=False)
        self.seed_dtype: torch.dtype | None = None  # W_seed held in the parameter dtype (set_seed_dtype)
        self.draw_id: Any = 0  # the W_seed in use: 0 (canonical), ["epoch", e] or ["cycle", i]
        self.beta = nn.Parameter(torch.ones((), dtype=dtype, device=device))
        # at r = 0, A and B are empty: they ask for no gradient (none ever reaches them)
        self.lora_A = nn.Parameter(self._uniform("lora_A", (r, d_in), self.a_bound(), dtype).to(device), r > 0)
        self.lora_B = nn.Parameter(torch.zeros(d_out, r, dtype=dtype, device=device), r > 0)
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

    @property
    def map_shape(self) -> tuple[int, int]:
        """(d_out, d_in) of the map y = W x the weight stands for (d_in includes a conv's kernel)."""
        if self.transposed:
            return self.weight_shape[1], self.weight_shape[0]
        return self.weight_shape[0], int(np.prod(self.weight_shape[1:]))

    def to_map(self, w: torch.Tensor) -> torch.Tensor:
        """A weight in the stored layout, seen as the (d_out, d_in, *kernel) map (a view)."""
        return w.T if self.transposed else w

    def a_bound(self) -> float:
        """A ~ U(-a, a), kaiming-uniform (a = sqrt(5)): a = 1 / sqrt(d_in)."""
        return 1.0 / math.sqrt(self.map_shape[1])

    def frozen(self) -> tuple[str, ...]:
        """Names of this layer's parameters that are not trained (regenerated from the seed)."""
        return tuple(n for n, _ in self.named_parameters(recurse=False) if n not in self.trained)

    # -- seeded draws -------------------------------------------------------------------
    def seed(self, *salt: Any) -> int:
        return layer_seed(self.config.root_seed, self.name, *salt)

    def _draw(self, which: Any, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """Scaffold 0 is the canonical W_seed; others are seeded by (schedule, index). Drawn on
        ``device`` itself (a meta layer holds no values), in the layout ``fan_in_axis`` says."""
        if torch.device(device).type == "meta":
            return torch.empty(self.weight_shape, dtype=dtype, device="meta")
        salt = () if which == 0 else tuple(which)
        shape = self.weight_shape if self.fan_in_axis == 1 else self.weight_shape[::-1]
        w = draw(self.spec, shape, self.seed("W_seed", *salt), dtype=dtype, device=device)
        return w if self.fan_in_axis == 1 else w.T.contiguous()

    @property
    def param_dtype(self) -> torch.dtype:
        """The dtype of the layer's parameters (beta, A, B), the dtype every draw is made in."""
        return self.beta.dtype

    def _held(self, which: Any, device: torch.device | str) -> torch.Tensor:
        """Draw ``which`` as the layer holds it: drawn in the parameter dtype, then rounded to ``seed_dtype``
        (the same bits autocast's cast of the parameter-dtype W_seed gives)."""
        w = self._draw(which, self.param_dtype, device)
        return w if self.seed_dtype is None else w.to(self.seed_dtype)

    def canonical_seed(self) -> torch.Tensor:
        """The W_seed in use (its draw_id) in the parameter dtype: W_seed itself, or regenerated when it is held
        in a lower dtype. What an adapter file's fingerprint must be computed from."""
        if self.seed_dtype is None:
            return self.W_seed
        return self._draw(0 if self.draw_id == 0 else tuple(self.draw_id), self.param_dtype, self.W_seed.device)

    def set_seed_dtype(self, dtype: torch.dtype | None) -> None:
        """Hold W_seed (and the k stacked scaffolds of a 'step' / 'batch' schedule) in ``dtype``, a floating
        dtype no wider than the parameter dtype, e.g. the bf16 of autocast, so that no cast of W_seed runs
        per step; None (or the parameter dtype) holds the draw itself again. beta, A, B and the bias keep the
        parameter dtype, and every draw is still made in it and then rounded, so the draw, the config and
        the run id do not change. Without autocast the product runs in the input's dtype (W_seed cast to it)."""
        param = self.param_dtype
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point
                                      and torch.finfo(dtype).bits <= torch.finfo(param).bits):
            raise ValueError(f"layer {self.name!r}: seed dtype must be a floating torch.dtype no wider than the "
                             f"parameter dtype {param} (or None), got {dtype!r}")
        dtype = None if dtype == param else dtype
        canonical = self.seed_dtype is None and self.W_seed.dtype == param
        self.seed_dtype = dtype
        device = self.W_seed.device
        if canonical:  # rounding the draw in place gives the same bits as drawing again
            if self._stack is not None:
                self._stack = self._stack.to(param if dtype is None else dtype)
            else:
                self.W_seed = self.W_seed.to(param if dtype is None else dtype)
        else:  # widen by drawing again, never from the rounded values
            if self._stack is not None:
                self._stack = torch.stack([self._held(0, device)] + [self._held(("cycle", i), device)
                                                                     for i in range(1, self.config.k)])
            else:
                self.W_seed = self._held(0 if self.draw_id == 0 else tuple(self.draw_id), device)
        if self._stack is not None:
            self.set_draw(self.draw_id)

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
            w = self._stack[0] if self._stack is not None else self._held(0, self.W_seed.device)
        elif draw_id[0] == "cycle":
            w = self._stack[draw_id[1]]
        else:
            w = self._held(tuple(draw_id), self.W_seed.device)
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
            h = torch.cat([self.base(p, _frozen_for(self._stack[i], p)) for i, p in enumerate(parts)])
        else:
            h = self.base(x, _frozen_for(self.W_seed, x))
        y = h * self.beta.to(h.dtype)
        if self.r:
            y = y + self.s * self.adapter(x).to(h.dtype)
        if self.bias is not None:
            y = y + self.bias.to(h.dtype).view(self._bias_shape())
        return y

    # -- merged view --------------------------------------------------------------------------
    def delta(self) -> torch.Tensor:
        """The adapter update s * B A, in the stored layout of W_seed."""
        m = self.s * (self.lora_B @ self.lora_A)
        return m.T if self.transposed else m.view(self.weight_shape)

    def merged_weight(self) -> torch.Tensor:
        """W = beta * W_seed + s * B A (stored layout)."""
        return self.beta * self.W_seed.to(self.param_dtype) + self.delta()

    @property
    def weight(self) -> torch.Tensor:
        """The merged W, read-only, in the replaced layer's layout: for code that reads a layer's weight
        instead of calling it (torch's fused TransformerEncoderLayer inference path)."""
        return self.merged_weight()

    def to_plain(self) -> nn.Module:
        """The replaced layer's own class holding W = beta W_seed + s B A and this layer's bias."""
        # the layer's current parameter dtype and device (it may have moved since scaffold())
        w = self.W_seed
        m = copy.deepcopy(self._template).to_empty(device=w.device).to(self.param_dtype)
        with torch.no_grad():
            m.weight = nn.Parameter(self.merged_weight().detach().view(m.weight.shape).clone())
            if self.bias is None:
                m.register_parameter("bias", None)
            else:
                m.bias = nn.Parameter(self.bias.detach().to(self.param_dtype).clone())
        return m

    def extra_repr(self) -> str:
        return (f"{self.name!r}, shape={self.weight_shape}, r={self.r}, s={self.s:g}, spec={self.spec.name}, "
                f"schedule={self.config.schedule}")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast runs a matmul / conv of ``x`` in (float64 is never cast), else x's own."""
    dev = x.device.type
    if x.dtype != torch.float64 and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _frozen_for(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A frozen weight as an op on ``x`` takes it: as held under autocast (which casts what it must, and
    nothing when W_seed is held in its dtype), else in x's dtype (a W_seed held in bf16 meets a float32
    input without autocast); as held for integer x (an embedding's ids)."""
    if w.dtype == x.dtype or not x.is_floating_point() or torch.is_autocast_enabled(x.device.type):
        return w
    return w.to(x.dtype)


def _scale_addmm(t: torch.Tensor, beta: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, s: float,
                 inplace: bool) -> torch.Tensor:
    """beta t + s m1 m2. On the CPU in one pass (the product's own scaling of t; beta read as a number,
    which costs no device sync there); elsewhere, and while compiling, t * beta and then the product."""
    if t.device.type == "cpu" and not torch.compiler.is_compiling():
        b = float(beta)
        return t.addmm_(m1, m2, beta=b, alpha=s) if inplace else torch.addmm(t, m1, m2, beta=b, alpha=s)
    t = t.mul_(beta.to(t.dtype)) if inplace else t * beta.to(t.dtype)
    return t.addmm_(m1, m2, alpha=s)


class _LottaLinear(torch.autograd.Function):
    """Eq. (1) for a Linear layer with a hand-written backward.

    Forward: where the batch n >= d_in, one product with W_eff = beta W + s B A (+ b), formed at
    weight size, so no pass runs over the output besides the product; below, beta and s B (A x) are
    applied to the output. u = A x is kept for dL/dB. No weight gradient for W_seed,
    and nothing saved but x and u: the gradient of beta, <g, W x>, is computed as <g W, x>, where
    g W is needed for dL/dx anyway. Where x needs no gradient (a first layer), g W would serve beta
    only: W x is kept instead (one output's memory for a product's time).
    The rank-r products run as (r, n) results (A x^T, B^T g^T): on CPUs 2-4x faster than (n, r) on
    data in cache, and no slower on data that is not.
    Every product runs in the dtype autocast chooses (bf16 on CUDA), else in x's dtype; x is
    cast once for both products, and a W_seed held in that dtype (set_seed_dtype) is not cast at all.
    """

    @staticmethod
    def forward(ctx, x0, W, beta, A, B, bias, s: float):
        dt = _compute_dtype(x0)
        x, Wd, Ad = x0.to(dt), W.to(dt), A.to(dt)
        b = None if bias is None else bias.to(dt)
        u = (Ad @ x.T).T  # A x as an (r, n) product
        need_x = ctx.needs_input_grad[0]
        if need_x and x.shape[0] >= W.shape[1]:  # W_eff costs d_out d_in, output passes n d_out
            W_eff = torch.addmm(Wd * beta.to(dt), B.to(dt), Ad, alpha=s)
            y = F.linear(x, W_eff, b)
        else:
            h = x @ Wd.T
            y = _scale_addmm(h, beta, u, B.to(dt).T, s, inplace=need_x)  # in place where h is not kept
            if b is not None:
                y += b
        kept = () if need_x else (h,)
        # x saved as given (a float32 input may be shared by several layers)
        ctx.save_for_backward(x0, W, beta, A, B, u, *kept)
        ctx.s, ctx.bias_dtype = s, None if bias is None or not ctx.needs_input_grad[5] else bias.dtype
        return y

    @staticmethod
    def backward(ctx, g):
        x0, W, beta, A0, B0, u, *h = ctx.saved_tensors
        s, dt = ctx.s, g.dtype  # compute in the gradient's dtype, return each grad in its input's
        x, A, B = x0.to(dt), A0.to(dt), B0.to(dt)
        acc = torch.promote_types(dt, torch.float32)
        # ordered so that what reads g runs together, then what reads x (each still in cache)
        gW = None if h else g @ W.to(dt)
        gB = (B.T @ g.T).T  # g B as an (r, n) product
        grad_B = (u.to(dt).T @ g).mul_(s).T.to(B0.dtype).contiguous()  # (g^T u as a wide product: faster on CPUs)
        grad_bias = None if ctx.bias_dtype is None else g.sum(0, dtype=acc).to(ctx.bias_dtype)
        if h:  # x needs no gradient: <g, W x> from the kept W x
            grad_beta = torch.dot(g.reshape(-1).to(acc), h[0].reshape(-1).to(acc))
        else:
            grad_beta = torch.dot(gW.reshape(-1).to(acc), x.reshape(-1).to(acc))
        grad_A = (s * gB.T @ x).to(A0.dtype)
        grad_x = None if h else _scale_addmm(gW, beta, gB, A, s, inplace=True).to(x0.dtype)
        return grad_x, None, grad_beta.to(beta.dtype), grad_A, grad_B, grad_bias, None


class ScaffoldLinear(ScaffoldLayer):
    """nn.Linear geometry: W_seed (d_out, d_in), A (r, d_in), B (d_out, r)."""

    def __init__(self, in_features: int, out_features: int, name: str, config: ScaffoldConfig,
                 template: nn.Module | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, target: str | None = None) -> None:
        """``template``: the nn.Linear replaced (its class, bias structure, dtype and device);
        without one, a float32 CPU nn.Linear with a bias (or ``dtype`` / ``device``)."""
        if template is None:
            template = nn.Linear(in_features, out_features, device="meta", dtype=dtype)
            device = "cpu" if device is None else device
        shape = (in_features, out_features) if self.transposed else (out_features, in_features)
        super().__init__(shape, name, config, template, has_bias=template.bias is not None,
                         dtype=dtype, device=device, target=target)
        self.in_features, self.out_features = in_features, out_features

    @classmethod
    def from_module(cls, module: nn.Linear, name: str, config: ScaffoldConfig) -> "ScaffoldLinear":
        return cls(module.in_features, module.out_features, name, config, template=module)

    def base(self, x, w):
        return F.linear(x, self.to_map(w))

    def adapter(self, x):
        return F.linear(F.linear(x, self.lora_A), self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r == 0 or (self.config.schedule == "batch" and self.training and self._stack is not None):
            return super().forward(x)
        shape = x.shape
        y = _LottaLinear.apply(x.reshape(-1, shape[-1]), self.to_map(self.W_seed), self.beta, self.lora_A,
                               self.lora_B, self.bias, self.s)
        return y.reshape(*shape[:-1], self.out_features)


class ScaffoldConv1D(ScaffoldLinear):
    """transformers' Conv1D (GPT-2): W stored (d_in, d_out), y = x W + b. W_seed is drawn (d_out, d_in),
    fan_in = d_in, and stored transposed, so it equals the W_seed of an nn.Linear of the same name;
    merge() returns a Conv1D."""

    transposed, fan_in_axis = True, 0

    @classmethod
    def from_module(cls, module: nn.Module, name: str, config: ScaffoldConfig) -> "ScaffoldConv1D":
        layer = cls(module.nx, module.nf, name, config, template=module)
        layer.nf, layer.nx = module.nf, module.nx  # Conv1D's own names, read by transformers
        return layer


_CONV_OPS = {1: F.conv1d, 2: F.conv2d}


class _LottaConv(torch.autograd.Function):
    """Eq. (1) for a Conv1d / Conv2d layer (groups = 1, integer padding) with a hand-written backward.

    Forward: conv(x, beta W_seed) + b (W_seed scaled, not the larger output), then s B u added in place
    by one batched matmul over positions, u = conv(x, A). Saved: x and u only (and the weights). Backward:
    the conv's input gradient g -> W^T g serves dL/dx and the gradient of beta, <g, conv(x, W)> =
    <W^T g, x>, as in _LottaLinear; dL/dA and A's part of dL/dx come from one convolution_backward;
    no weight gradient for W_seed. Compute dtype as _LottaLinear.
    """

    @staticmethod
    def forward(ctx, x0, W, beta, A, B, bias, s: float, stride, padding, dilation):
        dt, conv = _compute_dtype(x0), _CONV_OPS[x0.dim() - 2]
        x = x0.to(dt)
        Wb = W.to(dt) * beta.to(dt)
        y = conv(x, Wb, None if bias is None else bias.to(dt), stride, padding, dilation).contiguous()
        u = conv(x, A.to(dt).view(A.shape[0], *W.shape[1:]), None, stride, padding, dilation).contiguous()
        N, O, r = y.shape[0], y.shape[1], u.shape[1]
        y.view(N, O, -1).baddbmm_(B.to(dt).expand(N, O, r), u.view(N, r, -1), alpha=s)
        ctx.save_for_backward(x0, W, beta, A, B, u)
        ctx.conf = (s, list(stride), list(padding), list(dilation), None if bias is None else bias.dtype)
        return y

    @staticmethod
    def backward(ctx, g):
        x0, W0, beta, A0, B0, u = ctx.saved_tensors
        s, stride, padding, dilation, bias_dtype = ctx.conf
        dt, g = g.dtype, g.contiguous()
        x, W = x0.to(dt), W0.to(dt)
        A = A0.to(dt).view(A0.shape[0], *W.shape[1:])
        N, O, r = g.shape[0], g.shape[1], A.shape[0]
        args = (None, stride, padding, dilation, False, [0] * (x.dim() - 2), 1)
        gx = torch.ops.aten.convolution_backward(g, x, W, *args, [True, False, False])[0]  # W^T g
        acc = torch.promote_types(dt, torch.float32)
        grad_beta = torch.dot(gx.reshape(-1).to(acc), x.reshape(-1).to(acc)).to(beta.dtype)
        g3, Bt = g.view(N, O, -1), B0.to(dt).T
        # batched matmuls over the N images (a broadcast matmul or einsum would copy g transposed)
        gu = torch.bmm(Bt.expand(N, r, O), g3).mul_(s).view(u.shape)  # s B^T g: (N, r, *spatial)
        grad_B = torch.bmm(g3, u.view(N, r, -1).to(dt).transpose(1, 2)).sum(0).mul_(s)
        need_x = ctx.needs_input_grad[0]
        gxA, grad_A, _ = torch.ops.aten.convolution_backward(gu, x, A, *args, [need_x, ctx.needs_input_grad[3], False])
        grad_x = gx.mul_(beta.to(dt)).add_(gxA).to(x0.dtype) if need_x else None
        grad_bias = g.sum(dim=(0, *range(2, g.dim()))).to(bias_dtype) if ctx.needs_input_grad[5] else None
        grad_A = None if grad_A is None else grad_A.reshape(A0.shape).to(A0.dtype)
        return (grad_x, None, grad_beta, grad_A, grad_B.to(B0.dtype), grad_bias,
                None, None, None, None)


class ScaffoldConv(ScaffoldLayer):
    """nn.Conv1d / nn.Conv2d geometry (groups = 1, zero padding): W_seed (d_out, c_in, *kernel),
    A a conv with the kernel (r, c_in, *kernel), B a 1x1 conv (as peft)."""

    nd: int = 2

    def __init__(self, conv: nn.Module, name: str, config: ScaffoldConfig) -> None:
        if conv.weight.dim() != self.nd + 2:
            raise ValueError(f"layer {name!r}: {type(self).__name__} takes a {self.nd}-D convolution, "
                             f"got weight shape {tuple(conv.weight.shape)}")
        if conv.groups != 1:
            raise ValueError(f"layer {name!r}: grouped convolutions (groups={conv.groups}) are not supported")
        if conv.padding_mode != "zeros":
            raise ValueError(f"layer {name!r}: padding_mode={conv.padding_mode!r}; only 'zeros' is supported")
        super().__init__(tuple(conv.weight.shape), name, config, conv, has_bias=conv.bias is not None)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size

    @classmethod
    def from_module(cls, module: nn.Module, name: str, config: ScaffoldConfig) -> "ScaffoldConv":
        return cls(module, name, config)

    def _conv(self, x, w):
        return _CONV_OPS[self.nd](x, w, None, self.stride, self.padding, self.dilation)

    def base(self, x, w):
        return self._conv(x, w)

    def adapter(self, x):
        a = self.lora_A.view(self.r, *self.weight_shape[1:])
        return _CONV_OPS[self.nd](self._conv(x, a), self.lora_B.view(*self.lora_B.shape, *(1,) * self.nd))

    def _bias_shape(self):
        return (1, -1) + (1,) * self.nd

    def _fused_padding(self) -> tuple[int, ...] | None:
        """The padding as ints per side for the fused path; None for an asymmetric 'same' (even kernel)."""
        if self.padding == "valid":
            return (0,) * self.nd
        if self.padding == "same":
            totals = [d * (k - 1) for k, d in zip(self.kernel_size, self.dilation)]
            return None if any(t % 2 for t in totals) else tuple(t // 2 for t in totals)
        return tuple(self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fused path (_LottaConv), but the generic one at r = 0, for the 'batch' schedule's k
        scaffolds in training, and for an asymmetric 'same' padding."""
        padding = self._fused_padding()
        if (self.r == 0 or padding is None
                or (self.config.schedule == "batch" and self.training and self._stack is not None)):
            return super().forward(x)
        unbatched = x.dim() == self.nd + 1
        y = _LottaConv.apply(x.unsqueeze(0) if unbatched else x, self.W_seed, self.beta, self.lora_A, self.lora_B,
                             self.bias, self.s, self.stride, padding, self.dilation)
        return y.squeeze(0) if unbatched else y


class ScaffoldConv1d(ScaffoldConv):
    """nn.Conv1d: input (N, C, L)."""

    nd = 1


class ScaffoldConv2d(ScaffoldConv):
    """nn.Conv2d: input (N, C, H, W)."""

    nd = 2


class ScaffoldEmbedding(ScaffoldLayer):
    """nn.Embedding, adapter as peft: W_seed stored (V, D) = (num_embeddings, embedding_dim); A (r, V) is
    looked up by token id (A x for the one-hot x), B (D, r); the update s (B A)^T is stored like W.

    Draw: the stored (V, D) shape as torch.nn.init reads it, fan_in = D, so every token's vector has
    expected squared norm gain^2 whatever V is (the map's fan-in V would shrink it with the vocabulary).
    A ~ U(-1, 1): a lookup reads one column of A (a one-hot input has one non-zero entry), so A x has the
    variance A x of a linear layer has for unit-variance inputs. padding_idx: its row of W_seed is zero (as
    nn.Embedding's) and its column of A is zero and gets no gradient, so the row stays zero, merged too.
    max_norm, scale_grad_by_freq and sparse are refused; so is a seeded bias (an Embedding has none).
    """

    transposed = True

    def __init__(self, emb: nn.Embedding, name: str, config: ScaffoldConfig) -> None:
        for attr, ok in (("max_norm", None), ("scale_grad_by_freq", False), ("sparse", False)):
            if getattr(emb, attr) != ok:
                raise ValueError(f"layer {name!r}: nn.Embedding with {attr}={getattr(emb, attr)!r} cannot be "
                                 f"scaffolded (allowed: {attr}={ok!r})")
        if config.bias in ("frozen", "trainable"):
            raise ValueError(f"layer {name!r}: an nn.Embedding has no bias; bias={config.bias!r} would add one "
                             f"its class cannot hold (use 'keep' or 'none')")
        object.__setattr__(self, "padding_idx", emb.padding_idx)  # _draw needs it during __init__
        super().__init__(tuple(emb.weight.shape), name, config, emb, has_bias=False)
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim
        if self.padding_idx is not None:
            with torch.no_grad():
                self.lora_A[:, self.padding_idx] = 0

    @classmethod
    def from_module(cls, module: nn.Embedding, name: str, config: ScaffoldConfig) -> "ScaffoldEmbedding":
        return cls(module, name, config)

    def a_bound(self) -> float:
        return 1.0

    def _draw(self, which, dtype, device):
        w = super()._draw(which, dtype, device)
        if self.padding_idx is not None and w.device.type != "meta":
            w[self.padding_idx] = 0
        return w

    # No fused path: on the CPU (V = D = 256, 2048 tokens, one thread) eq. (1) through plain autograd costs ~5 ms
    # and 2 MiB saved per step, about 1% of the step of an LM that size (bench_lm.py --preset cpu); a fused one
    # would save D floats per token.
    def base(self, x, w):
        return F.embedding(x, w).to(self.param_dtype)  # only the rows read, when W_seed is held lower

    def adapter(self, x):
        return F.embedding(x, self.lora_A.T, self.padding_idx) @ self.lora_B.T


class ScaffoldMultiheadAttention(Scaffolded):
    """nn.MultiheadAttention as two scaffold layers, ``in_proj`` (3E, E: q, k, v packed as
    in_proj_weight) and ``out_proj`` (E, E), named ``<name>.in_proj`` and ``<name>.out_proj``.

    The forward calls both as modules (eq. (1) on each, the fused path, their hooks fire) and attends as
    nn.MultiheadAttention does (same masks, need_weights, average_attn_weights, batch_first or not,
    unbatched input); merge() returns an nn.MultiheadAttention. kdim / vdim != embed_dim, add_bias_kv and
    add_zero_attn are refused. Dropout on the attention weights draws its own mask (not torch's).
    """

    def __init__(self, mha: nn.MultiheadAttention, name: str, config: ScaffoldConfig) -> None:
        bad = [f"{k}={v!r}" for k, v, ok in (
            ("kdim", mha.kdim, mha.embed_dim), ("vdim", mha.vdim, mha.embed_dim),
            ("add_bias_kv", mha.bias_k is not None, False), ("add_zero_attn", mha.add_zero_attn, False)) if v != ok]
        if bad:
            raise ValueError(f"layer {name!r}: nn.MultiheadAttention with {', '.join(bad)} cannot be scaffolded "
                             f"(allowed: kdim = vdim = embed_dim = {mha.embed_dim}, no add_bias_kv, no add_zero_attn)")
        super().__init__()
        object.__setattr__(self, "_template", _skeleton(mha))
        E, w = mha.embed_dim, mha.in_proj_weight
        packed = nn.Linear(E, 3 * E, bias=mha.in_proj_bias is not None, device="meta", dtype=w.dtype)
        self.in_proj = ScaffoldLinear(E, 3 * E, f"{name}.in_proj", config, template=packed, dtype=w.dtype,
                                      device=w.device, target=name)
        self.out_proj = ScaffoldLinear(E, E, f"{name}.out_proj", config, template=mha.out_proj, target=name)
        self.name, self.embed_dim, self.num_heads, self.head_dim = name, E, mha.num_heads, mha.head_dim
        self.dropout, self.batch_first = mha.dropout, mha.batch_first

    @classmethod
    def from_module(cls, module: nn.MultiheadAttention, name: str, config: ScaffoldConfig) -> "ScaffoldMultiheadAttention":
        return cls(module, name, config)

    @staticmethod
    def _float_mask(mask: torch.Tensor, dtype: torch.dtype, what: str) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
        if not mask.is_floating_point():
            raise ValueError(f"{what} must be bool or floating point, got {mask.dtype}")
        return mask.to(dtype)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """nn.MultiheadAttention.forward's contract; ``is_causal`` is a hint that attn_mask is causal."""
        if is_causal and attn_mask is None:
            raise ValueError("is_causal=True needs attn_mask (the causal mask), as nn.MultiheadAttention")
        self_attn, kv_same = query is key and key is value, key is value
        batched = query.dim() == 3
        q_in, k_in, v_in = ((t if batched else t.unsqueeze(0 if self.batch_first else 1)) for t in (query, key, value))
        if not self.batch_first:
            q_in, k_in, v_in = (t.transpose(0, 1) for t in (q_in, k_in, v_in))
        E, H, hd = self.embed_dim, self.num_heads, self.head_dim
        if self_attn:
            q, k, v = self.in_proj(q_in).chunk(3, dim=-1)
        elif kv_same:
            q = self.in_proj(q_in)[..., :E]
            k, v = self.in_proj(k_in)[..., E:].chunk(2, dim=-1)
        else:
            q, k, v = self.in_proj(q_in)[..., :E], self.in_proj(k_in)[..., E:2 * E], self.in_proj(v_in)[..., 2 * E:]
        N, L, S = q.shape[0], q.shape[1], k.shape[1]
        q, k, v = (t.reshape(N, -1, H, hd).transpose(1, 2) for t in (q, k, v))  # (N, H, len, hd)
        mask = None
        if attn_mask is not None:
            mask = self._float_mask(attn_mask, q.dtype, "attn_mask")
            mask = mask.view(1, 1, L, S) if mask.dim() == 2 else mask.view(N, H, L, S)
        if key_padding_mask is not None:
            kp = self._float_mask(key_padding_mask, q.dtype, "key_padding_mask").view(N, 1, 1, S)
            mask = kp if mask is None else mask + kp
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * math.sqrt(1.0 / hd)) @ k.transpose(-2, -1)
            a = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            weights = F.dropout(a, p) if p > 0 else a
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(N, L, E))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            weights = weights.mean(dim=1) if average_attn_weights else weights
        if not batched:
            out = out.squeeze(0 if self.batch_first else 1)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights

    # read by torch's fused TransformerEncoderLayer inference path (taken only without hooks and gradients)
    _qkv_same_embed_dim = True
    merge_masks = nn.MultiheadAttention.merge_masks

    @property
    def in_proj_weight(self) -> torch.Tensor:
        """The merged packed (3E, E) weight, read-only."""
        return self.in_proj.weight

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self.in_proj.bias

    @staticmethod
    def plain_weights(mha: nn.MultiheadAttention) -> dict[str, torch.Tensor]:
        """The weights a plain nn.MultiheadAttention holds itself, by the name of the scaffold layer that
        replaces each (out_proj is its own nn.Linear child)."""
        return {"in_proj": mha.in_proj_weight}

    def to_plain(self) -> nn.MultiheadAttention:
        """nn.MultiheadAttention with in_proj_weight, in_proj_bias and out_proj of the merged layers."""
        w = self.in_proj.W_seed
        m = copy.deepcopy(self._template).to_empty(device=w.device).to(self.in_proj.param_dtype)
        packed = self.in_proj.to_plain()
        m.in_proj_weight = packed.weight
        if packed.bias is None:
            m.register_parameter("in_proj_bias", None)
        else:
            m.in_proj_bias = packed.bias
        m.out_proj = self.out_proj.to_plain()
        return m

    def extra_repr(self) -> str:
        return f"{self.name!r}, embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


# ----------------------------------------------------------------------------- how spectra read a layer's input

def feature_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (rows, d): every leading position (batch, token, time step) is a row."""
    return x.reshape(-1, x.shape[-1])


def channel_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N prod(spatial), C): every position is a row of channels."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _pad_amounts(padding: Any, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> list[int]:
    """F.pad amounts (last dim first) of a conv's padding (ints, 'valid' or 'same')."""
    if padding == "valid":
        return [0, 0] * len(kernel)
    if padding == "same":  # as torch: total d (k - 1), the extra one on the right / bottom
        out: list[int] = []
        for k, d in reversed(list(zip(kernel, dilation))):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return out
    pads = (padding,) * len(kernel) if isinstance(padding, int) else tuple(padding)
    return [p for q in reversed(pads) for p in (q, q)]


def conv_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A dense conv's input as the (N L, C prod(kernel)) patches its kernel sees (its fan_in), with its own
    padding, stride and dilation; a grouped conv (no patch geometry) falls back to channel rows (N L, C)."""
    nd = x.dim() - 2
    if module.groups != 1:
        return channel_rows(module, x)
    kernel, dilation, stride = tuple(module.kernel_size), tuple(module.dilation), tuple(module.stride)
    pad = _pad_amounts(module.padding, kernel, dilation)
    if any(pad):
        x = F.pad(x, pad, mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
    if nd == 1:  # a 1-D conv is a 2-D one of height 1
        x, kernel, dilation, stride = x.unsqueeze(2), (1, *kernel), (1, *dilation), (1, *stride)
    cols = F.unfold(x, kernel, dilation=dilation, padding=0, stride=stride)  # (N, C prod(k), L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def attention_output_rows(module: nn.Module, out: Any) -> torch.Tensor:
    """An attention's output (attn_output, attn_weights) as rows of attn_output (every position a row)."""
    return feature_rows(module, out[0])


ONE_HOT_LIMIT = 4096


def one_hot_rows(module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Token ids (...) -> one-hot rows (n, V): what an Embedding's A sees (A x = column x of A). Their
    covariance is diag(p) - p p^T of the token frequencies p; refused for V > ONE_HOT_LIMIT (V x V)."""
    V = module.num_embeddings
    if V > ONE_HOT_LIMIT:
        raise ValueError(f"an Embedding's input rows are one-hot over V = {V} tokens, a V x V covariance; "
                         f"above {ONE_HOT_LIMIT} leave the layer out (layers=[...])")
    return F.one_hot(ids.reshape(-1).long(), V).to(torch.get_default_dtype())


# ----------------------------------------------------------------------------- the layer-type registry

@dataclass(frozen=True)
class LayerType:
    """A module class that can be scaffolded, declared in one place.

    module: the class, or its dotted path "package.module.Class" (matched by the class's own
        __module__ and __qualname__, so registering it never imports the package).
    layer: the Scaffolded class; ``layer.from_module(module, name, config)`` wraps one. A ScaffoldLayer
        subclass declares the weight layout (``transposed``, ``fan_in_axis``), base and adapter ops and
        the merge (``to_plain``); a container (ScaffoldMultiheadAttention) holds ScaffoldLayers and
        merges them back into the same class.
    linear: part of target_modules="all-linear".
    rows: how spectra read the module's input as the (rows, d_in) its A sees: ``rows(module, x)``;
        None: not read. output_rows: the same for its output (rows, d_out).
    """

    module: type[nn.Module] | str
    layer: type[Scaffolded]
    linear: bool = False
    rows: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = feature_rows
    output_rows: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = feature_rows

    @property
    def name(self) -> str:
        return self.module.rpartition(".")[2] if isinstance(self.module, str) else self.module.__name__


LAYER_TYPES: dict[type[nn.Module] | str, LayerType] = {}


def _key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_layer_type(entry: LayerType) -> LayerType:
    """Add a scaffoldable module class (see LayerType); a class can be registered once."""
    keys = {entry.module, entry.module if isinstance(entry.module, str) else _key(entry.module)}
    taken = [k for k in LAYER_TYPES if k in keys or (not isinstance(k, str) and _key(k) in keys)]
    if taken:
        raise ValueError(f"layer type {entry.name} is already registered")
    if not (isinstance(entry.layer, type) and issubclass(entry.layer, Scaffolded)):
        raise ValueError(f"layer type {entry.name}: layer must be a Scaffolded subclass, got {entry.layer!r}")
    LAYER_TYPES[entry.module] = entry
    return entry


register_layer_type(LayerType(nn.Linear, ScaffoldLinear, linear=True))
register_layer_type(LayerType("transformers.pytorch_utils.Conv1D", ScaffoldConv1D, linear=True))
register_layer_type(LayerType(nn.Conv1d, ScaffoldConv1d, rows=conv_rows, output_rows=channel_rows))
register_layer_type(LayerType(nn.Conv2d, ScaffoldConv2d, rows=conv_rows, output_rows=channel_rows))
register_layer_type(LayerType(nn.Embedding, ScaffoldEmbedding, rows=one_hot_rows))
register_layer_type(LayerType(nn.MultiheadAttention, ScaffoldMultiheadAttention, linear=True,
                              output_rows=attention_output_rows))


def layer_type(module: nn.Module) -> LayerType | None:
    """The registry entry for ``module``, or None. A subclass counts only if it keeps its
    registered base's forward (a subclass with its own forward computes something else)."""
    for cls in type(module).__mro__:
        entry = LAYER_TYPES.get(cls) or LAYER_TYPES.get(_key(cls))
        if entry is not None:
            return entry if type(module).forward is cls.forward else None
    return None


def is_container(module: nn.Module) -> bool:
    """A registered module whose scaffold holds several layers (it reads its children's weights directly)."""
    entry = layer_type(module)
    return entry is not None and not issubclass(entry.layer, ScaffoldLayer)


def effective_weight(module: nn.Module) -> torch.Tensor | None:
    """The (d_out, d_in, *kernel) map of a one-weight layer: beta W_seed + s B A of a ScaffoldLayer, W of a
    registered plain module; None for anything else (a container, an unregistered module)."""
    if isinstance(module, ScaffoldLayer):
        return module.to_map(module.merged_weight())
    entry = layer_type(module)
    if entry is None or not issubclass(entry.layer, ScaffoldLayer):
        return None
    return module.weight.T if entry.layer.transposed else module.weight


def effective_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, effective_weight) of every one-weight layer of ``model``, scaffolded or plain; a plain
    container's own weights come under its scaffold layers' names (an nn.MultiheadAttention ``attn``
    gives ``attn.in_proj``; its out_proj is a Linear child)."""
    for n, m in model.named_modules():
        w = effective_weight(m)
        if w is not None:
            yield n, w
        elif is_container(m):
            for local, w in layer_type(m).layer.plain_weights(m).items():
                yield f"{n}.{local}" if n else local, w


def layer_rows(module: nn.Module, x: Any, side: str = "input") -> torch.Tensor | None:
    """``x``, the input (side="input": the rows its adapter's A sees) or output of ``module``, as
    (rows, features) by its layer type's ``rows`` / ``output_rows``; None for a module no entry reads.
    ``x`` is a tensor, or what a container returns (an attention's (output, weights))."""
    plain = getattr(module, "_template", module) if isinstance(module, Scaffolded) else module
    entry = layer_type(plain)
    read = None if entry is None else entry.rows if side == "input" else entry.output_rows
    if read is None or not (isinstance(x, torch.Tensor) or is_container(plain)):
        return None
    return read(plain, x)


def _type_names() -> str:
    return ", ".join(t.name for t in LAYER_TYPES.values())


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
    if config.target_modules == (ALL_LINEAR,):
        linear = [(n, m) for n, m in named if (t := layer_type(m)) is not None and t.linear]
        out = _output_layer(model, linear)
        targets = _outermost([(n, m) for n, m in linear if m is not out and not _trainable_owner(n, config.trainable)])
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
                             f"{_type_names()} (register_layer_type adds one). "
                             f"Narrow the patterns, e.g. to the names above that should stay as they are.")
        targets = [(n, m) for n, m in matched if layer_type(m) is not None]
        targets = _outermost(targets)
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


def scaffold(model: nn.Module, config: ScaffoldConfig) -> nn.Module:
    """Replace the target layers of ``model`` (in place) by frozen scaffold layers, eq. (1).

    Every other parameter is frozen unless its module matches ``config.trainable``.
    Each new layer takes the replaced layer's dtype and device. Nothing is changed when
    a check fails. Returns the model, with ``model.scaffold_config`` set.
    """
    targets = _select_targets(model, config)
    wrapped = [(n, layer_type(m).layer.from_module(m, n, config)) for n, m in targets]
    layers = [layer for _, unit in wrapped for layer in unit.modules() if isinstance(layer, ScaffoldLayer)]
    for what, attr in (("specs", "spec_pattern"), ("max_rank", "rank_pattern")):
        unused = [p for p in getattr(config, what) if p not in {getattr(layer, attr) for layer in layers}]
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
