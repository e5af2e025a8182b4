"""Every registered layer type keeps the Linear layer's invariants (eq. (1): y = beta W_seed x + s B A x + b).

The invariant tests iterate EXAMPLES, and ``test_every_registered_type_has_an_example`` fails when a type is
registered without one, so a new entry in LAYER_TYPES is covered as soon as it is added.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reservoir_depth import io
from reservoir_depth.distributions import DistributionSpec, draw
from reservoir_depth.scaffold import (ALL_LINEAR, LAYER_TYPES, LayerType, ScaffoldConfig, ScaffoldEmbedding,
                                      ScaffoldLayer, ScaffoldLinear, ScaffoldMultiheadAttention, Scaffolded,
                                      effective_weights, layer_type, merge, register_layer_type, scaffold,
                                      scaffold_layers)
from reservoir_depth.spectra import ActivationSpectra, WeightSpectra

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # transformers is a test extra
    Conv1D = None


def _mha_call(m, x):
    return m(x, x, x, need_weights=False)[0]


@dataclass(frozen=True)
class Example:
    """A small instance of a registered type: make(d) builds it with widths about d, inputs(module, n)
    a batch, call(module, x) its output tensor, fan_in(module) the fan-in its W_seed draws must use
    (one per scaffold layer, in module order)."""

    type_name: str
    make: Callable[[int], nn.Module]
    inputs: Callable[[nn.Module, torch.Generator], torch.Tensor]
    fan_in: Callable[[nn.Module], list[int]]
    call: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda m, x: m(x)
    id: str = ""
    batch_dim: int = 0


def _randn(shape):
    return lambda m, g: torch.randn(*shape(m), generator=g)


EXAMPLES = [
    Example("Linear", lambda d: nn.Linear(d, 2 * d), _randn(lambda m: (3, 4, m.in_features)),
            lambda m: [m.in_features]),
    Example("Linear", lambda d: nn.Linear(d, d - 1, bias=False), _randn(lambda m: (5, m.in_features)),
            lambda m: [m.in_features], id="Linear-nobias"),
    Example("Conv1D", lambda d: Conv1D(2 * d, d), _randn(lambda m: (3, 4, m.nx)), lambda m: [m.nx]),
    Example("Conv1d", lambda d: nn.Conv1d(d, d + 2, 3, stride=2, padding=1), _randn(lambda m: (2, m.in_channels, 9)),
            lambda m: [m.in_channels * 3]),
    Example("Conv2d", lambda d: nn.Conv2d(d, d + 2, 3, padding=1), _randn(lambda m: (2, m.in_channels, 5, 5)),
            lambda m: [m.in_channels * 9]),
    Example("Embedding", lambda d: nn.Embedding(2 * d + 1, d),
            lambda m, g: torch.randint(0, m.num_embeddings, (3, 4), generator=g), lambda m: [m.embedding_dim]),
    Example("MultiheadAttention", lambda d: nn.MultiheadAttention(2 * d, 2, batch_first=True),
            _randn(lambda m: (3, 4, m.embed_dim)), lambda m: [m.embed_dim, m.embed_dim], call=_mha_call),
    Example("MultiheadAttention", lambda d: nn.MultiheadAttention(2 * d, 4, bias=False),
            _randn(lambda m: (4, 3, m.embed_dim)), lambda m: [m.embed_dim, m.embed_dim], call=_mha_call,
            id="MultiheadAttention-seq-first-nobias", batch_dim=1),
]


def _param(ex: Example):
    marks = [pytest.mark.skipif(Conv1D is None, reason="transformers is not installed")] if ex.type_name == "Conv1D" else []
    return pytest.param(ex, id=ex.id or ex.type_name, marks=marks)


EXAMPLE_PARAMS = [_param(ex) for ex in EXAMPLES]


class Holder(nn.Module):
    """A model whose only module is the layer under test, named ``layer``."""

    def __init__(self, layer: nn.Module, call) -> None:
        super().__init__()
        self.layer, self._call = layer, call

    def forward(self, x):
        return self._call(self.layer, x)


def holder(ex: Example, d: int = 6, seed: int = 0) -> Holder:
    torch.manual_seed(seed)
    return Holder(ex.make(d), ex.call)


def scaffolded(ex: Example, r: int = 2, seed: int = 0, **config) -> Holder:
    return scaffold(holder(ex, seed=seed), ScaffoldConfig(target_modules="layer", r=r, **config))


def perturb(model: nn.Module, seed: int = 1) -> None:
    """Move every trained tensor away from init (beta != 1, B != 0), as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in scaffold_layers(model):
            layer.beta.fill_(0.7)
            layer.lora_A.add_(0.3 * torch.randn(layer.lora_A.shape, generator=g))
            layer.lora_B.copy_(0.3 * torch.randn(layer.lora_B.shape, generator=g))
            if getattr(layer, "padding_idx", None) is not None:
                layer.lora_A[:, layer.padding_idx] = 0
            if layer.bias is not None and layer.bias.requires_grad:
                layer.bias.add_(0.1)


def x_for(ex: Example, model: Holder, seed: int = 2) -> torch.Tensor:
    plain = model.layer._template if isinstance(model.layer, Scaffolded) else model.layer
    return ex.inputs(plain, torch.Generator().manual_seed(seed))


def seed_state(unit: Scaffolded) -> dict[str, torch.Tensor]:
    """The replaced class's state holding beta W_seed and the scaffold's bias, built from the
    scaffold layers' own tensors (not from merge)."""
    def one(layer: ScaffoldLayer, prefix: str, weight: str, bias: str) -> dict[str, torch.Tensor]:
        out = {prefix + weight: layer.beta.detach() * layer.W_seed}
        if layer.bias is not None:
            out[prefix + bias] = layer.bias.detach()
        return out

    if isinstance(unit, ScaffoldMultiheadAttention):
        return {**one(unit.in_proj, "", "in_proj_weight", "in_proj_bias"),
                **one(unit.out_proj, "out_proj.", "weight", "bias")}
    return one(unit, "", "weight", "bias")


# ----------------------------------------------------------------------------- coverage of the registry


def test_every_registered_type_has_an_example():
    assert {entry.name for entry in LAYER_TYPES.values()} <= {ex.type_name for ex in EXAMPLES}


def test_importing_the_package_does_not_import_transformers():
    code = "import sys, reservoir_depth, reservoir_depth.spectra; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_every_example_is_its_registered_type(ex):
    entry = layer_type(ex.make(4))
    assert entry is not None and entry.name == ex.type_name


# ----------------------------------------------------------------------------- the invariants, per type


@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_output_at_init_is_beta_w_seed_x_plus_b(ex):
    """At init (B = 0) the layer is the replaced class holding beta W_seed and the seeded bias."""
    model = scaffolded(ex)
    with torch.no_grad():
        for _, layer in scaffold_layers(model):
            layer.beta.fill_(0.7)
    reference = copy.deepcopy(holder(ex).layer)
    missing, unexpected = reference.load_state_dict(seed_state(model.layer), strict=False)
    assert not unexpected and all(k.endswith("bias") for k in missing)  # only biases the scaffold dropped
    for k in missing:
        setattr(reference.get_submodule(k.rpartition(".")[0]) if "." in k else reference, k.rpartition(".")[2], None)
    x = x_for(ex, model)
    torch.testing.assert_close(model(x), ex.call(reference, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias", ["keep", "trainable"])
@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_only_a_b_beta_and_declared_extras_get_gradients(ex, bias):
    if ex.type_name == "Embedding" and bias == "trainable":
        with pytest.raises(ValueError, match=r"layer 'layer': an nn.Embedding has no bias"):
            scaffolded(ex, bias=bias)
        return
    model = scaffolded(ex, bias=bias)
    perturb(model)
    model(x_for(ex, model)).square().sum().backward()
    expected = {f"{n}.{t}" for n, layer in scaffold_layers(model) for t in layer.trained}
    assert {n for n, p in model.named_parameters() if p.grad is not None} == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert all(layer.W_seed.grad is None and not layer.W_seed.requires_grad for _, layer in scaffold_layers(model))
    assert all(float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters() if p.grad is not None)


@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_merge_matches_and_loads_strictly_into_the_original_class(ex):
    model = scaffolded(ex)
    perturb(model)
    x = x_for(ex, model)
    merged = merge(model)
    assert type(merged.layer) is type(holder(ex).layer)
    torch.testing.assert_close(merged(x), model(x), rtol=1e-4, atol=1e-4)
    original = holder(ex, seed=5).layer
    original.load_state_dict(merged.layer.state_dict(), strict=True)
    torch.testing.assert_close(ex.call(original, x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_save_load_round_trip_restores_outputs_exactly(ex, tmp_path):
    model = scaffolded(ex, root_seed=3)
    perturb(model)
    io.save(model, tmp_path)
    loaded = io.load(tmp_path, model=holder(ex, seed=9))
    x = x_for(ex, model)
    assert torch.equal(loaded(x), model(x))
    assert [n for n, _ in scaffold_layers(loaded)] == [n for n, _ in scaffold_layers(model)]


@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_a_destabilised_scaffold_round_trips_at_its_draw(ex, tmp_path):
    """schedule='step': W_seed cycles over k draws; the file records the draw in use and load regenerates it."""
    model = scaffolded(ex, schedule="step", k=3)
    perturb(model)
    x = x_for(ex, model)
    at_zero = model(x)
    for _, layer in scaffold_layers(model):
        layer.advance(step=4)  # draw 4 % 3 = 1
    assert not torch.equal(model(x), at_zero)
    io.save(model, tmp_path)
    assert torch.equal(io.load(tmp_path, model=holder(ex, seed=9))(x), model(x))


@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_the_batch_schedule_sends_each_part_of_the_batch_through_its_own_scaffold(ex):
    model = scaffolded(ex, schedule="batch", k=2)
    perturb(model)
    x = x_for(ex, model)
    y = model.train()(x)
    model.eval()
    parts = []
    for i, part in enumerate(x.tensor_split(2, dim=ex.batch_dim)):
        for _, layer in scaffold_layers(model):
            layer.W_seed = layer._stack[i]
        parts.append(model(part))
    torch.testing.assert_close(y, torch.cat(parts, dim=ex.batch_dim), rtol=1e-5, atol=1e-5)
    for _, layer in scaffold_layers(model):
        layer.W_seed = layer._stack[0]
    assert not torch.allclose(y, model(x))  # the second part went through another scaffold


@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_float64_layers_scaffold_compute_and_merge_in_float64(ex):
    model = scaffold(holder(ex).double(), ScaffoldConfig(target_modules="layer", r=2))
    perturb(model)
    x = x_for(ex, model)
    x = x.double() if x.is_floating_point() else x
    y = model(x)
    assert y.dtype == torch.float64 and all(layer.W_seed.dtype == torch.float64 for _, layer in scaffold_layers(model))
    merged = merge(model)
    assert all(p.dtype == torch.float64 for p in merged.parameters())
    torch.testing.assert_close(merged(x), y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_a_changed_seed_is_refused_on_load_by_fingerprint(ex, tmp_path):
    io.save(scaffolded(ex, root_seed=3), tmp_path)
    meta = json.loads((tmp_path / io.CONFIG).read_text())
    meta["scaffold"]["root_seed"] = 4
    meta["config_sha256"] = io.config_hashes({k: v for k, v in meta.items() if k != "config_sha256"})
    (tmp_path / io.CONFIG).write_text(json.dumps(meta, sort_keys=True, indent=1))
    first = next(n for n, _ in scaffold_layers(scaffolded(ex)))
    with pytest.raises(ValueError, match=rf"key 'fingerprints/{first}\.W_seed': the regenerated tensor does not match"):
        io.load(tmp_path, model=holder(ex))


@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_rank_above_min_d_in_d_out_is_refused_naming_the_layer(ex):
    layers = dict(scaffold_layers(scaffolded(ex, r=1)))
    bound = min(min(layer.map_shape) for layer in layers.values())
    scaffolded(ex, r=bound)  # the bound itself is allowed
    with pytest.raises(ValueError, match=rf"rank r={bound + 1} for layer 'layer[.\w]*' must lie in \[0, "):
        scaffolded(ex, r=bound + 1)


SIZE_ATTRIBUTES = ("in_features", "out_features", "nf", "nx", "in_channels", "out_channels", "kernel_size", "stride",
                   "padding", "dilation", "num_embeddings", "embedding_dim", "padding_idx", "embed_dim", "num_heads",
                   "head_dim", "batch_first")


@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_the_scaffold_keeps_the_replaced_layers_size_attributes_and_weight_dtype(ex):
    """Code that reads a layer's geometry (transformers reads .weight.dtype, .nf, .num_embeddings) keeps working."""
    plain, unit = holder(ex).layer, scaffolded(ex).layer
    for attr in SIZE_ATTRIBUTES:
        if hasattr(plain, attr):
            assert getattr(unit, attr) == getattr(plain, attr), attr
    for local, w in [(n, w) for n, w in plain.named_parameters() if n.endswith("weight")]:
        owner = unit.get_submodule(local.rpartition(".")[0]) if "." in local else unit
        read = getattr(owner, local.rpartition(".")[2])
        assert read.shape == w.shape and read.dtype == w.dtype and not isinstance(read, nn.Parameter)


@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_at_init_b_is_zero_and_a_is_uniform_in_its_bound(ex):
    """A ~ U(-a, a): a = 1 / sqrt(d_in) (kaiming-uniform), a = 1 for an Embedding's lookup (one-hot input)."""
    model = scaffold(holder(ex, d=24), ScaffoldConfig(target_modules="layer", r=8))
    for _, layer in scaffold_layers(model):
        a = 1.0 if isinstance(layer, ScaffoldEmbedding) else 1 / math.sqrt(layer.map_shape[1])
        A = layer.lora_A.detach().double()
        assert A.shape == (8, layer.map_shape[1]) and layer.lora_B.shape == (layer.map_shape[0], 8)
        assert float(A.abs().max()) <= a and float(A.abs().max()) > 0.9 * a
        assert abs(float(A.var()) / (a * a / 3) - 1) < 0.25
        assert not layer.lora_B.any() and float(layer.beta.detach()) == 1.0


@pytest.mark.parametrize("gain", [1.0, 2.5])
@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_w_seed_std_is_gain_over_sqrt_fan_in(ex, gain):
    """The fan-in rule uses the declared fan-in axis: std(W_seed) = gain / sqrt(fan_in)."""
    model = scaffold(holder(ex, d=48), ScaffoldConfig(target_modules="layer", r=1,
                                                     spec=DistributionSpec("normal", gain=gain)))
    layers = [layer for _, layer in scaffold_layers(model)]
    fan_ins = ex.fan_in(holder(ex, d=48).layer)
    assert len(layers) == len(fan_ins)
    for layer, fan_in in zip(layers, fan_ins):
        w = layer.W_seed.double()
        assert w.numel() >= 2000
        expected = gain / math.sqrt(fan_in)
        assert abs(float(w.std()) / expected - 1) < 0.06, (layer.name, float(w.std()), expected)
        assert abs(float(w.mean())) < 4 * expected / math.sqrt(w.numel())


# ----------------------------------------------------------------------------- Conv1D (transformers)


needs_transformers = pytest.mark.skipif(Conv1D is None, reason="transformers is not installed")


@needs_transformers
def test_conv1d_w_seed_is_the_transpose_of_a_linear_of_the_same_name():
    config = ScaffoldConfig(target_modules="layer", r=2, root_seed=7)
    conv = scaffold(Holder(Conv1D(5, 3), lambda m, x: m(x)), config).layer
    lin = scaffold(Holder(nn.Linear(3, 5), lambda m, x: m(x)), config).layer
    assert conv.W_seed.shape == (3, 5) and torch.equal(conv.W_seed, lin.W_seed.T)
    x = torch.randn(4, 3)
    torch.testing.assert_close(conv(x), lin(x))  # the same seeded function


@needs_transformers
def test_all_linear_picks_conv1d_layers_but_not_the_output_layer():
    model = nn.Sequential(Conv1D(8, 4), nn.ReLU(), Conv1D(8, 8), nn.ReLU(), nn.Linear(8, 3))
    scaffold(model, ScaffoldConfig(target_modules=ALL_LINEAR, r=2))
    assert [n for n, _ in scaffold_layers(model)] == ["0", "2"]
    assert type(model[4]) is nn.Linear


# ----------------------------------------------------------------------------- nn.Embedding


def test_embedding_padding_row_stays_zero_through_training_and_merge():
    model = Holder(nn.Embedding(9, 4, padding_idx=2), lambda m, x: m(x))
    scaffold(model, ScaffoldConfig(target_modules="layer", r=3))
    layer = model.layer
    assert torch.equal(layer.W_seed[2], torch.zeros(4)) and torch.equal(layer.lora_A[:, 2], torch.zeros(3))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    ids = torch.tensor([[0, 2, 5, 2], [8, 1, 2, 3]])
    for _ in range(3):
        opt.zero_grad()
        model(ids).sum().backward()  # linear: the gradient at padding positions is not zero
        opt.step()
    assert float(layer.lora_B.detach().abs().sum()) > 0
    assert torch.equal(model(ids)[ids == 2], torch.zeros(3, 4))
    merged = merge(model)
    assert merged.layer.padding_idx == 2 and torch.equal(merged.layer.weight[2], torch.zeros(4))
    torch.testing.assert_close(merged(ids), model(ids))


@pytest.mark.parametrize("kw", [{"max_norm": 1.0}, {"scale_grad_by_freq": True}, {"sparse": True}])
def test_embedding_options_it_cannot_honour_are_refused(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=rf"layer 'layer': nn.Embedding with {name}=.* cannot be scaffolded"):
        scaffold(Holder(nn.Embedding(9, 4, **kw), lambda m, x: m(x)), ScaffoldConfig(target_modules="layer", r=2))


def test_embedding_adapter_is_a_lookup_of_a():
    layer = scaffold(Holder(nn.Embedding(7, 5), lambda m, x: m(x)), ScaffoldConfig(target_modules="layer", r=2)).layer
    assert layer.lora_A.shape == (2, 7) and layer.lora_B.shape == (5, 2)
    perturb(layer)
    ids = torch.tensor([3, 0, 6])
    expected = layer.beta * layer.W_seed[ids] + layer.s * (layer.lora_B @ layer.lora_A[:, ids]).T
    torch.testing.assert_close(layer(ids), expected)
    assert isinstance(layer, ScaffoldEmbedding)


# ----------------------------------------------------------------------------- nn.MultiheadAttention


def _mha_pair(batch_first: bool, bias: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    model = Holder(nn.MultiheadAttention(8, 2, bias=bias, batch_first=batch_first), None)
    scaffold(model, ScaffoldConfig(target_modules="layer", r=2))
    perturb(model)
    return model.layer, merge(model).layer


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask is deprecated")
@settings(max_examples=25, deadline=None)
@given(batch_first=st.booleans(), batched=st.booleans(), kind=st.sampled_from(["self", "kv", "cross"]),
       need_weights=st.booleans(), average=st.booleans(), padding=st.booleans(),
       mask=st.sampled_from([None, "bool2", "float2", "bool3", "causal"]))
def test_mha_matches_torch_with_the_merged_weights(batch_first, batched, kind, need_weights, average, padding, mask):
    scaffolded_mha, torch_mha = _mha_pair(batch_first)
    g = torch.Generator().manual_seed(0)
    N, L, S, E, H = 2, 3, 4 if kind != "self" else 3, 8, 2
    shape = lambda n: ((N, n, E) if batch_first else (n, N, E)) if batched else (n, E)  # noqa: E731
    q = torch.randn(*shape(L), generator=g)
    k = q if kind == "self" else torch.randn(*shape(S), generator=g)
    v = k if kind in ("self", "kv") else torch.randn(*shape(S), generator=g)
    kw = {"need_weights": need_weights, "average_attn_weights": average}
    if padding:
        kpm = torch.zeros(N, S, dtype=torch.bool)
        kpm[0, -1] = True
        kw["key_padding_mask"] = kpm if batched else kpm[0]
    if mask in ("bool2", "causal"):
        kw["attn_mask"] = torch.ones(L, S, dtype=torch.bool).triu(1)
        kw["is_causal"] = mask == "causal" and L == S
    elif mask == "float2":
        kw["attn_mask"] = torch.randn(L, S, generator=g)
    elif mask == "bool3":
        m = torch.rand((N if batched else 1) * H, L, S, generator=g) < 0.3
        m[..., 0] = False  # no fully masked row
        kw["attn_mask"] = m
    out, weights = scaffolded_mha(q, k, v, **kw)
    ref_out, ref_weights = torch_mha(q, k, v, **kw)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    if need_weights:
        torch.testing.assert_close(weights, ref_weights, rtol=1e-4, atol=1e-5)
    else:
        assert weights is None and ref_weights is None


@pytest.mark.parametrize("kw,named", [({"kdim": 4}, "kdim=4"), ({"vdim": 4}, "vdim=4"),
                                      ({"add_bias_kv": True}, "add_bias_kv=True"),
                                      ({"add_zero_attn": True}, "add_zero_attn=True")])
def test_mha_options_it_cannot_honour_are_refused(kw, named):
    with pytest.raises(ValueError, match=rf"layer 'layer': nn.MultiheadAttention with {named} cannot be scaffolded"):
        scaffold(Holder(nn.MultiheadAttention(8, 2, **kw), None), ScaffoldConfig(target_modules="layer", r=2))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def test_mha_out_proj_alone_is_refused_but_the_mha_and_all_patterns_take_it_whole():
    with pytest.raises(ValueError, match=r"'attn.out_proj' belongs to a MultiheadAttention"):
        scaffold(Block(), ScaffoldConfig(target_modules="out_proj"))
    for targets in (["attn"], [".*"], [r"attn.*"], ALL_LINEAR):
        model = scaffold(Block(), ScaffoldConfig(target_modules=targets, r=2))
        assert isinstance(model.attn, ScaffoldMultiheadAttention)
        assert [n for n, _ in scaffold_layers(model)][:2] == ["attn.in_proj", "attn.out_proj"]


def test_scaffolded_transformer_encoder_layer_matches_its_merge_in_train_and_eval():
    """torch's fused inference path reads in_proj_weight / linear1.weight directly: it gets the merged weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), nn.Linear(8, 3))
    scaffold(model, ScaffoldConfig(r=2))
    perturb(model)
    x = torch.randn(2, 5, 8)
    y = model(x)
    merged = merge(model).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), y, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged(x), y, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- spectra read the registry


def test_activation_spectra_rows_are_token_positions_patches_and_one_hot_ids():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(11, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.conv = nn.Conv1d(8, 6, 3, stride=2)
            self.fc = nn.Linear(6, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, ids):
            h = self.emb(ids)
            h = self.attn(h, h, h, need_weights=False)[0]
            h = self.conv(h.transpose(1, 2)).transpose(1, 2)  # (B, T', 6)
            return self.head(self.fc(h))

    ids = torch.randint(0, 11, (4, 9), generator=torch.Generator().manual_seed(0))
    B, T, T_conv = 4, 9, 4  # (9 - 3) // 2 + 1
    expected = {"emb": (B * T, 11), "attn": (B * T, 8), "conv": (B * T_conv, 8 * 3), "fc": (B * T_conv, 6),
                "head": (B * T_conv, 6)}
    torch.manual_seed(0)
    plain = ActivationSpectra().fit(Net(), ids)  # plain model: registered types, not MHA's out_proj
    assert {n: (c.n_, c.mean_.size) for n, c in plain.covariances_.items()} == expected
    torch.manual_seed(0)
    model = scaffold(Net(), ScaffoldConfig(target_modules=["emb", "attn", "conv", "fc"], trainable="head", r=2))
    fitted = ActivationSpectra().fit(model, ids)
    seen = {n: (c.n_, c.mean_.size) for n, c in fitted.covariances_.items()}
    assert seen == {**{k: v for k, v in expected.items() if k not in ("attn", "head")},
                    "attn.in_proj": (B * T, 8), "attn.out_proj": (B * T, 8)}
    onehot = fitted.covariances_["emb"].mean_
    counts = torch.bincount(ids.reshape(-1), minlength=11).double() / ids.numel()
    torch.testing.assert_close(torch.as_tensor(onehot, dtype=torch.float64), counts)  # one-hot rows: the mean is the token frequency
    out = ActivationSpectra(layers=["conv"], side="output").fit(model, ids)
    assert (out.covariances_["conv"].n_, out.covariances_["conv"].mean_.size) == (B * T_conv, 6)


@pytest.mark.parametrize("scaffolded", [False, True])
def test_activation_spectra_read_an_attention_whole_on_both_sides(scaffolded):
    """The attention's input is its query rows, its output the rows of attn_output (not the tuple)."""
    model = scaffold(Block(), ScaffoldConfig(target_modules="attn", trainable="head", r=2)) if scaffolded else Block()
    x = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(0))
    for side in ("input", "output"):
        cov = ActivationSpectra(side=side, layers=["attn"]).fit(model, x).covariances_["attn"]
        assert (cov.n_, cov.mean_.size) == (20, 8)
    with torch.no_grad():
        out = model.attn(x, x, x)[0].reshape(-1, 8).double()
    torch.testing.assert_close(torch.as_tensor(cov.mean_, dtype=torch.float64), out.mean(0))


def test_activation_spectra_refuses_one_hot_rows_over_a_large_vocabulary():
    model = nn.Sequential(nn.Embedding(5000, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"layer '0': an Embedding's input rows are one-hot over V = 5000"):
        ActivationSpectra(layers=["0"]).fit(model, torch.zeros(2, 3, dtype=torch.long))


@needs_transformers
def test_weight_spectra_read_conv1d_as_its_d_out_by_d_in_map():
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(6, 4), nn.Linear(6, 2))
    weights = dict(effective_weights(model))
    assert weights["0"].shape == (6, 4) and torch.equal(weights["0"], model[0].weight.T)
    init = copy.deepcopy(model)
    with torch.no_grad():
        model[0].weight.add_(torch.outer(torch.ones(4), torch.arange(6.0)))  # rank-one update
    spectra = WeightSpectra(kind="delta").fit(init, model).spectra_
    assert spectra["0"].eigenvalues.shape == (4,) and float(spectra["0"].eigenvalues[1]) < 1e-9


def test_plain_mha_weights_come_under_the_scaffold_layers_names():
    torch.manual_seed(0)
    names = [n for n, _ in effective_weights(Block())]
    scaffolded_names = [n for n, _ in effective_weights(scaffold(Block(), ScaffoldConfig(target_modules="attn", r=2)))]
    assert names == ["attn.in_proj", "attn.out_proj", "head"] and scaffolded_names == names


# ----------------------------------------------------------------------------- a user's own layer type


class Affine(nn.Module):
    """A linear-like layer that is not an nn.Linear: y = x M^T + c."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x):
        return x @ self.weight.T + self.bias


class ScaffoldAffine(ScaffoldLinear):
    @classmethod
    def from_module(cls, module, name, config):
        return cls(module.weight.shape[1], module.weight.shape[0], name, config, template=module)


def test_a_user_registered_type_scaffolds_merges_and_round_trips(tmp_path):
    entry = register_layer_type(LayerType(Affine, ScaffoldAffine, linear=True))
    try:
        assert LAYER_TYPES[Affine] is entry and layer_type(Affine(3, 2)) is entry
        torch.manual_seed(0)
        model = scaffold(nn.Sequential(Affine(5, 4), nn.Tanh(), nn.Linear(4, 2)), ScaffoldConfig(r=2))
        assert [n for n, _ in scaffold_layers(model)] == ["0"]  # all-linear took it, left the output out
        perturb(model)
        x = torch.randn(3, 5)
        merged = merge(model)
        assert type(merged[0]) is Affine
        torch.testing.assert_close(merged(x), model(x))
        io.save(model, tmp_path)
        assert torch.equal(io.load(tmp_path, model=nn.Sequential(Affine(5, 4), nn.Tanh(), nn.Linear(4, 2)))(x), model(x))
        with pytest.raises(ValueError, match="Affine is already registered"):
            register_layer_type(LayerType(Affine, ScaffoldAffine))
    finally:
        del LAYER_TYPES[Affine]


@pytest.mark.parametrize("module", [nn.Linear, "torch.nn.modules.linear.Linear", "transformers.pytorch_utils.Conv1D"])
def test_re_registering_a_type_is_refused(module):
    with pytest.raises(ValueError, match="is already registered"):
        register_layer_type(LayerType(module, ScaffoldLinear))


def test_a_layer_class_that_is_not_scaffolded_is_refused():
    with pytest.raises(ValueError, match="must be a Scaffolded subclass"):
        register_layer_type(LayerType(Affine, nn.Linear))
    assert Affine not in LAYER_TYPES


# ----------------------------------------------------------------------------- per-layer specs


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))


def test_default_config_to_dict_is_unchanged():
    """Stored configs and run ids depend on these exact keys: specs is left out when empty."""
    d = ScaffoldConfig().to_dict()
    assert d == {"target_modules": ["all-linear"], "r": 8, "alpha": 16.0, "rslora": False,
                 "spec": DistributionSpec().to_dict(), "root_seed": 0, "bias": "keep", "trainable": [],
                 "schedule": "static", "k": 1}
    assert ScaffoldConfig.from_dict(d) == ScaffoldConfig()


def test_specs_override_the_matching_layer_only():
    rule = DistributionSpec("normal", scaling="spectral_radius", rho=0.9)
    config = ScaffoldConfig(target_modules=[r"\d"], r=2, root_seed=4, specs={"2": rule})
    model = scaffold(mlp(), config)
    layers = dict(scaffold_layers(model))
    assert layers["2"].spec == rule and layers["0"].spec == config.spec
    assert torch.equal(layers["2"].W_seed, draw(rule, (6, 6), layers["2"].seed("W_seed")))
    assert torch.equal(layers["0"].W_seed, draw(config.spec, (6, 6), layers["0"].seed("W_seed")))
    radius = float(torch.linalg.eigvals(layers["2"].W_seed.double()).abs().max())
    assert abs(radius - 0.9) < 1e-5
    assert ScaffoldConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["specs"] == {"2": rule.to_dict()}


def test_specs_round_trip_through_an_adapter_file(tmp_path):
    rule = DistributionSpec("uniform", scaling="spectral_radius", rho=0.8)
    model = scaffold(mlp(), ScaffoldConfig(target_modules=[r"\d"], r=2, specs={"0": rule}))
    perturb(model)
    io.save(model, tmp_path)
    x = torch.randn(3, 6)
    assert torch.equal(io.load(tmp_path, model=mlp())(x), model(x))


def test_specs_match_a_container_or_its_layers():
    rule = DistributionSpec("uniform")
    both = dict(scaffold_layers(scaffold(Block(), ScaffoldConfig(target_modules="attn", r=2, specs={"attn": rule}))))
    assert both["attn.in_proj"].spec == rule and both["attn.out_proj"].spec == rule
    one = dict(scaffold_layers(scaffold(Block(), ScaffoldConfig(target_modules="attn", r=2,
                                                                specs={"attn.in_proj": rule}))))
    assert one["attn.in_proj"].spec == rule and one["attn.out_proj"].spec != rule


def test_a_specs_pattern_matching_no_layer_is_an_error_and_changes_nothing():
    model = mlp()
    with pytest.raises(ValueError, match=r"specs patterns \['7'\] match no scaffold layer"):
        scaffold(model, ScaffoldConfig(target_modules=[r"\d"], r=2, specs={"7": "uniform"}))
    assert type(model[0]) is nn.Linear


def test_overlapping_specs_patterns_are_an_error_naming_both():
    with pytest.raises(ValueError, match=r"layer '2' is matched by several specs patterns \['2', '\[02\]'\]"):
        scaffold(mlp(), ScaffoldConfig(target_modules=[r"\d"], r=2, specs={"[02]": "uniform", "2": "laplace"}))


@pytest.mark.parametrize("bad", [["0"], "0", {"(": "uniform"}, {"0": "no-such-family"}])
def test_bad_specs_are_refused(bad):
    with pytest.raises(ValueError):
        ScaffoldConfig(specs=bad)


# ----------------------------------------------------------------------------- per-layer rank caps (max_rank)


@settings(max_examples=30, deadline=None)
@given(r=st.integers(0, 6), cap=st.integers(0, 8), rslora=st.booleans())
def test_max_rank_gives_the_matching_layer_rank_min_r_r_max_and_its_own_scale(r, cap, rslora):
    """s = alpha / r_layer (rsLoRA: alpha / sqrt(r_layer)) with the layer's own rank; other layers keep r."""
    config = ScaffoldConfig(target_modules=["0", "2"], r=r, alpha=3.0, rslora=rslora, max_rank={"2": cap})
    layers = dict(scaffold_layers(scaffold(mlp(), config)))
    r2 = min(r, cap)
    assert (layers["2"].r, layers["0"].r) == (r2, r)
    assert tuple(layers["2"].lora_A.shape) == (r2, 6) and tuple(layers["2"].lora_B.shape) == (6, r2)
    assert tuple(layers["0"].lora_A.shape) == (r, 6)
    scale = 0.0 if r2 == 0 else 3.0 / (math.sqrt(r2) if rslora else r2)
    assert layers["2"].s == scale and layers["0"].s == config.s
    assert layers["2"].rank_pattern == "2" and layers["0"].rank_pattern is None


def _merged_reference(ex: Example, model: Holder) -> nn.Module:
    """The replaced class holding beta W_seed and the scaffold's bias (an r = 0 layer computes exactly that)."""
    reference = copy.deepcopy(holder(ex).layer)
    missing, unexpected = reference.load_state_dict(seed_state(model.layer), strict=False)
    assert not unexpected
    for k in missing:
        setattr(reference.get_submodule(k.rpartition(".")[0]) if "." in k else reference, k.rpartition(".")[2], None)
    return reference


@pytest.mark.parametrize("ex", EXAMPLE_PARAMS)
def test_a_layer_capped_at_rank_0_is_a_frozen_scaffold_with_a_trained_beta(ex, tmp_path):
    """max_rank 0: y = beta W_seed x + b; only beta gets a gradient; merge and the adapter file agree."""
    model = scaffolded(ex, r=2, root_seed=3, max_rank={"layer": 0})
    assert all(layer.r == 0 and layer.lora_A.numel() == layer.lora_B.numel() == 0
               for _, layer in scaffold_layers(model))
    perturb(model)
    x = x_for(ex, model)
    torch.testing.assert_close(model(x), ex.call(_merged_reference(ex, model), x), rtol=1e-5, atol=1e-6)
    model(x).square().sum().backward()
    betas = {f"{n}.beta" for n, _ in scaffold_layers(model)}
    assert {n for n, p in model.named_parameters() if p.grad is not None} == betas
    # the empty A and B do not ask for a gradient (DistributedDataParallel refuses one that never gets it)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == betas
    torch.testing.assert_close(merge(model)(x), model(x), rtol=1e-4, atol=1e-4)
    io.save(model, tmp_path)
    assert torch.equal(io.load(tmp_path, model=holder(ex, seed=9))(x), model(x))


def test_max_rank_matches_a_container_or_its_layers():
    def ranks(max_rank):
        model = scaffold(Block(), ScaffoldConfig(target_modules="attn", r=2, max_rank=max_rank))
        return {n: layer.r for n, layer in scaffold_layers(model)}

    assert ranks({"attn": 1}) == {"attn.in_proj": 1, "attn.out_proj": 1}
    assert ranks({"attn.in_proj": 0}) == {"attn.in_proj": 0, "attn.out_proj": 2}


def test_max_rank_is_left_out_of_to_dict_when_empty_and_round_trips():
    """Stored configs, run ids and adapter files without caps keep their form."""
    assert ScaffoldConfig(max_rank={}).to_dict() == ScaffoldConfig().to_dict()
    assert "max_rank" not in ScaffoldConfig().to_dict()
    config = ScaffoldConfig(r=4, max_rank={"b": 1, "a": 0})
    assert list(config.to_dict()["max_rank"].items()) == [("a", 0), ("b", 1)]  # sorted, as the file stores it
    assert ScaffoldConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_max_rank_round_trips_through_an_adapter_file_and_load_uses_the_layers_rank(tmp_path):
    model = scaffold(mlp(), ScaffoldConfig(target_modules=[r"\d"], r=2, max_rank={"0": 0, "2": 1}))
    perturb(model)
    report = io.save(model, tmp_path)
    meta = json.loads((tmp_path / io.CONFIG).read_text())
    assert meta["scaffold"]["max_rank"] == {"0": 0, "2": 1}
    assert meta["tensors"]["2.lora_A"]["shape"] == [1, 6] and meta["tensors"]["0.lora_B"]["shape"] == [6, 0]
    x = torch.randn(3, 6)
    assert torch.equal(io.load(tmp_path, model=mlp())(x), model(x))
    assert report.bytes > 0
    meta["scaffold"]["max_rank"]["2"] = 2  # a file edited to another cap no longer fits its tensors
    meta["config_sha256"] = io.config_hashes({k: v for k, v in meta.items() if k != "config_sha256"})
    (tmp_path / io.CONFIG).write_text(json.dumps(meta, sort_keys=True, indent=1))
    with pytest.raises(ValueError, match=r"2\.lora_A'?: shape mismatch: file \(1, 6\) vs model \(2, 6\)"):
        io.load(tmp_path, model=mlp())


def test_an_adapter_file_without_caps_records_no_max_rank(tmp_path):
    io.save(scaffold(mlp(), ScaffoldConfig(target_modules=[r"\d"], r=2)), tmp_path)
    assert "max_rank" not in json.loads((tmp_path / io.CONFIG).read_text())["scaffold"]


def test_a_capped_rank_above_min_d_in_d_out_is_still_refused_naming_the_layer():
    with pytest.raises(ValueError, match=r"rank r=3 for layer '4' must lie in \[0, min\(d_in, d_out\)\] = \[0, 2\]"):
        scaffold(mlp(), ScaffoldConfig(target_modules=[r"\d"], r=4, max_rank={"4": 3}))
    layers = dict(scaffold_layers(scaffold(mlp(), ScaffoldConfig(target_modules=[r"\d"], r=4, max_rank={"4": 2}))))
    assert (layers["0"].r, layers["4"].r) == (4, 2)


def test_a_max_rank_pattern_matching_no_layer_is_an_error_and_changes_nothing():
    model = mlp()
    with pytest.raises(ValueError, match=r"max_rank patterns \['7'\] match no scaffold layer"):
        scaffold(model, ScaffoldConfig(target_modules=[r"\d"], r=2, max_rank={"7": 1}))
    assert type(model[0]) is nn.Linear


def test_overlapping_max_rank_patterns_are_an_error_naming_both():
    with pytest.raises(ValueError, match=r"layer '2' is matched by several max_rank patterns \['2', '\[02\]'\]"):
        scaffold(mlp(), ScaffoldConfig(target_modules=[r"\d"], r=2, max_rank={"[02]": 1, "2": 0}))


@pytest.mark.parametrize("bad", [["0"], "0", {"(": 1}, {ALL_LINEAR: 1}, {"0": -1}, {"0": 1.5}, {"0": True},
                                 {"0": "1"}, {"0": None}])
def test_bad_max_rank_is_refused(bad):
    with pytest.raises(ValueError, match="max_rank"):
        ScaffoldConfig(max_rank=bad)
