"""The one-weight layer types (Linear, transformers' Conv1D, Conv1d, Conv2d, Embedding; nn.MultiheadAttention
as the container of two): for every registered type, the invariants of eq. (1), merge, adapter files and
schedules; then what is particular to each type."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reservoir_depth import io
from reservoir_depth.distributions import DistributionSpec
from reservoir_depth.scaffold import (ALL_LINEAR, ScaffoldConfig, ScaffoldConv1d, ScaffoldConv2d, ScaffoldEmbedding,
                                      ScaffoldLayer, ScaffoldMultiheadAttention, ScaffoldRecurrent, Scaffolded, merge, scaffold,
                                      scaffold_layers)
from reservoir_depth.scaffold.layers import conv_padding

from scaffold_cases import (Conv1D, EXAMPLE_PARAMS, Example, Holder, canonical, gen, holder, needs_transformers,
                            perturb, scaffolded)


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

    if isinstance(unit, ScaffoldRecurrent):  # torch's flat tensors: each gate's beta W_seed, stacked
        out = {}
        for wname in unit.flat_names:
            if wname.startswith("weight_"):
                gates = unit._gates(wname)
                out[wname] = torch.cat([g.beta.detach() * g.W_seed for g in gates])
                if gates[0].bias is not None:
                    out["bias_" + wname.removeprefix("weight_")] = torch.cat([g.bias.detach() for g in gates])
        return out
    if isinstance(unit, ScaffoldMultiheadAttention):
        return {**one(unit.in_proj, "", "in_proj_weight", "in_proj_bias"),
                **one(unit.out_proj, "out_proj.", "weight", "bias")}
    return one(unit, "", "weight", "bias")


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
    if ex.type_name in RECURRENT and bias == "trainable" and not holder(ex).layer.bias:
        with pytest.raises(ValueError, match=r"layer 'layer': bias='trainable' would change the bias structure"):
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
    if ex.type_name in RECURRENT:  # one sequence runs through one scaffold
        with pytest.raises(ValueError, match=r"layer 'layer': the 'batch' schedule .* is not supported"):
            scaffolded(ex, schedule="batch", k=2)
        return
    model = scaffolded(ex, schedule="batch", k=2).double()  # float64: the split and the whole batch take
    perturb(model)                                            # different kernels, equal only up to rounding
    x = x_for(ex, model)
    x = x.double() if x.is_floating_point() else x
    y = model.train()(x)
    model.eval()
    parts = []
    for i, part in enumerate(x.tensor_split(2, dim=ex.batch_dim)):
        for _, layer in scaffold_layers(model):
            layer.W_seed = layer._stack[i]
        parts.append(model(part))
    torch.testing.assert_close(y, torch.cat(parts, dim=ex.batch_dim), rtol=1e-10, atol=1e-10)
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
                   "head_dim", "batch_first", "input_size", "hidden_size", "num_layers", "bidirectional")
RECURRENT = ("RNN", "GRU", "LSTM")


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


# ----------------------------------------------------------------------------- nn.Conv1d / nn.Conv2d


@st.composite
def conv_case(draw_):
    cin, cout, k = draw_(st.integers(1, 4)), draw_(st.integers(1, 6)), draw_(st.integers(1, 3))
    stride, padding = draw_(st.integers(1, 2)), draw_(st.integers(0, 1))
    r = draw_(st.integers(0, min(cout, cin * k * k)))
    hw = draw_(st.integers(k, 7))
    return cin, cout, k, stride, padding, r, draw_(st.booleans()), hw


@settings(max_examples=30, deadline=None)
@given(case=conv_case(), beta=st.floats(-3.0, 3.0))
def test_conv_at_init_is_the_reservoir(case, beta):
    cin, cout, k, stride, padding, r, rslora, hw = case
    config = ScaffoldConfig(r=r, rslora=rslora, root_seed=3)
    layer = ScaffoldConv2d(nn.Conv2d(cin, cout, k, stride, padding), "conv", config.settings_for("conv"))
    assert layer.W_seed.shape == (cout, cin, k, k)
    assert torch.equal(layer.W_seed, canonical(config, (cout, cin, k, k), "conv"))

    x = torch.randn(2, cin, hw, hw, generator=gen(hw))
    expected = F.conv2d(x, layer.W_seed, None, stride, padding)
    torch.testing.assert_close(layer(x), expected + layer.bias.view(1, -1, 1, 1))
    with torch.no_grad():
        layer.beta.fill_(beta)
    torch.testing.assert_close(layer(x), beta * expected + layer.bias.view(1, -1, 1, 1))


def test_grouped_conv_rejected():
    with pytest.raises(ValueError, match="group"):
        ScaffoldConv2d(nn.Conv2d(4, 4, 3, groups=2), "conv", ScaffoldConfig(r=2).settings_for("conv"))
    with pytest.raises(ValueError, match="group"):
        scaffold(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4)), ScaffoldConfig(target_modules="0", r=1))


@settings(max_examples=40, deadline=None)
@given(nd=st.sampled_from([1, 2]), kernel=st.integers(1, 4), dilation=st.integers(1, 3),
       padding=st.sampled_from(["same", "valid", 0, 1, 2]))
def test_one_padding_reader_gives_torchs_padding_to_the_fused_path_and_to_the_rows(nd, kernel, dilation, padding):
    """conv_padding is torch's padding as (before, after) per dim ('same': the odd extra one after): x padded
    by it and convolved unpadded is the conv itself; the fused path takes it where it is symmetric."""
    conv = (nn.Conv1d if nd == 1 else nn.Conv2d)(2, 3, kernel, padding=padding, dilation=dilation)
    x = torch.randn(1, 2, *(11,) * nd, generator=gen(0))
    sides = conv_padding(conv.padding, conv.kernel_size, conv.dilation)
    padded = F.pad(x, [p for side in reversed(sides) for p in side])
    conv_op = F.conv1d if nd == 1 else F.conv2d
    torch.testing.assert_close(conv_op(padded, conv.weight, conv.bias, dilation=conv.dilation), conv(x))
    layer = (ScaffoldConv1d if nd == 1 else ScaffoldConv2d)(conv, "conv", ScaffoldConfig(r=1).settings_for("conv"))
    symmetric = all(a == b for a, b in sides)
    assert layer._fused_padding() == (tuple(a for a, _ in sides) if symmetric else None)


# ----------------------------------------------------------------------------- Conv1D (transformers)


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
    scaffold(model, ScaffoldConfig(target_modules=ALL_LINEAR, r=2, trainable="4"))
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
