"""Graph networks, GCN (Kipf and Welling 2017) and GIN (Xu et al. 2019), in plain torch on dense graphs.

Input: X (B, N, F + N) as ``data/graphs.py`` packs it, node features then A + diag(m), m the mask of
real nodes. Every message-passing weight is an nn.Linear (``layers.{l}...``), so the layer registry
scaffolds it: W_seed frozen, beta and the adapters B A train (eq. (1)). The node-feature
embedding (``embed``, F -> d, an embedding of categorical features as in Dwivedi et al.), the
LayerNorms and the head train, as embeddings, norms and heads do in the transformer families.

- GCN layer: h <- h + ReLU(W (D^-1/2 (A + I) D^-1/2 LN(h)) + b), the propagation of torch-geometric's
  GCNConv (normalise, then W; W and the propagation commute, b added once).
- GIN layer (GIN-0): h <- h + ReLU(W_2 ReLU(W_1 (x + sum_{u in N(v)} x_u))), x = LN(h): GINConv with
  eps = 0. The LayerNorm comes first (pre-norm): after a sum over neighbours it would scale the
  degree away, which is what GIN's sum aggregation is there to see.

``readout`` "nodes" gives logits per node (B, N, C) (task node-classification); "mean" or "sum"
pools the real nodes first, giving logits per graph (B, C) (task classification).
"""

from __future__ import annotations

import math

import torch
from torch import nn

READOUTS = ("nodes", "mean", "sum")


def split_graph(X: torch.Tensor, n_features: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(node features (B, N, F), adjacency A without self-loops (B, N, N), node mask m (B, N))."""
    feats, adj = X[..., :n_features], X[..., n_features:]
    m = torch.diagonal(adj, dim1=-2, dim2=-1)
    return feats, adj - torch.diag_embed(m), m


def gcn_norm(A: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """D^-1/2 (A + diag(m)) D^-1/2, D the degrees of A + diag(m); padding rows and columns stay 0."""
    A_hat = A + torch.diag_embed(m)
    d = A_hat.sum(-1)
    inv = torch.where(d > 0, d.clamp_min(1e-12).rsqrt(), torch.zeros_like(d))
    return inv[..., :, None] * A_hat * inv[..., None, :]


class GCNLayer(nn.Module):
    """W (A_norm h) + b, A_norm = gcn_norm(A, m) (torch-geometric's GCNConv on the same graph)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, h: torch.Tensor, A_norm: torch.Tensor) -> torch.Tensor:
        return self.lin(A_norm @ h)


class GINLayer(nn.Module):
    """MLP(h + A h), MLP = lin2 . ReLU . lin1 (torch-geometric's GINConv(MLP), eps = 0)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(d_in, d_out), nn.Linear(d_out, d_out)

    def forward(self, h: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.relu(self.lin1(h + A @ h)))


class _GraphNet(nn.Module):
    """The shared body: embed, ``layers`` residual message-passing blocks, readout, head."""

    scaffold_targets = (r"layers\.\d+\.lin\d?",)
    scaffold_trainable = ("embed", "head", r"norms\.\d+")
    scaffold_head = "head"
    layer_type: type[nn.Module] = GCNLayer

    def __init__(self, d_in: int, n_out: int, features: int, hidden: int = 32, layers: int = 4,
                 readout: str = "nodes", dropout: float = 0.0) -> None:
        super().__init__()
        for k, v, lo in (("features", features, 1), ("hidden", hidden, 1), ("layers", layers, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{k} must be an int >= {lo}, got {v!r}")
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; allowed: {', '.join(READOUTS)}")
        n = (math.isqrt(features ** 2 + 4 * d_in) - features) // 2  # d_in = N (F + N)
        if n < 1 or n * (n + features) != d_in:
            raise ValueError(f"d_in = {d_in} is not N (features + N) for any number of nodes N with features = "
                             f"{features}; graphs are rows of shape (N, features + N) (data/graphs.py)")
        self.n_nodes, self.features, self.readout = n, features, readout
        self.embed = nn.Linear(features, hidden)
        self.layers = nn.ModuleList(self.layer_type(hidden, hidden) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_out)

    def propagator(self, A: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.dim() != 3 or X.shape[1:] != (self.n_nodes, self.features + self.n_nodes):
            raise ValueError(f"expected graphs of shape (B, {self.n_nodes}, {self.features + self.n_nodes}), "
                             f"got {tuple(X.shape)}")
        feats, A, m = split_graph(X, self.features)
        P = self.propagator(A, m)
        h = self.embed(feats)
        for layer, norm in zip(self.layers, self.norms):
            h = h + self.drop(torch.relu(layer(norm(h), P)))
        if self.readout != "nodes":
            h = (h * m[..., None]).sum(1)
            if self.readout == "mean":
                h = h / m.sum(1, keepdim=True).clamp_min(1)
        return self.head(h)


class GCN(_GraphNet):
    """Graph convolutional network (module doc)."""

    layer_type = GCNLayer

    def propagator(self, A, m):
        return gcn_norm(A, m)


class GIN(_GraphNet):
    """Graph isomorphism network, GIN-0 (module doc)."""

    layer_type = GINLayer

    def propagator(self, A, m):
        return A
