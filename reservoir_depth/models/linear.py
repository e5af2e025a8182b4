"""One linear layer, the simplest scaffold: y = beta W_seed x + s B A x + b."""

from torch import nn


class Linear(nn.Module):
    """A single nn.Linear named ``layer`` (the scaffold target); nothing else trains."""

    scaffold_targets = ("layer",)
    scaffold_trainable = ()
    scaffold_head = "layer"  # the output layer "all-linear" leaves out

    def __init__(self, d_in: int, n_out: int) -> None:
        super().__init__()
        self.layer = nn.Linear(d_in, n_out)

    def forward(self, x):
        return self.layer(x.flatten(1))
