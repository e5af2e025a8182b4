"""A Llama-style decoder language model from plain torch layers.

Pre-norm blocks x + attn(RMSNorm(x)), x + SwiGLU(RMSNorm(x)); rotary positions; causal
attention through F.scaled_dot_product_attention; no biases; a final RMSNorm and an
output head (untied by default, or tied to the token embedding).

What is scaffolded (y = beta W_seed x + s B A x, eq. (1)) is set by configuration, so
``scaffold_targets``, ``scaffold_trainable`` and ``scaffold_max_rank`` are instance attributes:

- every linear layer of the blocks is a scaffold, its W_seed drawn from (spec, seed) and
  regenerated on load (never stored in an adapter file).
- ``adapters="attention"`` (the paper's choice: every backbone weight random and frozen, LoRA
  on attention only): q, k, v, o carry rank-r adapters; the SwiGLU layers are capped at rank 0
  (``scaffold_max_rank``), frozen scaffolds beta W_seed x with a trained beta only.
  ``adapters="all"``: every block linear carries a rank-r adapter.
- ``train_embeddings`` / ``train_head``: True trains the token embedding / output head;
  False makes it a scaffold target too (the embedding needs nn.Embedding in the layer-type
  registry). A tied head shares the embedding's weight: it trains with the embedding.
- ``train_norms``: the RMSNorm gains train (True) or stay frozen at 1.

The class attributes are those of the default configuration.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .transformer import Attention, Rotary, check_heads, check_tokens

# Named sizes: d_model, layers, heads, d_ff (SwiGLU width about 8/3 d_model). Parameters at
# vocabulary 65 (untied head): 3m 3.2M, 30m 31.7M (CPU); 150m 151.8M, 300m 303.6M, 900m 906.0M (GPU).
SIZES: dict[str, dict[str, int]] = {
    "3m": {"d_model": 256, "layers": 4, "heads": 4, "d_ff": 688},
    "30m": {"d_model": 512, "layers": 10, "heads": 8, "d_ff": 1376},
    "150m": {"d_model": 1024, "layers": 12, "heads": 16, "d_ff": 2752},
    "300m": {"d_model": 1024, "layers": 24, "heads": 16, "d_ff": 2752},
    "900m": {"d_model": 1536, "layers": 32, "heads": 24, "d_ff": 4096},
}

BLOCK_LINEAR = r"blocks\.\d+\.(attn\.(q|k|v|o)|mlp\.(gate|up|down))"  # every scaffold target of the blocks
FFN = r"blocks\.\d+\.mlp\.(gate|up|down)"
ADAPTERS: dict[str, dict[str, int]] = {"attention": {FFN: 0}, "all": {}}  # max_rank of each choice
NORMS = r"blocks\.\d+\.(attn_norm|mlp_norm)|norm"


class SwiGLU(nn.Module):
    """down(silu(gate x) * up x)."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate, self.up = nn.Linear(d_model, d_ff, bias=False), nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """x + attn(RMSNorm(x)) with rotary causal attention, then x + SwiGLU(RMSNorm(x))."""

    def __init__(self, d_model: int, heads: int, d_ff: int) -> None:
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.RMSNorm(d_model, eps=1e-6), nn.RMSNorm(d_model, eps=1e-6)
        self.attn = Attention(d_model, heads, bias=False)
        self.mlp = SwiGLU(d_model, d_ff)

    def forward(self, x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), causal=True, rotary=rotary)
        return x + self.mlp(self.mlp_norm(x))


def resolve_size(size: str | None, **dims: int | None) -> dict[str, int]:
    """The dims of a named size, with any explicit dim (not None) taking precedence."""
    if size is None:
        base: dict[str, int] = {}
    elif size in SIZES:
        base = dict(SIZES[size])
    else:
        raise ValueError(f"unknown llama size {size!r}; allowed: {', '.join(SIZES)} or None with explicit dims")
    out = {**base, **{k: int(v) for k, v in dims.items() if v is not None}}
    if "d_ff" not in out and "d_model" in out:
        out["d_ff"] = 32 * -(-8 * out["d_model"] // (3 * 32))  # 8/3 d_model, rounded up to a multiple of 32
    missing = [k for k in ("d_model", "layers", "heads", "d_ff") if k not in out]
    if missing:
        raise ValueError(f"size=None needs explicit {', '.join(missing)}")
    for k, v in out.items():
        if v < 1:
            raise ValueError(f"{k} must be >= 1, got {v}")
    return out


class Llama(nn.Module):
    """Decoder LM: forward(x (B, T) int64 token ids) -> logits (B, T, n_out).

    ``d_in`` is the vocabulary, ``n_out`` the output vocabulary (usually equal). Raises
    ValueError for T > ``context`` and for a token id outside [0, d_in).
    """

    scaffold_targets: tuple[str, ...] = (BLOCK_LINEAR,)
    scaffold_trainable: tuple[str, ...] = ("embed", "head", NORMS)
    scaffold_head = "head"  # the output layer "all-linear" leaves out
    scaffold_max_rank: dict[str, int] = dict(ADAPTERS["attention"])

    def __init__(self, d_in: int, n_out: int, size: str | None = "3m", context: int = 256,
                 adapters: str = "attention", train_embeddings: bool = True, train_head: bool = True,
                 tie_head: bool = False, train_norms: bool = True, d_model: int | None = None,
                 layers: int | None = None, heads: int | None = None, d_ff: int | None = None,
                 rope_base: float = 10000.0) -> None:
        super().__init__()
        dims = resolve_size(size, d_model=d_model, layers=layers, heads=heads, d_ff=d_ff)
        if adapters not in ADAPTERS:
            raise ValueError(f"adapters must be one of {', '.join(map(repr, ADAPTERS))}, got {adapters!r}")
        if context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        if tie_head and d_in != n_out:
            raise ValueError(f"tie_head=True needs d_in == n_out (one vocabulary), got d_in={d_in}, n_out={n_out}")
        if tie_head and not (train_embeddings and train_head):
            raise ValueError("tie_head=True needs train_embeddings=True and train_head=True: the tied head shares the "
                             "embedding's weight, which a scaffold would untie")
        self.vocab, self.context, self.dims = d_in, context, dims
        d, head_dim = dims["d_model"], check_heads(dims["d_model"], dims["heads"], rotary=True)
        self.embed = nn.Embedding(d_in, d)
        self.rotary = Rotary(head_dim, context, rope_base)
        self.blocks = nn.ModuleList(Block(d, dims["heads"], dims["d_ff"]) for _ in range(dims["layers"]))
        self.norm = nn.RMSNorm(d, eps=1e-6)
        self.head = nn.Linear(d, n_out, bias=False)
        if tie_head:
            self.head.weight = self.embed.weight
        self.scaffold_max_rank = dict(ADAPTERS[adapters])
        self.scaffold_targets = (BLOCK_LINEAR, *(() if train_embeddings else ("embed",)),
                                 *(() if train_head else ("head",)))
        self.scaffold_trainable = (*(("embed",) if train_embeddings else ()),
                                   *(("head",) if train_head and not tie_head else ()),
                                   *((NORMS,) if train_norms else ()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tokens(x, self.vocab, self.context)
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, self.rotary)
        return self.head(self.norm(h))


def count_llama(size: str | None = "3m", vocab: int = 65, **kwargs: Any) -> int:
    """Parameters of a llama built on the meta device (no memory is allocated)."""
    with torch.device("meta"):
        model = Llama(vocab, vocab, size=size, **kwargs)
    return sum(p.numel() for p in model.parameters())
