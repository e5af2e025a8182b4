"""Plain-(6n+2) CNN (He et al. 2016, the ResNet paper's plain baseline), for 28x28 or 32x32 images.

stem: conv3x3(c_in -> 16); three stages of 2n conv3x3 layers with 16, 32, 64 channels
(stride 2 at the start of stages 2 and 3); BatchNorm + ReLU after every conv; global
average pooling; a linear head. Plain-20: n = 3. Every conv is a scaffold target;
BatchNorm and the head train.
"""

from __future__ import annotations

from torch import nn


class ConvBN(nn.Module):
    """conv3x3 -> BatchNorm -> ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.norm(self.conv(x)).relu()


class Plain(nn.Module):
    """Plain-(6n+2): stem conv, 3 stages of 2n convs (16/32/64 channels), average pool, head."""

    scaffold_targets = (r".*\.conv",)
    scaffold_trainable = ("head", r".*\.norm")
    scaffold_head = "head"  # the output layer "all-linear" leaves out

    def __init__(self, d_in: int, n_out: int, n: int = 3, channels: tuple[int, ...] = (16, 32, 64),
                 c_in: int = 1) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"n (conv layers per stage) must be >= 1, got {n!r}")
        side = int(round((d_in / c_in) ** 0.5))
        if c_in * side * side != d_in:
            raise ValueError(f"d_in = {d_in} is not c_in x side x side with c_in = {c_in}")
        self.c_in, self.side = c_in, side
        self.stem = ConvBN(c_in, channels[0])
        layers, c = [], channels[0]
        for i, width in enumerate(channels):
            for j in range(2 * n):
                layers.append(ConvBN(c, width, stride=2 if (j == 0 and i > 0) else 1))
                c = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(c, n_out)

    def forward(self, x):
        x = x.reshape(len(x), self.c_in, self.side, self.side)
        return self.head(self.stages(self.stem(x)).mean((2, 3)))
