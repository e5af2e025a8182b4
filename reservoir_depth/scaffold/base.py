"""Eq. (1) for one weight: y = beta * W_seed x + s * B (A x) + b.

W_seed is a non-persistent buffer drawn from (spec, root seed, layer name): it is
never trained and never stored in a checkpoint. A is drawn kaiming-uniform
(a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))) from the same seed, B = 0
and beta = 1, so at step 0 the network is exactly the random reservoir.

Scaffolded: a module that replaced a registered layer type and merges back into it.
ScaffoldLayer: the one-weight machinery every layer type shares: the seeded draws, the dtype W_seed is
held in, the destabilised schedules of Sec. 4 (the draw in use, the k scaffolds of 'step' / 'batch'),
the generic forward and the merged weight beta W_seed + s B A. Layer types give the geometry (layers.py).
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..distributions import draw, layer_seed, rng_for
from .config import LayerSettings
from .fused import _frozen_for

def _skeleton(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (and its children) on the meta device (no memory): the class and attributes
    to_plain() rebuilds."""
    memo: dict[int, Any] = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
                            for p in module.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in module.buffers()})
    return copy.deepcopy(module, memo)


def refuse_unsupported(name: str, module: nn.Module, settings: Sequence[tuple[str, Any, Any]],
                       allowed: str | None = None) -> None:
    """The refusal prologue every layer type shares: ``settings`` are (attribute, value, supported value); any
    that differ is one ValueError naming the layer, the module's class, each value and what is allowed."""
    bad = [f"{k}={v!r}" for k, v, ok in settings if v != ok]
    if bad:
        cls = type(module)
        what = f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn") else cls.__name__
        allowed = allowed or ", ".join(f"{k}={ok!r}" for k, _, ok in settings)
        raise ValueError(f"layer {name!r}: {what} with {', '.join(bad)} cannot be scaffolded (allowed: {allowed})")


class Scaffolded(nn.Module):
    """A module that replaced a registered layer type; ``to_plain()`` rebuilds that class (merge()).
    ``_template``: a meta skeleton of the replaced module (``_skeleton``), read for its geometry."""

    def keep_template(self, module: nn.Module) -> None:
        """Hold a meta skeleton of the replaced ``module`` as ``_template`` (not a submodule: no state)."""
        object.__setattr__(self, "_template", _skeleton(module))

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

    def __init__(self, weight_shape: tuple[int, ...], name: str, settings: LayerSettings, template: nn.Module,
                 has_bias: bool = True, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        """``settings``: the layer's own resolved settings (ScaffoldConfig.settings_for); ``name`` seeds its
        draws (sha256(settings.seed, name))."""
        super().__init__()
        if not isinstance(settings, LayerSettings):
            raise TypeError(f"layer {name!r}: settings must be a LayerSettings, got {type(settings).__name__}; a layer "
                            f"type's from_module(module, name, resolve) passes resolve(name), and "
                            f"ScaffoldConfig.settings_for(name) resolves one outside scaffold()")
        self.name, self.settings, self.weight_shape = name, settings, tuple(int(n) for n in weight_shape)
        if (self.transposed or self.fan_in_axis != 1) and len(self.weight_shape) != 2:
            raise ValueError(f"layer {name!r}: a transposed layout needs a 2-D weight, got {self.weight_shape}")
        self.spec, r = settings.spec, settings.r
        dtype = template.weight.dtype if dtype is None else dtype
        device = template.weight.device if device is None else device
        self.keep_template(template)
        d_out, d_in = self.map_shape
        if r > min(d_in, d_out):
            capped = f" (capped by max_rank[{settings.rank_pattern!r}] = {settings.r_max})" if settings.rank_pattern \
                else ""
            raise ValueError(f"rank r={r} for layer {name!r} must lie in [0, min(d_in, d_out)] = "
                             f"[0, {min(d_in, d_out)}]{capped}; cap this layer with max_rank={{{name!r}: "
                             f"{min(d_in, d_out)}}} or lower r")
        self.r, self.s = r, settings.s  # eq. (1) with the layer's own rank
        self.register_buffer("W_seed", self._draw(0, dtype, device), persistent=False)
        self.register_buffer("_stack", None, persistent=False)
        self.seed_dtype: torch.dtype | None = None  # W_seed held in the parameter dtype (set_seed_dtype)
        self.draw_id: Any = 0  # the W_seed in use: 0 (canonical), ["epoch", e], ["cycle", i] or ["step", t]
        self.beta = nn.Parameter(torch.ones((), dtype=dtype, device=device))
        # at r = 0, A and B are empty: they ask for no gradient (none ever reaches them)
        self.lora_A = nn.Parameter(self._uniform("lora_A", (r, d_in), self.a_bound(), dtype).to(device), r > 0)
        B = torch.zeros(d_out, r, dtype=dtype) if settings.init_B == "zeros" or r == 0 else \
            self._uniform("lora_B", (d_out, r), 1.0 / math.sqrt(r), dtype)
        self.lora_B = nn.Parameter(B.to(device), r > 0)
        if settings.bias == "none" or (settings.bias == "keep" and not has_bias):
            self.bias = None
        else:
            b = self._uniform("bias", (d_out,), 1.0 / math.sqrt(d_in), dtype).to(device)
            self.bias = nn.Parameter(b, requires_grad=settings.bias == "trainable")
            if settings.bias == "trainable":
                self.trained = (*type(self).trained, "bias")
        if settings.schedule in ("step", "batch") and settings.k > 1:
            self._stack = torch.stack([self.W_seed] + [self._draw(("cycle", i), dtype, device)
                                                       for i in range(1, settings.k)])

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
        return layer_seed(self.settings.seed, self.name, *salt)

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
                                                                     for i in range(1, self.settings.k)])
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
        sched, k = self.settings.schedule, self.settings.k
        if isinstance(draw_id, numbers.Integral) and not isinstance(draw_id, bool) and draw_id == 0:
            return 0
        if isinstance(draw_id, (list, tuple)) and len(draw_id) == 2:
            kind, i = draw_id
            ok_i = isinstance(i, numbers.Integral) and not isinstance(i, bool)
            if ok_i and kind == "epoch" and sched == "epoch" and i >= 0:
                return 0 if i == 0 else ["epoch", int(i)]
            if ok_i and kind == "cycle" and sched == "step" and 0 <= i < k:
                return 0 if i == 0 else ["cycle", int(i)]
            if ok_i and kind == "step" and sched == "fresh" and i >= 0:
                return 0 if i == 0 else ["step", int(i)]
        allowed = {"epoch": "0 or ['epoch', e >= 1]", "step": f"0 or ['cycle', i] with 1 <= i < k = {k}",
                   "fresh": "0 or ['step', t >= 1]"}
        raise ValueError(f"layer {self.name!r}: draw id {draw_id!r} is not one the {sched!r} schedule produces; "
                         f"allowed: {allowed.get(sched, '0')}")

    def set_draw(self, draw_id: Any) -> None:
        """Point W_seed at the draw ``draw_id`` (0, ["epoch", e], ["cycle", i] or ["step", t]), regenerated from
        the seed."""
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
        sched = self.settings.schedule
        if sched == "epoch" and epoch is not None:
            self.set_draw(["epoch", epoch])
        elif sched == "step" and step is not None and self._stack is not None:
            self.set_draw(["cycle", step % self.settings.k])
        elif sched == "fresh" and step is not None:
            self.set_draw(["step", step])

    # -- forward --------------------------------------------------------------------------
    def base(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adapter(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _bias_shape(self) -> tuple[int, ...]:
        return (-1,)

    @property
    def splits_batch(self) -> bool:
        """True while training under the 'batch' schedule with k > 1 scaffolds: each of the k parts of a
        batch goes through its own W_seed (only the generic forward does that; fused paths step aside)."""
        return self.settings.schedule == "batch" and self.training and self._stack is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (1), computed in the dtype of beta W_seed x (autocast's choice), as the fused path."""
        if self.splits_batch:
            parts = x.tensor_split(self.settings.k, dim=0)  # always k parts (some empty if batch < k)
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
        return f"{self.name!r}, shape={self.weight_shape}, {self.settings}"

