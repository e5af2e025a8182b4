"""Generated graph tasks: PATTERN and CLUSTER (node classification on stochastic-block-model graphs,
Dwivedi et al. 2020, "Benchmarking Graph Neural Networks", section 5.2 and appendix) and a
community-count graph classification. numpy generators from explicit seeds: the same call gives
the same bits on any machine.

A graph of n nodes is stored as one row of X: a float (N, F + N) block, N the largest graph of the
data set (both splits padded alike), holding the F-dimensional node features (one-hot) and then the
adjacency with self-loops on the real nodes only, ``X[i, :, F:] = A + diag(m)``, m_v = 1 for a real
node and 0 for padding. The models (models/graph.py) read the node mask off that diagonal; padding
nodes have no edges and no features.

- "pattern": 5 communities of sizes uniform in [5, 35], p = 0.5 within and q = 0.35 between, node
  features uniform over a vocabulary of 3; one of 100 fixed patterns P (20 nodes, p_P = 0.5 within,
  q_P = 0.5 to the rest) is planted in each graph; label 1 for P's nodes, 0 for the others.
  Published size: 10,000 / 2,000 / 2,000 graphs (train / val / test).
- "cluster": 6 communities of sizes uniform in [5, 35], p = 0.55, q = 0.25; one node per community
  is labelled (feature c + 1 for community c), every other node has feature 0; the label of every
  node is its community. Published size: 10,000 / 1,000 / 1,000 graphs.
- "sbm-communities": graph classification, how many communities (2, 3, 4 or 5, the label k - 2):
  n uniform in [45, 55] nodes split as evenly as possible into k communities, p = 0.5, q = 0.05,
  one constant node feature (the structure alone tells k).

Node labels of padding are -1 (task "node-classification" leaves them out). ``profile`` "cpu"
(default) is a scaled-down number of graphs with the published generator parameters; "gpu" is
the published number of graphs (the validation graphs are not generated: Dataset.validation
carves one from the training split).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .dataset import Dataset

PROFILES = {  # data set -> profile -> (train graphs, test graphs)
    "pattern": {"cpu": (1000, 200), "gpu": (10000, 2000)},
    "cluster": {"cpu": (1000, 200), "gpu": (10000, 1000)},
    "sbm-communities": {"cpu": (1000, 400), "gpu": (10000, 2000)},
}


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def sbm(rng: np.random.Generator, blocks: np.ndarray, P: np.ndarray) -> np.ndarray:
    """A symmetric 0/1 adjacency (no self-loops) of a stochastic block model: nodes in blocks
    ``blocks`` (n,), edge {u, v} present with probability P[blocks[u], blocks[v]]."""
    n = len(blocks)
    upper = np.triu(rng.random((n, n)) < P[blocks[:, None], blocks[None, :]], 1)
    return (upper | upper.T).astype(np.uint8)


def pattern_graph(rng: np.random.Generator, patterns: Sequence[tuple[np.ndarray, np.ndarray]],
                  k: int = 5, sizes: tuple[int, int] = (5, 35), p: float = 0.5, q: float = 0.35,
                  q_pattern: float = 0.5, vocab: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One PATTERN graph: (adjacency (n, n), features (n,) in [0, vocab), labels (n,) 1 on the pattern).
    A pattern is (its adjacency, its features); each of its nodes links to each node of G with
    probability q_pattern."""
    n_c = rng.integers(sizes[0], sizes[1] + 1, size=k)
    blocks = np.repeat(np.arange(k), n_c)
    G = sbm(rng, blocks, np.full((k, k), q) + (p - q) * np.eye(k))
    feats_G = rng.integers(0, vocab, size=len(blocks))
    A_P, feats_P = patterns[int(rng.integers(len(patterns)))]
    cross = (rng.random((len(blocks), len(feats_P))) < q_pattern).astype(np.uint8)
    A = np.block([[G, cross], [cross.T, A_P]])
    feats = np.concatenate([feats_G, feats_P])
    labels = np.concatenate([np.zeros(len(blocks), np.int64), np.ones(len(feats_P), np.int64)])
    return _permuted(rng, A, feats, labels)


def cluster_graph(rng: np.random.Generator, k: int = 6, sizes: tuple[int, int] = (5, 35), p: float = 0.55,
                  q: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One CLUSTER graph: (adjacency, features (n,) in [0, k]: c + 1 on one node of community c, else 0,
    labels (n,) the community)."""
    n_c = rng.integers(sizes[0], sizes[1] + 1, size=k)
    blocks = np.repeat(np.arange(k), n_c)
    A = sbm(rng, blocks, np.full((k, k), q) + (p - q) * np.eye(k))
    feats = np.zeros(len(blocks), np.int64)
    starts = np.concatenate([[0], np.cumsum(n_c)[:-1]])
    feats[starts + rng.integers(0, n_c)] = np.arange(k) + 1
    return _permuted(rng, A, feats, blocks.astype(np.int64))


def community_graph(rng: np.random.Generator, ks: Sequence[int] = (2, 3, 4, 5), n: tuple[int, int] = (45, 55),
                    p: float = 0.5, q: float = 0.05) -> tuple[np.ndarray, np.ndarray, int]:
    """One community-count graph: (adjacency, features (n,) all 0, label = index of k in ``ks``)."""
    label = int(rng.integers(len(ks)))
    k, size = ks[label], int(rng.integers(n[0], n[1] + 1))
    blocks = np.arange(size) * k // size  # k communities of sizes differing by at most one
    A = sbm(rng, blocks, np.full((k, k), q) + (p - q) * np.eye(k))
    A, feats, _ = _permuted(rng, A, np.zeros(size, np.int64), blocks)
    return A, feats, label


def _permuted(rng, A, feats, labels):
    perm = rng.permutation(len(feats))
    return A[np.ix_(perm, perm)], feats[perm], labels[perm]


def pack(graphs: Sequence[tuple[np.ndarray, np.ndarray]], n_features: int, n_nodes: int) -> torch.Tensor:
    """Graphs (adjacency, integer features) as X (len(graphs), n_nodes, n_features + n_nodes) float32:
    one-hot features, then A + diag(mask) (see the module doc)."""
    X = np.zeros((len(graphs), n_nodes, n_features + n_nodes), np.float32)
    for i, (A, feats) in enumerate(graphs):
        n = len(feats)
        if n > n_nodes:
            raise ValueError(f"graph {i} has {n} nodes; allowed: at most n_nodes = {n_nodes}")
        X[i, np.arange(n), feats] = 1.0
        X[i, :n, n_features:n_features + n] = A + np.eye(n, dtype=np.float32)
    return torch.from_numpy(X)


def _sizes(name: str, profile: str, n_train: int | None, n_test: int | None) -> tuple[int, int]:
    if profile not in PROFILES[name]:
        raise ValueError(f"unknown profile {profile!r} for {name!r}; allowed: {', '.join(PROFILES[name])}")
    tr, te = PROFILES[name][profile]
    out = (tr if n_train is None else n_train, te if n_test is None else n_test)
    for k, v in zip(("n_train", "n_test"), out):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be an int >= 1, got {v!r}")
    return out


def _node_dataset(name, graphs, n_train, n_features, n_classes) -> Dataset:
    n_nodes = max(len(f) for _, f, _ in graphs)
    X = pack([(A, f) for A, f, _ in graphs], n_features, n_nodes)
    y = torch.full((len(graphs), n_nodes), -1, dtype=torch.int64)
    for i, (_, _, lab) in enumerate(graphs):
        y[i, :len(lab)] = torch.from_numpy(lab)
    return Dataset(name, X[:n_train], y[:n_train], X[n_train:], y[n_train:], n_classes, task="node-classification")


def pattern(seed: int = 0, profile: str = "cpu", n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """PATTERN (module doc): 2 node classes; features one-hot over the vocabulary of 3."""
    n_train, n_test = _sizes("pattern", profile, n_train, n_test)
    rng = _rng(seed)
    patterns = []
    for _ in range(100):
        A_P = sbm(rng, np.zeros(20, np.int64), np.array([[0.5]]))
        patterns.append((A_P, rng.integers(0, 3, size=20)))
    graphs = [pattern_graph(rng, patterns) for _ in range(n_train + n_test)]
    return _node_dataset("pattern", graphs, n_train, 3, 2)


def cluster(seed: int = 0, profile: str = "cpu", n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """CLUSTER (module doc): 6 node classes; features one-hot over {0, ..., 6}."""
    n_train, n_test = _sizes("cluster", profile, n_train, n_test)
    rng = _rng(seed)
    graphs = [cluster_graph(rng) for _ in range(n_train + n_test)]
    return _node_dataset("cluster", graphs, n_train, 7, 6)


def sbm_communities(seed: int = 0, profile: str = "cpu", n_train: int | None = None,
                    n_test: int | None = None) -> Dataset:
    """Community count (module doc): 4 graph classes (k = 2..5), one constant feature."""
    n_train, n_test = _sizes("sbm-communities", profile, n_train, n_test)
    rng = _rng(seed)
    graphs = [community_graph(rng) for _ in range(n_train + n_test)]
    X = pack([(A, f) for A, f, _ in graphs], 1, max(len(f) for _, f, _ in graphs))
    y = torch.tensor([lab for _, _, lab in graphs], dtype=torch.int64)
    return Dataset("sbm-communities", X[:n_train], y[:n_train], X[n_train:], y[n_train:], 4)
