"""The paper's architecture families: llama, encoder, vit, reservoir (models/)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reservoir_depth import io
from reservoir_depth.distributions import draw, spectral_radius
from reservoir_depth.models import ARCHITECTURES, LLAMA_SIZES, build, count_llama, scaffold_defaults
from reservoir_depth.models.llama import FFN, resolve_size
from reservoir_depth.models.transformer import Rotary
from reservoir_depth.scaffold import ScaffoldConfig, ScaffoldLinear, merge, scaffold, scaffold_layers

from helpers import nudge_trainable, scaffolded

TINY_LLAMA = dict(d_in=11, n_out=11, size=None, d_model=16, layers=2, heads=2, context=12)
TINY = {
    "llama": TINY_LLAMA,
    "encoder": dict(d_in=13, n_out=3, layers=2, d_model=16, heads=2, context=10, dropout=0.0),
    "vit": dict(d_in=64, n_out=3, image_size=8, patch=4, d_model=16, layers=2, heads=2, dropout=0.0),
    "reservoir": dict(d_in=2, n_out=2, units=12, leak=0.5, rho=0.8),
}


def test_scaffold_defaults():
    res = build("reservoir", **TINY["reservoir"])
    assert scaffold_defaults(res) == {"target_modules": ("W_in", "W"), "trainable": ("readout",),
                                      "specs": {"W": res.scaffold_specs["W"]}, "max_rank": {"W_in": 2}}
    assert "max_rank" not in scaffold_defaults(build("reservoir", **{**TINY["reservoir"], "adapters": "recurrent"}))
    llama = build("llama", **TINY_LLAMA)
    assert scaffold_defaults(llama)["max_rank"] == {FFN: 0}
    assert "max_rank" not in scaffold_defaults(build("llama", **{**TINY_LLAMA, "adapters": "all"}))
    mlp = build("mlp", d_in=4, n_out=2, hidden=(3,))
    assert scaffold_defaults(mlp) == {"target_modules": mlp.scaffold_targets, "trainable": ("head",)}
    vit = build("vit", **{**TINY["vit"], "fully_random": False})
    assert scaffold_defaults(vit)["trainable"][0] == "patch_embed"


def data(name, n=16, seed=0):
    """Tiny random (x, y, loss) for each family."""
    g = torch.Generator().manual_seed(seed)
    kw = TINY[name]
    if name == "llama":
        x = torch.randint(0, kw["d_in"], (n, 8), generator=g)
        return x, torch.roll(x, -1, 1), lambda out, y: nn.functional.cross_entropy(out.flatten(0, 1), y.flatten())
    if name == "encoder":
        x = torch.randint(1, kw["d_in"], (n, 9), generator=g)
        x[: n // 2, 6:] = 0  # right padding
        return x, torch.randint(0, 3, (n,), generator=g), nn.functional.cross_entropy
    if name == "vit":
        return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g), nn.functional.cross_entropy
    x = torch.randn(n, 10, 2, generator=g)
    return x, torch.roll(x, 1, 1), nn.functional.mse_loss  # recall the previous input


def test_registered():
    assert {"llama", "encoder", "vit", "reservoir"} <= set(ARCHITECTURES)


# ----------------------------------------------------------------------------- shapes, errors


def test_shapes():
    torch.manual_seed(0)
    for name, kw in TINY.items():
        m = build(name, **kw).eval()
        x, y, _ = data(name, n=3)
        out = m(x)
        want = {"llama": (3, 8, 11), "encoder": (3, 3), "vit": (3, 3), "reservoir": (3, 10, 2)}[name]
        assert out.shape == want, name
    vit = build("vit", **TINY["vit"]).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(vit(x), vit(x.flatten(1)))


def test_llama_errors():
    m = build("llama", **TINY_LLAMA)
    with pytest.raises(ValueError, match="sequence length 13 exceeds the context 12"):
        m(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token id 11 is out of the vocabulary: allowed \[0, 10\]"):
        m(torch.tensor([[1, 11, 2]]))
    with pytest.raises(ValueError, match=r"token id -1 is out"):
        m(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="integer token ids"):
        m(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="unknown llama size '7m'"):
        build("llama", d_in=5, n_out=5, size="7m")
    with pytest.raises(ValueError, match="adapters must be one of"):
        build("llama", **{**TINY_LLAMA, "adapters": "mlp"})
    with pytest.raises(ValueError, match="heads=3 must be >= 1 and divide d_model=16"):
        build("llama", **{**TINY_LLAMA, "heads": 3})
    with pytest.raises(ValueError, match="even head dimension"):
        build("llama", **{**TINY_LLAMA, "d_model": 18, "heads": 2})
    with pytest.raises(ValueError, match="size=None needs explicit layers"):
        resolve_size(None, d_model=8, heads=2)
    with pytest.raises(ValueError, match="tie_head=True needs train_embeddings=True"):
        build("llama", **{**TINY_LLAMA, "tie_head": True, "train_embeddings": False})
    with pytest.raises(ValueError, match="tie_head=True needs d_in == n_out"):
        build("llama", **{**TINY_LLAMA, "tie_head": True, "n_out": 12})


def test_encoder_vit_reservoir_errors():
    enc = build("encoder", **TINY["encoder"])
    with pytest.raises(ValueError, match="sequence length 11 exceeds the context 10"):
        enc(torch.ones(1, 11, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token id 13 is out of the vocabulary: allowed \[0, 12\]"):
        enc(torch.tensor([[1, 13]]))
    with pytest.raises(ValueError, match="sequence 1 of the batch is all padding"):
        enc(torch.tensor([[1, 2], [0, 0]]))
    with pytest.raises(ValueError, match="pooling must be one of"):
        build("encoder", **{**TINY["encoder"], "pooling": "max"})
    with pytest.raises(ValueError, match="pad_id=13 is out of the vocabulary"):
        build("encoder", **{**TINY["encoder"], "pad_id": 13})
    with pytest.raises(ValueError, match="d_in = 65 is not channels x image_size"):
        build("vit", **{**TINY["vit"], "d_in": 65})
    with pytest.raises(ValueError, match="patch=3 must be >= 1 and divide image_size=8"):
        build("vit", **{**TINY["vit"], "patch": 3})
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 1, 8, 8\)"):
        build("vit", **TINY["vit"])(torch.randn(2, 3, 8, 8))
    res = build("reservoir", **TINY["reservoir"])
    with pytest.raises(ValueError, match="leak must be a number in"):
        build("reservoir", **{**TINY["reservoir"], "leak": 0})
    with pytest.raises(ValueError, match="rho .* must be a finite number > 0"):
        build("reservoir", **{**TINY["reservoir"], "rho": float("nan")})
    with pytest.raises(ValueError, match=r"x: expected a float tensor of shape \(batch, T, d_in\) with d_in=2"):
        res(torch.randn(3, 5, 4))
    with pytest.raises(ValueError, match=r"state: expected shape \(3, 12\)"):
        res.step(torch.randn(3, 2), torch.zeros(3, 5))


# ----------------------------------------------------------------------------- llama sizes


@pytest.mark.parametrize("size,target", [("3m", 3e6), ("30m", 30e6)])
def test_llama_cpu_sizes(size, target):
    m = build("llama", d_in=65, n_out=65, size=size)
    n = sum(p.numel() for p in m.parameters())
    assert abs(n / target - 1) < 0.15, n
    assert n == count_llama(size, vocab=65)


@pytest.mark.parametrize("size,target", [("150m", 150e6), ("300m", 300e6), ("900m", 900e6)])
def test_llama_gpu_sizes_on_meta(size, target):
    assert abs(count_llama(size, vocab=65) / target - 1) < 0.15


def test_llama_sizes_table_is_complete():
    assert set(LLAMA_SIZES) == {"3m", "30m", "150m", "300m", "900m"}


# ----------------------------------------------------------------------------- invariants


_LLAMA = {}


def tiny_llama():
    """One eval-mode tiny llama shared by the property tests (built once)."""
    if not _LLAMA:
        torch.manual_seed(0)
        _LLAMA["m"] = build("llama", **TINY_LLAMA).eval()
    return _LLAMA["m"]


@settings(max_examples=15, deadline=None)
@given(tokens=st.lists(st.integers(0, 10), min_size=2, max_size=12), j=st.integers(0, 11), new=st.integers(1, 10))
def test_llama_is_causal(tokens, j, new):
    """Changing the token at position j does not change the logits before j; it changes those at j."""
    m = tiny_llama()
    j = j % len(tokens)
    x = torch.tensor([tokens])
    x2 = x.clone()
    x2[0, j] = (x2[0, j] + new) % 11
    with torch.no_grad():
        a, b = m(x), m(x2)
    torch.testing.assert_close(a[:, :j], b[:, :j], rtol=0, atol=1e-5)
    assert (a[:, j] - b[:, j]).abs().amax() > 1e-5


def test_llama_uses_positions():
    """Without positions one layer of attention is a set operation over the prefix: swapping two earlier
    tokens would leave the last logits unchanged. Rotary positions make them differ."""
    torch.manual_seed(0)
    m = build("llama", **{**TINY_LLAMA, "layers": 1}).eval()
    a, b = m(torch.tensor([[1, 2, 3, 4]])), m(torch.tensor([[2, 1, 3, 4]]))
    assert (a[0, -1] - b[0, -1]).abs().amax() > 1e-4


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 20), n=st.integers(0, 20), shift=st.integers(0, 10), seed=st.integers(0, 2**16))
def test_rotary_scores_depend_on_relative_position(m, n, shift, seed):
    g = torch.Generator().manual_seed(seed)
    rot = Rotary(8, 32)
    q, k = torch.randn(8, generator=g), torch.randn(8, generator=g)

    def at(v, p):
        return rot(v.view(1, 1, 1, 8), offset=p).flatten()

    torch.testing.assert_close(at(q, m) @ at(k, n), at(q, m + shift) @ at(k, n + shift), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(at(q, m).norm(), q.norm())


_ENCODERS = {}


@settings(max_examples=15, deadline=None)
@given(pooling=st.sampled_from(["mean", "first"]), lengths=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       extra=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_encoder_padding_does_not_change_output(pooling, lengths, extra, seed):
    """Appending pads to a right-padded batch leaves every output as it was."""
    if pooling not in _ENCODERS:
        torch.manual_seed(0)
        _ENCODERS[pooling] = build("encoder", **{**TINY["encoder"], "pooling": pooling}).eval()
    m = _ENCODERS[pooling]
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randint(1, 13, (n,), generator=g)
    padded = torch.cat([x, torch.zeros(len(x), extra, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(m(padded), m(x), rtol=0, atol=1e-5)


def test_encoder_pads_are_not_tokens():
    """Real tokens where the pads were change the output (so the padding test is not vacuous)."""
    torch.manual_seed(0)
    m = build("encoder", **TINY["encoder"]).eval()
    x = torch.tensor([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11]])
    other = x.clone()
    other[0, 3:] = 6
    assert (m(other)[0] - m(x)[0]).abs().amax() > 1e-4
    torch.testing.assert_close(m(other)[1], m(x)[1])  # rows do not mix


# ----------------------------------------------------------------------------- scaffold targets


BLOCK_LINEAR = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")


def test_llama_targets_follow_config():
    """adapters="attention": every block linear is a scaffold, the SwiGLU ones at rank 0 (beta W_seed x)."""
    att = build("llama", **TINY_LLAMA)
    ranks = {n: layer.r for n, layer in scaffold_layers(scaffolded(att))}
    assert ranks == {f"blocks.{i}.{p}": (0 if p.startswith("mlp") else 2) for i in range(2) for p in BLOCK_LINEAR}
    trainable = {n for n, p in att.named_parameters() if p.requires_grad and p.numel()}
    assert {"embed.weight", "head.weight", "norm.weight", "blocks.0.attn_norm.weight"} <= trainable
    assert {n for n in trainable if ".mlp." in n} == {f"blocks.{i}.mlp.{p}.beta" for i in range(2)
                                                      for p in ("gate", "up", "down")}
    every = build("llama", **{**TINY_LLAMA, "adapters": "all", "train_head": False, "train_norms": False})
    names = {n for n, _ in scaffold_layers(scaffolded(every))}
    assert names == {f"blocks.{i}.{p}" for i in range(2) for p in BLOCK_LINEAR} | {"head"}
    assert all(layer.r == 2 for _, layer in scaffold_layers(every))
    assert {n for n, p in every.named_parameters() if p.requires_grad and "lora" not in n and "beta" not in n} \
        == {"embed.weight"}
    assert type(every).scaffold_targets != every.scaffold_targets  # instance attributes, from the config


def test_llama_attention_adapter_file_stores_only_what_trains(tmp_path):
    """The paper's setting: every backbone weight random and frozen, LoRA on attention only. The SwiGLU
    weights are drawn from the seed and regenerated on load, so the adapter file holds the trained tensors
    (A, B, beta, norms, embedding, head) and nothing else."""
    m = scaffolded(build("llama", **TINY_LLAMA))
    io.save(m, tmp_path)
    meta, tensors = io.verify(tmp_path)
    trained = {n: p for n, p in m.named_parameters() if p.requires_grad or p.numel() == 0}  # + the empty A, B at r = 0
    assert set(tensors) == set(trained)
    assert sum(t.numel() for t in tensors.values()) == sum(p.numel() for p in trained.values())
    layers = dict(scaffold_layers(m))
    gate = layers["blocks.1.mlp.gate"]
    assert "blocks.1.mlp.gate.W_seed" in meta["fingerprints"]
    assert torch.equal(gate.W_seed, draw(gate.spec, gate.weight_shape, gate.seed("W_seed")))
    x, _, _ = data("llama", n=2)
    assert torch.equal(io.load(tmp_path).eval()(x), m.eval()(x))


def test_llama_tied_head_trains_with_embedding():
    m = scaffolded(build("llama", **{**TINY_LLAMA, "tie_head": True}))
    assert m.head.weight is m.embed.weight and m.embed.weight.requires_grad
    assert "head" not in m.scaffold_trainable


def test_llama_scaffolded_embedding():
    m = scaffolded(build("llama", **{**TINY_LLAMA, "train_embeddings": False}))
    assert "embed" in dict(scaffold_layers(m))
    assert m(torch.randint(0, 11, (2, 5))).shape == (2, 5, 11)


def test_vit_fully_random_scaffolds_patch_embedding():
    names = {n for n, _ in scaffold_layers(scaffolded(build("vit", **TINY["vit"])))}
    assert "patch_embed" in names and "blocks.1.mlp.down" in names
    m = scaffolded(build("vit", **{**TINY["vit"], "fully_random": False}))
    assert "patch_embed" not in dict(scaffold_layers(m)) and m.patch_embed.weight.requires_grad
    assert m.tokens.pos.requires_grad and m.tokens.cls.requires_grad


def test_encoder_targets_every_block_linear():
    m = scaffolded(build("encoder", **TINY["encoder"]))
    assert {n for n, _ in scaffold_layers(m)} == {f"blocks.{i}.{p}" for i in range(2) for p in
                                                  ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down")}
    assert m.embed.weight.requires_grad and m.pos.weight.requires_grad and m.head.weight.requires_grad


@pytest.mark.parametrize("name", list(TINY))
def test_family_trains_and_loss_falls(name):
    torch.manual_seed(0)
    m = scaffolded(build(name, **TINY[name]), r=2)
    x, y, loss_fn = data(name)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m.train()
    losses = []
    for _ in range(12):
        loss = loss_fn(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    frozen = [n for n, l in scaffold_layers(m) if l.W_seed.requires_grad]
    assert not frozen


ROUND_TRIPS = [(name, kw) for name, kw in TINY.items()] + [
    ("llama", {**TINY_LLAMA, "tie_head": True}),
    ("llama", {**TINY_LLAMA, "adapters": "all", "train_embeddings": False, "train_head": False}),
    ("vit", {**TINY["vit"], "fully_random": False}),
    ("reservoir", {**TINY["reservoir"], "adapters": "recurrent"}),
]


@pytest.mark.parametrize("name,kw", ROUND_TRIPS)
def test_build_round_trip(name, kw, tmp_path):
    """arch_config rebuilds the family; a scaffolded, perturbed model saves and loads bit for bit."""
    torch.manual_seed(0)
    m = scaffolded(build(name, **kw), r=2)
    assert m.arch_config == {"name": name, **kw}
    nudge_trainable(m, 0.05, seed=1).eval()
    x, _, _ = data(name, n=3)
    io.save(m, tmp_path)
    torch.testing.assert_close(io.load(tmp_path).eval()(x), m(x), rtol=0, atol=0)


@pytest.mark.parametrize("name,kw", ROUND_TRIPS)
def test_merge_matches_and_loads_into_the_family(name, kw):
    """merge() computes what the scaffolded model computes and loads strictly into a fresh instance."""
    torch.manual_seed(0)
    m = scaffolded(build(name, **kw), r=2)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    m.eval()
    x, _, _ = data(name, n=3)
    merged = merge(m).eval()
    torch.testing.assert_close(merged(x), m(x), rtol=1e-4, atol=1e-5)
    fresh = build(name, **kw).eval()
    fresh.load_state_dict(merged.state_dict(), strict=True)
    torch.testing.assert_close(fresh(x), m(x), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- the reservoir is an ESN


def esn(x, W_in, b, W, leak):
    """An echo state network run by hand (float64 numpy): h_t = (1-a) h + a tanh(W_in x_t + W h + b)."""
    h = np.zeros((x.shape[0], W.shape[0]))
    states = []
    for t in range(x.shape[1]):
        h = (1 - leak) * h + leak * np.tanh(x[:, t] @ W_in.T + h @ W.T + b)
        states.append(h)
    return np.stack(states, 1)


def test_zero_adapter_reservoir_is_an_echo_state_network():
    """B = 0, beta = 1 (any r): the scaffolded reservoir is the ESN with W_in, W = the layers' W_seed."""
    torch.manual_seed(0)
    m = scaffolded(build("reservoir", d_in=3, n_out=2, units=20, leak=0.4, rho=0.9), r=3)
    assert isinstance(m.W, ScaffoldLinear) and isinstance(m.W_in, ScaffoldLinear)
    assert m.W.lora_A.detach().abs().sum() > 0 and not m.W.lora_B.detach().any() and float(m.W.beta.detach()) == 1
    x = torch.randn(4, 15, 3, generator=torch.Generator().manual_seed(1))
    W_in, b, W = (t.detach().double().numpy() for t in (m.W_in.W_seed, m.W_in.bias, m.W.W_seed))
    h = esn(x.double().numpy(), W_in, b, W, 0.4)
    np.testing.assert_allclose(m.states(x).detach().numpy(), h, rtol=1e-4, atol=1e-5)
    R, c = m.readout.weight.detach().double().numpy(), m.readout.bias.detach().double().numpy()
    np.testing.assert_allclose(m(x).detach().numpy(), h @ R.T + c, rtol=1e-4, atol=1e-5)
    # a non-zero adapter changes the dynamics (so the check above is not vacuous)
    with torch.no_grad():
        m.W.lora_B.fill_(0.1)
    assert np.abs(m.states(x).detach().numpy() - h).max() > 1e-3


def test_reservoir_step_matches_forward():
    torch.manual_seed(0)
    m = build("reservoir", **TINY["reservoir"])
    x = torch.randn(3, 7, 2)
    y, state = [], None
    for t in range(7):
        y_t, state = m.step(x[:, t], state)
        y.append(y_t)
    torch.testing.assert_close(torch.stack(y, 1), m(x))


def test_reservoir_on_a_scalar_series():
    """W_in is (units, 1): the reservoir caps its rank at d_in (max_rank), so r = 4 keeps LoRA on W_in at
    rank 1 and on W at rank 4; without the cap rank 2 is refused for W_in, naming the layer;
    adapters="recurrent" scaffolds W only."""
    m = scaffolded(build("reservoir", d_in=1, n_out=1, units=8), r=4)
    assert m.scaffold_max_rank == {"W_in": 1}
    assert {n: layer.r for n, layer in scaffold_layers(m)} == {"W_in": 1, "W": 4}
    x = torch.randn(2, 6, 1)
    m(x).square().sum().backward()
    assert m.W_in.lora_A.grad is not None and m.W_in.lora_A.grad.shape == (1, 1)
    uncapped = ScaffoldConfig(target_modules=("W_in", "W"), r=2)
    with pytest.raises(ValueError, match=r"rank r=2 for layer 'W_in' must lie in \[0, min\(d_in, d_out\)\] = \[0, 1\]"):
        scaffold(build("reservoir", d_in=1, n_out=1, units=8), uncapped)
    m = scaffolded(build("reservoir", d_in=1, n_out=1, units=8, adapters="recurrent"), r=4)
    assert [n for n, _ in scaffold_layers(m)] == ["W"] and m.scaffold_max_rank == {}
    assert not m.W_in.weight.requires_grad and m.readout.weight.requires_grad
    with pytest.raises(ValueError, match="adapters must be one of 'both', 'recurrent'"):
        build("reservoir", d_in=1, n_out=1, adapters="input")


def test_reservoir_declares_spectral_rule():
    m = build("reservoir", **{**TINY["reservoir"], "rho": 0.7})
    assert m.scaffold_specs == {"W": {"name": "normal", "scaling": "spectral_radius", "rho": 0.7, "version": 2}}
    assert type(m).scaffold_specs["W"]["rho"] == 0.9


def test_reservoir_recurrent_weight_has_spectral_radius_rho():
    m = scaffolded(build("reservoir", **{**TINY["reservoir"], "rho": 0.7}))
    assert math.isclose(spectral_radius(m.W.W_seed.double().numpy()), 0.7, rel_tol=1e-5)
    assert not math.isclose(spectral_radius(m.W_in.W_seed.double().numpy()[:, :2]), 0.7, rel_tol=1e-2)


def test_reservoir_matches_reservoirpy_if_installed():
    """Optional cross-check against reservoirpy's leaky reservoir node (skipped where it is not installed)."""
    pytest.importorskip("reservoirpy")
    from reservoirpy.nodes import Reservoir as RpyReservoir

    torch.manual_seed(0)
    m = scaffolded(build("reservoir", d_in=2, n_out=1, units=10, leak=0.3))
    W_in, b, W = (t.detach().double().numpy() for t in (m.W_in.W_seed, m.W_in.bias, m.W.W_seed))
    node = RpyReservoir(units=10, lr=0.3, W=W, Win=W_in, bias=b, input_dim=2)
    x = np.random.default_rng(0).standard_normal((12, 2))
    np.testing.assert_allclose(m.states(torch.from_numpy(x).float()[None]).detach().numpy()[0], node.run(x),
                               rtol=1e-4, atol=1e-5)
