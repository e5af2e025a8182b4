"""A Transformer encoder classifier (the paper's IMDB model: 3 layers) from plain torch layers.

Token embedding + learned positions, pre-norm encoder blocks with a key padding mask,
a final LayerNorm, pooling and a linear head. Every linear layer of the blocks is a
scaffold (eq. (1)); embeddings, norms and the head train.
"""

from __future__ import annotations

import torch
from torch import nn

from .transformer import BLOCK_LINEAR, BLOCK_NORMS, EncoderStack, check_heads, check_tokens


def _mean(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over the non-pad positions."""
    w = keep.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(1) / w.sum(1)


POOLINGS = {"mean": _mean, "first": lambda h, keep: h[:, 0]}


class Encoder(EncoderStack):
    """forward(x (B, T) int64, right-padded with ``pad_id``) -> logits (B, n_out).

    Pad positions are masked out of attention (as keys) and out of mean pooling, so
    appending pads never changes the output. Raises ValueError for T > ``context``, a token
    id outside [0, d_in) and a sequence that is all padding.
    """

    scaffold_targets = (BLOCK_LINEAR,)
    scaffold_trainable = ("embed", "pos", BLOCK_NORMS, "norm", "head")
    scaffold_head = "head"  # the output layer "all-linear" leaves out

    def __init__(self, d_in: int, n_out: int, layers: int = 3, d_model: int = 128, heads: int = 4,
                 context: int = 256, pad_id: int | None = 0, pooling: str = "mean", d_ff: int | None = None,
                 dropout: float = 0.1) -> None:
        super().__init__()
        check_heads(d_model, heads)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}, got {pooling!r}")
        if layers < 1 or context < 1:
            raise ValueError(f"layers and context must be >= 1, got layers={layers}, context={context}")
        if pad_id is not None and not 0 <= pad_id < d_in:
            raise ValueError(f"pad_id={pad_id} is out of the vocabulary: allowed [0, {d_in - 1}] or None")
        self.vocab, self.context, self.pad_id, self.pooling = d_in, context, pad_id, pooling
        self.embed, self.pos = nn.Embedding(d_in, d_model), nn.Embedding(context, d_model)
        self.add_stack(d_model, heads, d_ff, dropout, layers, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tokens(x, self.vocab, self.context)
        keep = torch.ones_like(x, dtype=torch.bool) if self.pad_id is None else x != self.pad_id
        empty = (~keep.any(1)).nonzero().flatten()
        if len(empty):
            raise ValueError(f"sequence {int(empty[0])} of the batch is all padding (pad_id={self.pad_id}): "
                             f"nothing to attend to or pool")
        h = self.encode(self.embed(x) + self.pos(torch.arange(x.shape[1], device=x.device)), keep[:, None, None, :])
        return self.head(POOLINGS[self.pooling](self.norm(h), keep))
