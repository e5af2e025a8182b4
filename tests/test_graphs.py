"""Graph data (data/graphs.py), the node-classification task and the graph families (models/graph.py)."""

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import connected_components

from reservoir_depth import data
from reservoir_depth.data import Dataset
from reservoir_depth.data.graphs import cluster, community_graph, pack, pattern, sbm, sbm_communities
from reservoir_depth.models import build
from reservoir_depth.models.graph import gcn_norm, split_graph
from reservoir_depth.scaffold import ScaffoldLinear
from reservoir_depth.tasks import task_of
from reservoir_depth.train import TrainConfig, train

from helpers import scaffolded

# sha256 of (X_train, y_train, X_test, y_test) of seed 7 with 3 + 2 graphs: the generators' bits
PINNED = {
    pattern: "e51e5a42c5209d4a7bfc7667a9ab3e52cb957dedefff463677f63fa0d27c3436",
    cluster: "d35db143c94a0feaa6ae37442178c52fc9fe6b2286f903a45eb731a38bf70d8f",
    sbm_communities: "490a5895a2642b44e835cfab8a04d9daf73202739d88db3619df5171074eda76",
}


def digest(d: Dataset) -> str:
    h = hashlib.sha256()
    for t in (d.X_train, d.y_train, d.X_test, d.y_test):
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("loader", list(PINNED), ids=lambda f: f.__name__)
def test_generators_are_bit_stable(loader):
    d = loader(seed=7, n_train=3, n_test=2)
    assert digest(d) == PINNED[loader]
    assert digest(loader(seed=8, n_train=3, n_test=2)) != PINNED[loader]


def graphs_of(d: Dataset, F: int):
    """(adjacency without self-loops, features, mask) per training graph, as numpy."""
    feats, A, m = split_graph(d.X_train, F)
    return feats.numpy(), A.numpy(), m.numpy()


@pytest.mark.parametrize("loader,F", [(pattern, 3), (cluster, 7), (sbm_communities, 1)], ids=["pattern", "cluster", "communities"])
def test_packing_symmetric_adjacency_mask_on_the_diagonal(loader, F):
    d = loader(seed=1, n_train=20, n_test=5)
    feats, A, m = graphs_of(d, F)
    assert set(np.unique(A)) <= {0.0, 1.0} and np.array_equal(A, A.transpose(0, 2, 1))
    n = m.sum(1).astype(int)
    for i in range(len(n)):  # real nodes first, padding after: no edge and no feature there
        assert m[i, :n[i]].all() and not m[i, n[i]:].any()
        assert not A[i, n[i]:].any() and not feats[i, n[i]:].any()
        assert (feats[i, :n[i]].sum(1) == 1).all()  # one-hot
    if d.task == "node-classification":
        assert ((d.y_train >= 0).numpy() == m.astype(bool)).all()


def test_pattern_plants_20_nodes_in_graphs_of_the_published_sizes():
    d = pattern(seed=0, n_train=50, n_test=1)
    assert ((d.y_train == 1).sum(1) == 20).all()
    n = (d.y_train >= 0).sum(1)
    assert n.min() >= 5 * 5 + 20 and n.max() <= 5 * 35 + 20


def test_cluster_labels_one_node_per_community():
    d = cluster(seed=0, n_train=30, n_test=1)
    feats = d.X_train[..., :7].argmax(-1)
    real = d.y_train >= 0
    labelled = real & (feats > 0)
    assert (labelled.sum(1) == 6).all()
    assert torch.equal(feats[labelled] - 1, d.y_train[labelled])


def test_sbm_edge_probabilities():
    """Within and between blocks, edges appear at rates p and q (4 sd of a binomial)."""
    rng = np.random.Generator(np.random.PCG64(0))
    blocks = np.repeat([0, 1], 150)
    A = sbm(rng, blocks, np.array([[0.5, 0.2], [0.2, 0.5]]))
    same = blocks[:, None] == blocks[None, :]
    iu = np.triu_indices(len(blocks), 1)
    for mask, p in ((same[iu], 0.5), (~same[iu], 0.2)):
        n = mask.sum()
        assert abs(A[iu][mask].mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    assert not A.diagonal().any()


def test_community_count_label_is_the_number_of_blocks():
    rng = np.random.Generator(np.random.PCG64(3))
    for _ in range(20):
        A, feats, label = community_graph(rng, ks=(2, 6), n=(60, 60), p=1.0, q=0.0)
        assert connected_components(A, directed=False)[0] == (2, 6)[label]


def test_loaders_refuse_unknown_profile_and_bad_sizes():
    with pytest.raises(ValueError, match=r"unknown profile 'tpu' for 'pattern'; allowed: cpu, gpu"):
        data.load("pattern", profile="tpu")
    with pytest.raises(ValueError, match=r"n_train must be an int >= 1, got 0"):
        cluster(n_train=0)
    with pytest.raises(ValueError, match=r"graph 0 has 3 nodes; allowed: at most n_nodes = 2"):
        pack([(np.zeros((3, 3)), np.zeros(3, np.int64))], 1, 2)


def test_node_dataset_refuses_labels_out_of_range():
    d = pattern(seed=0, n_train=2, n_test=1)
    with pytest.raises(ValueError, match=r"y_train holds node label 2 at index \(0, 0\); allowed: 0 <= label < "
                                         r"n_classes = 2, or -1 for a padding node"):
        Dataset("g", d.X_train, torch.where(torch.arange(d.y_train.shape[1]) == 0, 2, d.y_train), d.X_test,
                d.y_test, 2, task="node-classification")
    with pytest.raises(ValueError, match=r"y_test must be int64 node labels of shape"):
        Dataset("g", d.X_train, d.y_train, d.X_test, d.y_test[:, :-1], 2, task="node-classification")


def test_node_task_leaves_padding_out_and_balances_classes():
    t = task_of("node-classification")
    y = torch.tensor([[0, 0, 0, 1, -1]])
    out = torch.zeros(1, 5, 2)
    out[0, :, 0] = 5.0  # predicts class 0 everywhere, padding included
    m = t.metrics(t.sums(out, y), y)
    assert m["acc"] == 3 / 4 and m["bacc"] == (1.0 + 0.0) / 2
    scrambled = out.clone()
    scrambled[0, 4] = torch.tensor([-9.0, 9.0])  # the padding node's logits do not count
    assert t.loss(scrambled, y).item() == pytest.approx(t.loss(out, y).item())
    # class weights (V - V_c) / V = 1/4 for class 0, 3/4 for class 1, loss divided by V = 4
    ce = torch.nn.functional.cross_entropy(out[0, :4], y[0, :4], reduction="none")
    assert t.loss(out, y).item() == pytest.approx(((ce[:3] * 0.25).sum() + ce[3] * 0.75).item() / 4)


def random_graphs(seed: int, B: int = 3, N: int = 9, F: int = 2, pad: int = 2) -> torch.Tensor:
    rng = np.random.Generator(np.random.PCG64(seed))
    graphs = []
    for _ in range(B):
        n = int(rng.integers(N - pad, N + 1))
        graphs.append((sbm(rng, np.zeros(n, np.int64), np.array([[0.4]])), rng.integers(0, F, size=n)))
    return pack(graphs, F, N)


@pytest.mark.parametrize("arch", ["gcn", "gin"])
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_permuting_the_nodes_permutes_the_node_outputs(arch, seed):
    X = random_graphs(seed)
    F, N = 2, X.shape[1]
    model = build(arch, d_in=N * (N + F), n_out=3, features=F, hidden=8, layers=2).eval()
    perm = torch.from_numpy(np.random.Generator(np.random.PCG64(seed)).permutation(N))
    Xp = torch.cat([X[:, perm, :F], X[:, perm][:, :, F:][:, :, perm]], -1)
    torch.testing.assert_close(model(Xp), model(X)[:, perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["gcn", "gin"])
def test_padding_changes_no_real_node(arch):
    X = random_graphs(0, pad=0)  # 9 real nodes each
    F, N = 2, X.shape[1]
    padded = torch.zeros(len(X), N + 4, F + N + 4)
    padded[:, :N, :F], padded[:, :N, F:F + N] = X[:, :, :F], X[:, :, F:]
    kw = dict(n_out=3, features=F, hidden=8, layers=3)
    small = build(arch, d_in=N * (N + F), **kw).eval()
    big = build(arch, d_in=(N + 4) * (N + 4 + F), **kw).eval()
    torch.testing.assert_close(big(padded)[:, :N], small(X), rtol=1e-5, atol=1e-5)
    small.readout = big.readout = "mean"
    torch.testing.assert_close(big(padded), small(X), rtol=1e-5, atol=1e-5)


def test_gcn_norm_by_hand():
    A = torch.tensor([[[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]])
    d = torch.tensor([2.0, 3, 2])  # degrees with the self-loop
    expected = (A[0] + torch.eye(3)) / torch.sqrt(d[:, None] * d[None, :])
    torch.testing.assert_close(gcn_norm(A, torch.ones(1, 3))[0], expected)


def test_the_models_refuse_a_d_in_that_is_no_graph():
    with pytest.raises(ValueError, match=r"d_in = 10 is not N \(features \+ N\) for any number of nodes N with "
                                         r"features = 2"):
        build("gcn", d_in=10, n_out=2, features=2)
    with pytest.raises(ValueError, match=r"unknown readout 'max'; allowed: nodes, mean, sum"):
        build("gin", d_in=8, n_out=2, features=2, readout="max")


@pytest.mark.parametrize("arch", ["gcn", "gin"])
def test_every_message_passing_weight_is_a_scaffold(arch):
    model = scaffolded(build(arch, d_in=8 * 10, n_out=2, features=2, hidden=8, layers=3), r=2)
    linears = {n for n, m in model.named_modules() if n.startswith("layers.") and isinstance(m, ScaffoldLinear)}
    assert linears == {f"layers.{i}.{lin}" for i in range(3) for lin in (("lin",) if arch == "gcn" else ("lin1", "lin2"))}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.endswith("W_seed") for n in trainable)
    assert {"embed.weight", "head.weight"} <= trainable


@pytest.mark.parametrize("arch,loader,F,readout,headline", [("gcn", pattern, 3, "nodes", "test_bacc"),
                                                              ("gin", sbm_communities, 1, "mean", "test_acc")])
def test_trains_and_improves_on_tiny_generated_data(arch, loader, F, readout, headline):
    torch.manual_seed(0)
    d = loader(seed=0, n_train=32, n_test=1)
    d.X_test, d.y_test = d.X_train, d.y_train  # fit the training graphs: loss and headline metric improve
    model = scaffolded(build(arch, d_in=d.d_in, n_out=d.n_out, features=F, hidden=16, layers=2, readout=readout), r=4)
    hist = train(model, d, TrainConfig(epochs=6, lr=3e-2, batch_size=8, progress=False))
    first, last = hist.epochs[0], hist.epochs[-1]
    assert last["test_loss"] < 0.9 * first["test_loss"]
    assert last[headline] > first[headline] + 0.1


def pyg_edges(A: torch.Tensor) -> torch.Tensor:
    return A.nonzero().t().contiguous()


def test_gcn_layer_matches_torch_geometric_gcnconv():
    pyg = pytest.importorskip("torch_geometric.nn")
    from reservoir_depth.models.graph import GCNLayer

    X = random_graphs(5, B=1, N=10, pad=0)
    feats, A, m = split_graph(X, 2)
    h = torch.randn(1, 10, 6, generator=torch.Generator().manual_seed(0))
    ours, conv = GCNLayer(6, 4), pyg.GCNConv(6, 4)
    with torch.no_grad():
        conv.lin.weight.copy_(ours.lin.weight)
        conv.bias.copy_(ours.lin.bias)
    torch.testing.assert_close(ours(h, gcn_norm(A, m))[0], conv(h[0], pyg_edges(A[0])), rtol=1e-5, atol=1e-5)


def test_gin_layer_matches_torch_geometric_ginconv():
    pyg = pytest.importorskip("torch_geometric.nn")
    from reservoir_depth.models.graph import GINLayer

    X = random_graphs(6, B=1, N=10, pad=0)
    _, A, _ = split_graph(X, 2)
    h = torch.randn(1, 10, 6, generator=torch.Generator().manual_seed(0))
    ours = GINLayer(6, 4)
    conv = pyg.GINConv(torch.nn.Sequential(ours.lin1, torch.nn.ReLU(), ours.lin2), eps=0.0, train_eps=False)
    torch.testing.assert_close(ours(h, A)[0], conv(h[0], pyg_edges(A[0])), rtol=1e-5, atol=1e-5)


def test_task_spectra_refuse_node_labels_with_padding():
    from reservoir_depth.predict import DataSpectrum, LayerTaskSpectrum

    d = pattern(seed=0, n_train=4, n_test=1)
    model = scaffolded(build("gcn", d_in=d.d_in, n_out=2, features=3, hidden=8, layers=1), r=1)
    for est, m in ((LayerTaskSpectrum(n_rows=4), model), (DataSpectrum("task", n_rows=4), None)):
        with pytest.raises(ValueError, match=r"padding nodes \(label -1\) as a class"):
            est.fit(m, d)
