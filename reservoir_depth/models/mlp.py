"""The paper's MLP family: ReLU, dropout 0.1, a trainable linear head."""

from __future__ import annotations

from typing import Sequence

from torch import nn

SIZES: dict[str, tuple[int, ...]] = {
    "tiny": (128, 64),
    "small": (256, 128, 64),
    "medium": (512, 256, 128, 64),
    "large": (1024, 512, 256, 128, 64),
}


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "identity": nn.Identity}


class MLP(nn.Module):
    """x -> [Linear, activation, Dropout] * len(hidden) -> head. Hidden layers are ``layers.{i}``."""

    scaffold_targets = (r"layers\.\d+",)
    scaffold_trainable = ("head",)
    scaffold_head = "head"  # the output layer "all-linear" leaves out

    def __init__(self, d_in: int, n_out: int, hidden: Sequence[int] | str = "medium", dropout: float = 0.1,
                 activation: str = "relu") -> None:
        super().__init__()
        if isinstance(hidden, str):
            if hidden not in SIZES:
                raise ValueError(f"unknown MLP size {hidden!r}; allowed: {', '.join(SIZES)}")
            hidden = SIZES[hidden]
        self.hidden = tuple(int(h) for h in hidden)
        dims = (d_in, *self.hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        self.act, self.drop = ACTIVATIONS[activation](), nn.Dropout(dropout)
        self.head = nn.Linear(dims[-1], n_out)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers:
            x = self.drop(self.act(layer(x)))
        return self.head(x)
