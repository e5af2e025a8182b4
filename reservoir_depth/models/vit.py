"""A Vision Transformer from plain torch layers: patch embedding, encoder blocks, class head.

The patch embedding is a Linear over each flattened patch (C * patch * patch values).
A class token and learned positions are added, the blocks run unmasked, the class
token's final state goes through a LayerNorm and the head. Every linear layer of the
blocks is a scaffold (eq. (1)); ``fully_random=True`` (default, the paper's "fully
random ViT") makes the patch embedding a scaffold too, False trains it.
"""

from __future__ import annotations

import torch
from torch import nn

from .transformer import BLOCK_LINEAR, BLOCK_NORMS, EncoderStack, check_heads


class Tokens(nn.Module):
    """The learned class token and positions (a module, so trainable patterns can name them)."""

    def __init__(self, n_patches: int, d_model: int) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(0.02 * torch.randn(1, n_patches + 1, d_model))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cls.expand(len(patches), -1, -1), patches], 1) + self.pos


class ViT(EncoderStack):
    """forward(x (B, C, H, W) or (B, C * H * W)) -> logits (B, n_out)."""

    scaffold_targets: tuple[str, ...] = (BLOCK_LINEAR, "patch_embed")
    scaffold_trainable: tuple[str, ...] = ("tokens", BLOCK_NORMS, "norm", "head")
    scaffold_head = "head"  # the output layer "all-linear" leaves out

    def __init__(self, d_in: int, n_out: int, image_size: int = 28, channels: int = 1, patch: int = 4,
                 d_model: int = 64, layers: int = 4, heads: int = 4, d_ff: int | None = None,
                 dropout: float = 0.1, fully_random: bool = True) -> None:
        super().__init__()
        check_heads(d_model, heads)
        if d_in != channels * image_size * image_size:
            raise ValueError(f"d_in = {d_in} is not channels x image_size^2 = {channels} x {image_size}^2 "
                             f"= {channels * image_size ** 2}")
        if patch < 1 or image_size % patch:
            raise ValueError(f"patch={patch} must be >= 1 and divide image_size={image_size}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.channels, self.image_size, self.patch = channels, image_size, patch
        n_patches = (image_size // patch) ** 2
        self.patch_embed = nn.Linear(channels * patch * patch, d_model)
        self.tokens = Tokens(n_patches, d_model)
        self.add_stack(d_model, heads, d_ff, dropout, layers, n_out)
        if not fully_random:
            self.scaffold_targets = (BLOCK_LINEAR,)
            self.scaffold_trainable = ("patch_embed", *type(self).scaffold_trainable)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) or (B, C*H*W) -> (B, n_patches, C * patch * patch), patches in row-major order."""
        C, S, p = self.channels, self.image_size, self.patch
        if x.shape[1:] not in (torch.Size([C * S * S]), torch.Size([C, S, S])):
            raise ValueError(f"expected images of shape (batch, {C}, {S}, {S}) or (batch, {C * S * S}), "
                             f"got {tuple(x.shape)}")
        x = x.reshape(len(x), C, S // p, p, S // p, p)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(len(x), (S // p) ** 2, C * p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encode(self.tokens(self.patch_embed(self.patches(x))))
        return self.head(self.norm(h[:, 0]))
