"""A small GPT-style Decision Transformer (Chen et al. 2021) for discrete actions.

A trajectory window of K steps becomes 3K tokens (R_1, s_1, a_1, ..., R_K, s_K, a_K): the
return-to-go R_t, the state s_t and the action a_t, each embedded (``embed_return``,
``embed_state``, ``embed_action``) plus a learned embedding of the episode step t
(``embed_step``, max_steps x d_model, by far the largest table: a frozen scaffold too, as the
blocks' layers). Pre-norm blocks with causal attention (transformer.Attention, MLP: every
q, k, v, o, up, down an nn.Linear, so a frozen scaffold by name, eq. (1)) read them; the
action a_t is predicted from the hidden state at s_t's token (it has seen R_<=t, s_<=t, a_<t).
The token embeddings, norms and the head train, as in the other transformer families.

``forward(R, s, a, t)``: R (B, K) float, s (B, K, d_in) float, a (B, K) int64 in [0, n_out)
(a_K is never read: the logits at s_t cannot see a_t), t (B, K) int64 in [0, max_steps).
Returns action logits (B, K, n_out).
"""

from __future__ import annotations

import torch
from torch import nn

from .transformer import BLOCK_LINEAR, BLOCK_NORMS, MLP, Attention, check_heads


class CausalBlock(nn.Module):
    """x + attn(norm1(x), causal), then x + mlp(norm2(x)) (names as transformer.EncoderBlock's)."""

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, heads, bias=True, dropout=dropout)
        self.mlp = MLP(d_model, d_ff, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal=True)
        return x + self.mlp(self.norm2(x))


class DecisionTransformer(nn.Module):
    """Return-conditioned action model over (R, s, a) token triples (module doc)."""

    scaffold_targets = (BLOCK_LINEAR, "embed_step")
    scaffold_trainable = ("embed_return", "embed_state", "embed_action", BLOCK_NORMS, "norm", "head")
    scaffold_head = "head"

    def __init__(self, d_in: int, n_out: int, d_model: int = 32, layers: int = 2, heads: int = 2,
                 context: int = 20, max_steps: int = 1000, return_scale: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        for k, v in (("d_in", d_in), ("n_out", n_out), ("d_model", d_model), ("layers", layers),
                     ("context", context), ("max_steps", max_steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be an int >= 1, got {v!r}")
        if not return_scale > 0:
            raise ValueError(f"return_scale must be > 0, got {return_scale!r}")
        check_heads(d_model, heads)
        self.d_in, self.n_out, self.context, self.max_steps = d_in, n_out, context, max_steps
        self.return_scale = float(return_scale)
        self.embed_return = nn.Linear(1, d_model)
        self.embed_state = nn.Linear(d_in, d_model)
        self.embed_action = nn.Embedding(n_out, d_model)
        self.embed_step = nn.Embedding(max_steps, d_model)
        self.blocks = nn.ModuleList(CausalBlock(d_model, heads, 4 * d_model, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_out)

    def forward(self, R: torch.Tensor, s: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B, K = R.shape
        if K > self.context or s.shape != (B, K, self.d_in) or a.shape != (B, K) or t.shape != (B, K):
            raise ValueError(f"expected R (B, K), s (B, K, {self.d_in}), a (B, K), t (B, K) with K <= {self.context}, "
                             f"got {tuple(R.shape)}, {tuple(s.shape)}, {tuple(a.shape)}, {tuple(t.shape)}")
        if a.numel() and (int(a.min()) < 0 or int(a.max()) >= self.n_out):
            raise ValueError(f"actions must lie in [0, {self.n_out}), got {int(a.min())}..{int(a.max())}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.max_steps):
            raise ValueError(f"episode steps must lie in [0, {self.max_steps}), got {int(t.min())}..{int(t.max())}")
        pos = self.embed_step(t)
        tokens = torch.stack([self.embed_return(R[..., None] / self.return_scale) + pos,
                              self.embed_state(s) + pos, self.embed_action(a) + pos], 2)  # (B, K, 3, d)
        h = tokens.reshape(B, 3 * K, -1)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).reshape(B, K, 3, -1)[:, :, 1])
