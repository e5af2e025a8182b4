"""Transformer pieces shared by the llama, encoder and vit families, from plain torch layers.

Attention keeps its four projections q, k, v, o as separate nn.Linear modules (never
nn.MultiheadAttention, which reads its packed weight directly), so each is a scaffold
target of its own: y = beta W_seed x + s B A x + b, eq. (1). Scores go through
F.scaled_dot_product_attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def check_heads(d_model: int, heads: int, rotary: bool = False) -> int:
    """The head dimension d_model / heads, refusing a split that does not divide (or an odd one for rotary)."""
    if heads < 1 or d_model % heads:
        raise ValueError(f"heads={heads} must be >= 1 and divide d_model={d_model}")
    head_dim = d_model // heads
    if rotary and head_dim % 2:
        raise ValueError(f"rotary positions need an even head dimension, got d_model / heads = {d_model} / {heads} "
                         f"= {head_dim}")
    return head_dim


def check_tokens(x: torch.Tensor, vocab: int, context: int) -> None:
    """Refuse what an embedding would silently misread: a non-integer or non-(B, T) input,
    a sequence longer than the context, a token id outside [0, vocab)."""
    if x.dim() != 2 or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"expected integer token ids of shape (batch, T), got {x.dtype} of shape {tuple(x.shape)}")
    if x.shape[1] > context:
        raise ValueError(f"sequence length {x.shape[1]} exceeds the context {context}")
    if x.numel():
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is out of the vocabulary: allowed [0, {vocab - 1}] (vocab size {vocab})")


class Rotary(nn.Module):
    """Rotary positions (RoFormer): rotate each pair (x_i, x_{i + d/2}) of a head by angle
    t * base^(-2i/d) at position t, so q . k depends on positions only through their difference."""

    def __init__(self, head_dim: int, context: int, base: float = 10000.0) -> None:
        super().__init__()
        inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(context, dtype=torch.float32), inv)  # (context, head_dim / 2)
        self.register_buffer("cos", angles.cos(), persistent=False)  # derived, never stored
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x (B, heads, T, head_dim) at positions offset .. offset + T - 1."""
        T = x.shape[-2]
        cos, sin = self.cos[offset:offset + T].to(x.dtype), self.sin[offset:offset + T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention: q, k, v, o are nn.Linear (scaffold targets by name)."""

    def __init__(self, d_model: int, heads: int, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, check_heads(d_model, heads)
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model, bias=bias) for _ in range(4))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
                rotary: Rotary | None = None) -> torch.Tensor:
        """x (B, T, d_model); ``mask`` (B, 1, 1, T) bool, True where a key may be attended."""
        B, T, d = x.shape
        q, k, v = (p(x).view(B, T, self.heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        if rotary is not None:
            q, k = rotary(q), rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(B, T, d))


class MLP(nn.Module):
    """up -> GELU -> dropout -> down."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.drop(F.gelu(self.up(x))))


class EncoderBlock(nn.Module):
    """Pre-norm Transformer encoder block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads, bias=True, dropout=dropout)
        self.mlp = MLP(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask=mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class EncoderStack(nn.Module):
    """What the encoder classifier and the ViT share after their own inputs: dropout, ``layers`` pre-norm
    EncoderBlocks, a final LayerNorm and a linear head, built in that order (the order torch's RNG draws
    the blocks' and the head's init in); ``encode`` runs the dropout and the blocks."""

    def add_stack(self, d_model: int, heads: int, d_ff: int | None, dropout: float, layers: int, n_out: int) -> None:
        """Add drop, blocks (d_ff default 4 d_model), norm and head, in that order."""
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(EncoderBlock(d_model, heads, d_ff or 4 * d_model, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_out)

    def encode(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Dropout, then every block (``mask``: the attention mask); the caller pools and applies ``norm``."""
        h = self.drop(h)
        for block in self.blocks:
            h = block(h, mask)
        return h


# Patterns over EncoderBlock names: every linear layer of the blocks, and their norms.
BLOCK_LINEAR = r"blocks\.\d+\.(attn\.(q|k|v|o)|mlp\.(up|down))"
BLOCK_NORMS = r"blocks\.\d+\.norm(1|2)"
