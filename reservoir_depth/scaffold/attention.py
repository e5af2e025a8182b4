"""nn.MultiheadAttention as a container of two scaffold layers (eq. (1) on in_proj and on out_proj)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Scaffolded, refuse_unsupported
from .config import Resolve
from .layers import ScaffoldLinear, feature_rows

class ScaffoldMultiheadAttention(Scaffolded):
    """nn.MultiheadAttention as two scaffold layers, ``in_proj`` (3E, E: q, k, v packed as
    in_proj_weight) and ``out_proj`` (E, E), named ``<name>.in_proj`` and ``<name>.out_proj``.

    The forward calls both as modules (eq. (1) on each, the fused path, their hooks fire) and attends as
    nn.MultiheadAttention does (same masks, need_weights, average_attn_weights, batch_first or not,
    unbatched input); merge() returns an nn.MultiheadAttention. kdim / vdim != embed_dim, add_bias_kv and
    add_zero_attn are refused. Dropout on the attention weights draws its own mask (not torch's).
    """

    def __init__(self, mha: nn.MultiheadAttention, name: str, resolve: Resolve) -> None:
        refuse_unsupported(name, mha, (
            ("kdim", mha.kdim, mha.embed_dim), ("vdim", mha.vdim, mha.embed_dim),
            ("add_bias_kv", mha.bias_k is not None, False), ("add_zero_attn", mha.add_zero_attn, False)),
            allowed=f"kdim = vdim = embed_dim = {mha.embed_dim}, no add_bias_kv, no add_zero_attn")
        super().__init__()
        self.keep_template(mha)
        E, w = mha.embed_dim, mha.in_proj_weight
        packed = nn.Linear(E, 3 * E, bias=mha.in_proj_bias is not None, device="meta", dtype=w.dtype)
        self.in_proj = ScaffoldLinear(E, 3 * E, f"{name}.in_proj", resolve(f"{name}.in_proj"), template=packed,
                                      dtype=w.dtype, device=w.device)
        self.out_proj = ScaffoldLinear(E, E, f"{name}.out_proj", resolve(f"{name}.out_proj"), template=mha.out_proj)
        self.name, self.embed_dim, self.num_heads, self.head_dim = name, E, mha.num_heads, mha.head_dim
        self.dropout, self.batch_first = mha.dropout, mha.batch_first

    @classmethod
    def from_module(cls, module: nn.MultiheadAttention, name: str, resolve: Resolve) -> "ScaffoldMultiheadAttention":
        return cls(module, name, resolve)

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



def attention_output_rows(module: nn.Module, out: Any) -> torch.Tensor:
    """An attention's output (attn_output, attn_weights) as rows of attn_output (every position a row)."""
    return feature_rows(module, out[0])

