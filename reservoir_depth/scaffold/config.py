"""What turns a torch model into a LottaLoRA model: ScaffoldConfig and its pattern language.

Eq. (1) of the design, per scaffold layer:

    y = beta * W_seed x + s * B (A x) + b,   s = alpha / r  (rsLoRA: alpha / sqrt(r))

with r the layer's own rank (ScaffoldConfig.max_rank caps it per layer; r = 0 leaves beta W_seed x + b).
Module names are matched by peft's rule (``matches``: exact name, '.'-suffix, or regex full match);
per-layer overrides (``specs``, ``max_rank``) by the same rule, one pattern per layer at most.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

from ..checks import is_number
from ..identity import added, identity
from ..distributions import DistributionSpec, as_spec

BIAS_MODES = ("keep", "none", "frozen", "trainable")
SCHEDULES = ("static", "epoch", "step", "batch", "fresh")
INIT_B = ("zeros", "kaiming")
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

    target_modules: the layers to replace: "all-linear" (the default: every layer of a LayerType entry with
        linear=True: nn.Linear (and a subclass whose forward is the plain affine map), transformers' Conv1D,
        nn.MultiheadAttention, nn.RNN / nn.GRU / nn.LSTM) except the model's declared output layers (its
        get_output_embeddings(), a family's ``scaffold_head``, ``exclude``); scaffold() warns, naming each
        linear-like module it passes over and why (strict=True: an error), or names / regexes, peft's rule: exact
        name, name suffix after a dot, or regex full match. A str is one pattern. Every
        pattern must match; a matched module of a type no LAYER_TYPES entry handles is an
        error, never a silent skip.
    trainable: names or regexes of other modules whose parameters stay trainable
        (heads, embeddings, norms); each must match a module. Everything else is frozen.
    r, alpha, rslora: LoRA rank and scale s = alpha / r, or alpha / sqrt(r), with r the layer's own
        rank (see max_rank): a layer capped to a smaller rank gets the larger s of that rank.
    spec: the distribution W_seed is drawn from (DistributionSpec: a family of the registry, its scaling
        rule and parameters; `reservoir-depth distributions` lists the families).
    root_seed: every layer's W_seed, A (and seeded bias) is drawn from sha256(root_seed, layer name).
    bias: "keep" (default) draws a frozen bias from the seed only where the replaced layer
        had one, so merge() gives a state_dict of the original class; "frozen" and
        "trainable" give every layer a seeded bias (frozen / trained); "none" drops it.
        Seeded biases are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default law).
    schedule, k: the destabilised scaffolds of Sec. 4 of the paper. "static" (the
        default) keeps W_seed; "epoch" redraws it every epoch; "step" cycles k
        scaffolds, one per optimiser step; "batch" splits each training batch into
        k sub-batches, each through its own scaffold; "fresh" draws a new W_seed at every
        optimiser step (no scaffold is seen twice: the limit of "step" as k grows).
    init_B: "zeros" (the default, LoRA's: at step 0 the network is exactly the reservoir) or
        "kaiming": B ~ U(-1/sqrt(r), 1/sqrt(r)) seeded by (root seed, layer name), A's law with fan-in r.
        With W_seed = 0 (the no-scaffold control) and B = 0, a hidden unit whose seeded bias is
        negative starts dead under ReLU and never gets a gradient; a random B gives it one.
        Left out of to_dict() while "zeros".
    specs: per-layer distribution overrides {pattern: spec} (e.g. the spectral-radius rule
        for a reservoir's recurrent weight). A pattern matches a scaffold layer by the peft
        rule on the layer's name or on the name of the target that holds it (an
        nn.MultiheadAttention's ``attn`` holds ``attn.in_proj`` and ``attn.out_proj``). Every
        pattern must match a scaffold layer, and a layer matched by two patterns is an error
        (no order-dependent "first wins": the adapter file stores the patterns sorted). Layers
        no pattern matches take ``spec``. Empty by default and then left out of to_dict(),
        so configs without overrides keep their stored form and run ids.
    exclude: names or regexes of output layers "all-linear" leaves out (besides the declared ones); each must
        match a module. Empty by default and then left out of to_dict().
    max_rank: per-layer rank caps {pattern: r_max} (r_max an int >= 0), matched exactly as ``specs``
        (same rules, same errors): a matched layer has rank r_layer = min(r, r_max), which sets the
        shapes of its A (r_layer, d_in) and B (d_out, r_layer), its scale s, what an adapter file
        stores and the rank check (r_layer > min(d_in, d_out) is refused, naming the layer).
        r_max = 0 makes a frozen scaffold with a trained beta only: y = beta W_seed x + b. Empty by
        default and then left out of to_dict().
    """

    CHOICES: ClassVar[dict[str, tuple]] = {"bias": BIAS_MODES, "schedule": SCHEDULES, "init_B": INIT_B}

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
    init_B: str = field(default="zeros", metadata=added("zeros"))
    exclude: Sequence[str] | str = field(default=(), metadata=added(()))

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
        object.__setattr__(self, "exclude", _patterns(self.exclude, "exclude"))
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
        _check_choices(self.bias, self.init_B, self.schedule, self.k)

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

    def settings_for(self, name: str, target: str | None = None) -> "LayerSettings":
        """The LayerSettings of the scaffold layer ``name`` (held by the target ``target``, if it is not
        the layer itself): the per-layer overrides resolved once, by the pattern rule of ``specs``."""
        names = (name, *(() if target in (None, name) else (target,)))
        spec_pattern, spec = self.spec_for(*names)
        rank_pattern, r = self.rank_for(*names)
        return LayerSettings(spec=spec, r=r, s=self.scale(r), seed=self.root_seed, bias=self.bias,
                             init_B=self.init_B, schedule=self.schedule, k=self.k,
                             r_max=None if rank_pattern is None else self.max_rank[rank_pattern],
                             spec_pattern=spec_pattern, rank_pattern=rank_pattern)

    def to_dict(self) -> dict[str, Any]:
        return identity(self, spec=DistributionSpec.to_dict, target_modules=list, trainable=list, max_rank=dict,
                        exclude=list, specs=lambda specs: {p: v.to_dict() for p, v in specs.items()})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScaffoldConfig":
        specs = {p: DistributionSpec.from_dict(v) for p, v in d.get("specs", {}).items()}
        return cls(**{**d, "spec": DistributionSpec.from_dict(d["spec"]), "specs": specs})




@dataclass(frozen=True)
class LayerSettings:
    """What one scaffold layer is built from (eq. (1) for one weight), with no pattern left to resolve.

    spec: the law of W_seed; r: the layer's rank (min(r, r_max)); s: the LoRA scale of that rank; seed: the
    root seed (the layer's own seed is sha256(seed, layer name)); bias, init_B, schedule, k: as in
    ScaffoldConfig; r_max: the cap that applied (None: none); spec_pattern / rank_pattern: the ``specs`` /
    ``max_rank`` pattern that chose spec / r_max (None: the config-wide value). ScaffoldConfig.settings_for
    resolves them per layer; a layer type can be built from its shapes, a LayerSettings and its name alone.
    """

    spec: DistributionSpec = field(default_factory=DistributionSpec)
    r: int = 8
    s: float = 2.0
    seed: int = 0
    bias: str = "keep"
    init_B: str = "zeros"
    schedule: str = "static"
    k: int = 1
    r_max: int | None = None
    spec_pattern: str | None = None
    rank_pattern: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", as_spec(self.spec))
        if not _is_size(self.r):
            raise ValueError(f"rank r must be an int >= 0, got {self.r!r}")
        if not (is_number(self.s) and math.isfinite(self.s) and (self.s > 0 or (self.s == 0 and self.r == 0))):
            raise ValueError(f"the LoRA scale s must be a finite number > 0 (0 only at r = 0), got {self.s!r}")
        if self.r_max is not None and not _is_size(self.r_max):
            raise ValueError(f"r_max must be an int >= 0 or None, got {self.r_max!r}")
        if not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool):
            raise ValueError(f"seed (the root seed) must be an int, got {self.seed!r}")
        _check_choices(self.bias, self.init_B, self.schedule, self.k)
        object.__setattr__(self, "r", int(self.r))
        object.__setattr__(self, "s", float(self.s))

    def __str__(self) -> str:
        capped = "" if self.r_max is None else f" (max_rank[{self.rank_pattern!r}] = {self.r_max})"
        spec = self.spec.name + ("" if self.spec_pattern is None else f" (specs[{self.spec_pattern!r}])")
        return (f"r={self.r}{capped}, s={self.s:g}, spec={spec}, bias={self.bias}, init_B={self.init_B}, "
                f"schedule={self.schedule}" + ("" if self.k == 1 else f", k={self.k}") + f", seed={self.seed}")


Resolve = Callable[[str], LayerSettings]
"""``resolve(layer_name)``: the LayerSettings of a scaffold layer of one target, by the layer's name (scaffold()
binds the target's name: ScaffoldConfig.settings_for(layer_name, target)). A layer type's ``from_module``
takes one, so a container (attention, recurrent) resolves each of the layers it holds."""


class Resolver:
    """The ``resolve`` scaffold() passes to a layer type's ``from_module(module, name, resolve)``: call it with a
    scaffold layer's name for that layer's LayerSettings. Code written for the older ``from_module(module,
    name, config)`` that reads a config attribute gets an error that says so, not a bare AttributeError."""

    def __init__(self, config: "ScaffoldConfig", target: str) -> None:
        self.config, self.target = config, target

    def __call__(self, name: str) -> LayerSettings:
        return self.config.settings_for(name, self.target)

    def __getattr__(self, attr: str):
        if attr.startswith("__") or attr in ("config", "target"):
            raise AttributeError(attr)
        raise AttributeError(f"from_module(module, name, resolve) receives a resolver, not a ScaffoldConfig: "
                             f"resolve(layer_name) gives the layer's LayerSettings (r, s, spec, bias, init_B, "
                             f"schedule, k, seed); .{attr} is not read here")


def _check_choices(bias: Any, init_B: Any, schedule: Any, k: Any) -> None:
    """The settings ScaffoldConfig and LayerSettings share: bias mode, init of B, schedule and its k."""
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (number of scaffolds) must be an int >= 1, got {k!r}")
    if schedule in ("static", "epoch", "fresh") and k != 1:
        raise ValueError(f"k={k} needs a schedule of k scaffolds ('step' or 'batch'), got {schedule!r}")
    if not isinstance(init_B, str) or init_B not in INIT_B:
        raise ValueError(f"init_B must be one of {INIT_B}, got {init_B!r}")


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

