"""The one-weight layer types: their geometry (eq. (1) on a Linear, transformers' Conv1D, a Conv1d /
Conv2d, an Embedding) and how spectra read their input and output as rows.

ScaffoldTransposedLinear is transformers' Conv1D (GPT-2): a linear map stored transposed, not a
convolution; ScaffoldConv1d is nn.Conv1d's.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import ScaffoldLayer, refuse_unsupported
from .config import LayerSettings, Resolve
from .fused import _CONV_OPS, _LottaConv, _LottaLinear

class ScaffoldLinear(ScaffoldLayer):
    """nn.Linear geometry: W_seed (d_out, d_in), A (r, d_in), B (d_out, r)."""

    def __init__(self, in_features: int, out_features: int, name: str, settings: LayerSettings,
                 template: nn.Module | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        """``template``: the nn.Linear replaced (its class, bias structure, dtype and device);
        without one, a float32 CPU nn.Linear with a bias (or ``dtype`` / ``device``)."""
        if template is None:
            template = nn.Linear(in_features, out_features, device="meta", dtype=dtype)
            device = "cpu" if device is None else device
        shape = (in_features, out_features) if self.transposed else (out_features, in_features)
        super().__init__(shape, name, settings, template, has_bias=template.bias is not None,
                         dtype=dtype, device=device)
        self.in_features, self.out_features = in_features, out_features

    @classmethod
    def from_module(cls, module: nn.Linear, name: str, resolve: Resolve) -> "ScaffoldLinear":
        return cls(module.in_features, module.out_features, name, resolve(name), template=module)

    def base(self, x, w):
        return F.linear(x, self.to_map(w))

    def adapter(self, x):
        return F.linear(F.linear(x, self.lora_A), self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r == 0 or self.splits_batch:
            return super().forward(x)
        shape = x.shape
        y = _LottaLinear.apply(x.reshape(-1, shape[-1]), self.to_map(self.W_seed), self.beta, self.lora_A,
                               self.lora_B, self.bias, self.s)
        return y.reshape(*shape[:-1], self.out_features)


_PROBED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def affine_probe(module: nn.Module) -> bool:
    """True when ``module``'s own forward (an nn.Linear subclass's) is the plain affine map F.linear(x, W, b):
    checked once per instance on a fixed probe batch (3, in_features), up to rounding, without its hooks."""
    if module in _PROBED:
        return _PROBED[module]
    w, b = module.weight, module.bias
    ok = False
    if w.device.type != "meta" and w.is_floating_point() and w.dim() == 2:
        x = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.dtype).to(w.device)
        with torch.no_grad():
            try:
                y = type(module).forward(module, x)
            except Exception:  # noqa: BLE001  a forward that cannot take a plain batch is not the affine map
                y = None
            ref = F.linear(x, w, b)
        eps = torch.finfo(w.dtype).eps
        ok = (isinstance(y, torch.Tensor) and y.shape == ref.shape and y.dtype == ref.dtype
              and bool(torch.allclose(y, ref, rtol=64 * eps, atol=64 * eps * float(ref.abs().max().clamp_min(1)))))
    _PROBED[module] = ok
    return ok


class ScaffoldTransposedLinear(ScaffoldLinear):
    """transformers' Conv1D (GPT-2): W stored (d_in, d_out), y = x W + b. W_seed is drawn (d_out, d_in),
    fan_in = d_in, and stored transposed, so it equals the W_seed of an nn.Linear of the same name;
    merge() returns a Conv1D."""

    transposed, fan_in_axis = True, 0

    @classmethod
    def from_module(cls, module: nn.Module, name: str, resolve: Resolve) -> "ScaffoldTransposedLinear":
        layer = cls(module.nx, module.nf, name, resolve(name), template=module)
        layer.nf, layer.nx = module.nf, module.nx  # Conv1D's own names, read by transformers
        return layer



class ScaffoldConv(ScaffoldLayer):
    """nn.Conv1d / nn.Conv2d geometry (groups = 1, zero padding): W_seed (d_out, c_in, *kernel),
    A a conv with the kernel (r, c_in, *kernel), B a 1x1 conv (as peft)."""

    nd: int = 2

    def __init__(self, conv: nn.Module, name: str, settings: LayerSettings) -> None:
        if conv.weight.dim() != self.nd + 2:
            raise ValueError(f"layer {name!r}: {type(self).__name__} takes a {self.nd}-D convolution, "
                             f"got weight shape {tuple(conv.weight.shape)}")
        if conv.groups != 1:
            raise ValueError(f"layer {name!r}: grouped convolutions (groups={conv.groups}) are not supported")
        if conv.padding_mode != "zeros":
            raise ValueError(f"layer {name!r}: padding_mode={conv.padding_mode!r}; only 'zeros' is supported")
        super().__init__(tuple(conv.weight.shape), name, settings, conv, has_bias=conv.bias is not None)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size

    @classmethod
    def from_module(cls, module: nn.Module, name: str, resolve: Resolve) -> "ScaffoldConv":
        return cls(module, name, resolve(name))

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
        sides = conv_padding(self.padding, self.kernel_size, self.dilation)
        return None if any(a != b for a, b in sides) else tuple(a for a, _ in sides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fused path (_LottaConv), but the generic one at r = 0, for the 'batch' schedule's k
        scaffolds in training, and for an asymmetric 'same' padding."""
        padding = self._fused_padding()
        if self.r == 0 or padding is None or self.splits_batch:
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

    def __init__(self, emb: nn.Embedding, name: str, settings: LayerSettings) -> None:
        refuse_unsupported(name, emb, [(a, getattr(emb, a), ok) for a, ok in
                                       (("max_norm", None), ("scale_grad_by_freq", False), ("sparse", False))])
        if settings.bias in ("frozen", "trainable"):
            raise ValueError(f"layer {name!r}: an nn.Embedding has no bias; bias={settings.bias!r} would add one "
                             f"its class cannot hold (use 'keep' or 'none')")
        object.__setattr__(self, "padding_idx", emb.padding_idx)  # _draw needs it during __init__
        super().__init__(tuple(emb.weight.shape), name, settings, emb, has_bias=False)
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim
        if self.padding_idx is not None:
            with torch.no_grad():
                self.lora_A[:, self.padding_idx] = 0

    @classmethod
    def from_module(cls, module: nn.Embedding, name: str, resolve: Resolve) -> "ScaffoldEmbedding":
        return cls(module, name, resolve(name))

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



# ----------------------------------------------------------------------------- how spectra read a layer's input

def feature_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (rows, d): every leading position (batch, token, time step) is a row."""
    return x.reshape(-1, x.shape[-1])


def channel_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N prod(spatial), C): every position is a row of channels."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def conv_padding(padding: Any, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> list[tuple[int, int]]:
    """A conv's padding (ints, 'valid' or 'same') as (before, after) per spatial dim, first dim first.
    'same' as torch: total d (k - 1) per dim, the extra one after (right / bottom) when it is odd."""
    if padding == "valid":
        return [(0, 0)] * len(kernel)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return [(t // 2, t - t // 2) for t in totals]
    pads = (padding,) * len(kernel) if isinstance(padding, int) else tuple(padding)
    return [(int(p), int(p)) for p in pads]


def conv_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A dense conv's input as the (N L, C prod(kernel)) patches its kernel sees (its fan_in), with its own
    padding, stride and dilation; a grouped conv (no patch geometry) falls back to channel rows (N L, C)."""
    nd = x.dim() - 2
    if module.groups != 1:
        return channel_rows(module, x)
    kernel, dilation, stride = tuple(module.kernel_size), tuple(module.dilation), tuple(module.stride)
    pad = [p for sides in reversed(conv_padding(module.padding, kernel, dilation)) for p in sides]  # F.pad order
    if any(pad):
        x = F.pad(x, pad, mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
    if nd == 1:  # a 1-D conv is a 2-D one of height 1
        x, kernel, dilation, stride = x.unsqueeze(2), (1, *kernel), (1, *dilation), (1, *stride)
    cols = F.unfold(x, kernel, dilation=dilation, padding=0, stride=stride)  # (N, C prod(k), L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])



ONE_HOT_LIMIT = 4096


def one_hot_rows(module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Token ids (...) -> one-hot rows (n, V): what an Embedding's A sees (A x = column x of A). Their
    covariance is diag(p) - p p^T of the token frequencies p; refused for V > ONE_HOT_LIMIT (V x V)."""
    V = module.num_embeddings
    if V > ONE_HOT_LIMIT:
        raise ValueError(f"an Embedding's input rows are one-hot over V = {V} tokens, a V x V covariance; "
                         f"above {ONE_HOT_LIMIT} leave the layer out (layers=[...])")
    return F.one_hot(ids.reshape(-1).long(), V).to(torch.get_default_dtype())

