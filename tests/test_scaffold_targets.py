"""scaffold() never guesses: target patterns, unsupported modules, bias structure, dtype and device,
tied weights, shared modules, already-scaffolded models, and the draw id of destabilised schedules."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reservoir_depth.distributions import layer_seed, rng_for
from reservoir_depth.models import build
from reservoir_depth.scaffold import (ScaffoldConfig, ScaffoldLinear, advance, merge, scaffold, scaffold_layers)


def large_mlp() -> nn.Module:
    return build("mlp", d_in=12, n_out=3, hidden="large")


class Tied(nn.Module):
    """An embedding whose weight is also the output layer's (as GPT-2's lm_head)."""

    def __init__(self, vocab: int = 11, d: int = 6) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.body = nn.Linear(d, d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(torch.relu(self.body(self.emb(ids))))


# ----------------------------------------------------------------------------- 1. a string is one pattern


def test_string_target_is_one_pattern_not_characters():
    with pytest.raises(ValueError, match=r"layers\.10"):  # matches nothing: layers.0 .. layers.4 exist
        scaffold(large_mlp(), ScaffoldConfig(target_modules="layers.10", trainable="head"))
    model = scaffold(large_mlp(), ScaffoldConfig(target_modules=r"layers\.[13]", trainable="head", r=2))
    assert [n for n, _ in scaffold_layers(model)] == ["layers.1", "layers.3"]
    assert ScaffoldConfig(target_modules="x").target_modules == ("x",)


def test_string_trainable_keeps_the_head_trainable():
    model = scaffold(large_mlp(), ScaffoldConfig(target_modules=r"layers\.\d+", trainable="head", r=2))
    assert model.head.weight.requires_grad and model.head.bias.requires_grad
    assert ScaffoldConfig(trainable="head").trainable == ("head",)


@pytest.mark.parametrize("bad", [3, None, ["ok", 4], [b"bytes"]])
def test_patterns_must_be_strings(bad):
    with pytest.raises(ValueError, match="pattern"):
        ScaffoldConfig(target_modules=bad)
    with pytest.raises(ValueError, match="pattern"):
        ScaffoldConfig(trainable=bad)


def test_invalid_regex_is_an_error_naming_it():
    with pytest.raises(ValueError, match=re.escape(r"'layers\.('")):
        ScaffoldConfig(target_modules=[r"layers\.("])


def test_all_linear_is_every_linear_but_the_output_layer():
    model = scaffold(large_mlp(), ScaffoldConfig(target_modules="all-linear", trainable="head", r=2))
    assert [n for n, _ in scaffold_layers(model)] == [f"layers.{i}" for i in range(5)]
    assert type(model.head) is nn.Linear and model.head.weight.requires_grad
    # without a trainable pattern the output layer is still left out, and frozen
    model = scaffold(large_mlp(), ScaffoldConfig(target_modules="all-linear", r=2))
    assert "head" not in dict(scaffold_layers(model)) and not model.head.weight.requires_grad


def test_default_targets_leave_the_output_head_out():
    model = scaffold(build("mlp", d_in=12, n_out=3, hidden="small"), ScaffoldConfig(r=2, trainable="head"))
    assert [n for n, _ in scaffold_layers(model)] == ["layers.0", "layers.1", "layers.2"]


def test_all_linear_cannot_be_mixed_with_patterns():
    with pytest.raises(ValueError, match="all-linear"):
        ScaffoldConfig(target_modules=["all-linear", "head"])


# ----------------------------------------------------------------------------- 2. matched but unsupported


class WithNormAndRecurrence(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.gru = nn.GRU(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.norm(self.fc(x)))


def test_matched_unsupported_modules_are_named_with_their_class():
    model = WithNormAndRecurrence()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        scaffold(model, ScaffoldConfig(target_modules=".*", trainable="head"))
    msg = str(err.value)
    assert "norm (LayerNorm)" in msg and "gru (GRU)" in msg and "Conv1D" in msg  # the registry is listed
    assert type(model.fc) is nn.Linear  # untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_subclass_with_its_own_forward_is_not_treated_as_linear():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(Scaled(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"0 \(Scaled\)"):
        scaffold(model, ScaffoldConfig(target_modules="0"))


def test_gpt2_conv1d_layers_are_scaffolded_and_norms_refused_not_skipped():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=8,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    with pytest.raises(ValueError) as err:
        scaffold(model, ScaffoldConfig(target_modules=".*"))
    msg = str(err.value)
    assert "transformer.h.0.ln_1 (LayerNorm)" in msg and "(Conv1D)" not in msg.split(";")[0]
    scaffolded = scaffold(transformers.GPT2LMHeadModel(config), ScaffoldConfig(r=2))
    assert [n for n, _ in scaffold_layers(scaffolded)][:4] == [
        "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj"]
    # lm_head is an nn.Linear tied to the token embedding: scaffolding it would untie them
    with pytest.raises(ValueError, match=r"lm_head.*transformer\.wte"):
        scaffold(model, ScaffoldConfig(target_modules="lm_head"))
    assert model.lm_head.weight is model.transformer.wte.weight


def test_trainable_pattern_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="heads"):
        scaffold(large_mlp(), ScaffoldConfig(target_modules=r"layers\.\d+", trainable=["heads"]))


def test_module_reachable_under_two_names_is_an_error():
    shared = nn.Linear(4, 4)
    model = nn.Sequential()
    model.add_module("a", shared)
    model.add_module("b", shared)
    with pytest.raises(ValueError, match=r"'a'.*'b'|'b'.*'a'"):
        scaffold(model, ScaffoldConfig(target_modules="b"))


def test_tied_target_weight_is_an_error():
    model = Tied()
    with pytest.raises(ValueError, match=r"out.*emb"):
        scaffold(model, ScaffoldConfig(target_modules="out"))
    model = scaffold(Tied(), ScaffoldConfig(target_modules="body", trainable="emb", r=2))
    assert model.out.weight is model.emb.weight and model.emb.weight.requires_grad


def test_already_scaffolded_model_is_an_error():
    model = scaffold(large_mlp(), ScaffoldConfig(target_modules=r"layers\.\d+", trainable="head", r=2))
    with pytest.raises(ValueError, match="already scaffolded"):
        scaffold(model, ScaffoldConfig(target_modules="head", r=1))


# ----------------------------------------------------------------------------- 3. bias structure


def test_keep_bias_mode_is_the_default_and_keeps_each_layers_structure():
    assert ScaffoldConfig().bias == "keep"
    model = nn.Sequential(nn.Linear(4, 5, bias=False), nn.ReLU(), nn.Linear(5, 3))
    model = scaffold(model, ScaffoldConfig(target_modules=["0", "2"], r=2))
    assert model[0].bias is None
    assert model[2].bias is not None and not model[2].bias.requires_grad
    assert model[0].frozen() == () and model[2].frozen() == ("bias",)


def expected_bias(root_seed, name, d_in, d_out):
    bound = 1.0 / d_in ** 0.5
    return torch.from_numpy(rng_for(layer_seed(root_seed, name, "bias")).uniform(-bound, bound, (d_out,))).float()


@pytest.mark.parametrize("mode", ["keep", "frozen", "trainable"])
def test_bias_is_drawn_from_its_own_stream(mode):
    layer = ScaffoldLinear(6, 4, "enc.fc", ScaffoldConfig(r=2, root_seed=9, bias=mode))
    assert torch.equal(layer.bias.detach(), expected_bias(9, "enc.fc", 6, 4))


def test_conv_net_merge_loads_strictly_into_the_original_class():
    def convs():
        return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.Flatten())

    model = scaffold(convs(), ScaffoldConfig(target_modules=["0", "2"], r=1))
    plain = merge(model)
    fresh = convs()
    fresh.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(fresh(x), model(x))


def test_merge_of_a_linear_subclass_returns_that_class():
    model = nn.Sequential(nn.modules.linear.NonDynamicallyQuantizableLinear(4, 3))
    model = scaffold(model, ScaffoldConfig(target_modules="0", r=1))
    assert type(merge(model)[0]) is nn.modules.linear.NonDynamicallyQuantizableLinear


def test_frozen_mode_adds_a_bias_everywhere_as_documented():
    model = scaffold(nn.Sequential(nn.Linear(4, 5, bias=False)), ScaffoldConfig(target_modules="0", r=2, bias="frozen"))
    assert model[0].bias is not None and not model[0].bias.requires_grad


# ----------------------------------------------------------------------------- 4. dtype and device


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_scaffold_layers_take_the_replaced_layers_dtype(dtype):
    model = build("mlp", d_in=8, n_out=3, hidden="tiny").to(dtype)
    model = scaffold(model, ScaffoldConfig(target_modules=r"layers\.\d+", trainable="head", r=2))
    for _, layer in scaffold_layers(model):
        assert {t.dtype for t in (layer.W_seed, layer.beta, layer.lora_A, layer.lora_B, layer.bias)} == {dtype}
    y = model(torch.randn(5, 8, dtype=dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().sum().backward()


def test_float64_scaffold_holds_the_float64_draw():
    model = scaffold(nn.Sequential(nn.Linear(7, 5).double()), ScaffoldConfig(target_modules="0", r=1, root_seed=3))
    from reservoir_depth.distributions import sample

    expected = torch.from_numpy(sample(model[0].config.spec, (5, 7), layer_seed(3, "0", "W_seed")))
    assert torch.equal(model[0].W_seed, expected)


def test_scaffold_layers_take_the_replaced_layers_device():
    model = nn.Sequential(nn.Linear(4, 3, device="meta"))
    model = scaffold(model, ScaffoldConfig(target_modules="0", r=1))
    assert all(t.device.type == "meta" for t in (model[0].W_seed, model[0].lora_A, model[0].beta))


def test_generic_and_fused_paths_return_the_same_dtype_under_autocast():
    x = torch.randn(4, 6)
    outs = {}
    for r, schedule, k in ((0, "static", 1), (2, "static", 1), (2, "batch", 2)):
        layer = ScaffoldLinear(6, 5, "fc", ScaffoldConfig(r=r, schedule=schedule, k=k)).train()
        with torch.autocast("cpu", torch.bfloat16):
            outs[(r, schedule)] = layer(x).dtype
    assert set(outs.values()) == {torch.bfloat16}, outs


# ----------------------------------------------------------------------------- draw ids of schedules


def test_draw_id_follows_the_schedule_and_set_draw_regenerates_it():
    cfg = ScaffoldConfig(target_modules=r"layers\.\d+", trainable="head", r=2, schedule="epoch")
    model = scaffold(build("mlp", d_in=8, n_out=3, hidden="tiny"), cfg)
    layer = model.layers[0]
    assert layer.draw_id == 0
    advance(model, epoch=3)
    assert layer.draw_id == ["epoch", 3]
    w3 = layer.W_seed.clone()
    other = scaffold(build("mlp", d_in=8, n_out=3, hidden="tiny"), cfg).layers[0]
    other.set_draw(["epoch", 3])
    assert torch.equal(other.W_seed, w3) and other.draw_id == ["epoch", 3]
    advance(model, epoch=0)
    assert layer.draw_id == 0

    step = scaffold(build("mlp", d_in=8, n_out=3, hidden="tiny"),
                    ScaffoldConfig(target_modules=r"layers\.\d+", trainable="head", r=2, schedule="step", k=3))
    advance(step, step=4)
    assert step.layers[0].draw_id == ["cycle", 1]
    w = step.layers[0].W_seed.clone()
    advance(step, step=0)
    step.layers[0].set_draw(["cycle", 1])
    assert torch.equal(step.layers[0].W_seed, w)


@pytest.mark.parametrize("bad", [["epoch", -1], ["cycle", 3], ["moon", 1], "x", 1.5, ["epoch", True]])
def test_set_draw_refuses_ids_the_schedule_cannot_produce(bad):
    layer = ScaffoldLinear(4, 3, "fc", ScaffoldConfig(r=1, schedule="step", k=3))
    with pytest.raises(ValueError, match="draw"):
        layer.set_draw(bad)


@settings(max_examples=20, deadline=None)
@given(names=st.lists(st.sampled_from(["layers.0", "layers.1", "head", r"layers\.\d", "all-linear"]),
                      min_size=1, max_size=3, unique=True))
def test_every_scaffolded_name_matches_a_pattern_and_nothing_else_changes(names):
    if "all-linear" in names and len(names) > 1:
        return
    cfg_kwargs = dict(target_modules=names, r=1)
    model = build("mlp", d_in=8, n_out=3, hidden="tiny")
    try:
        scaffolded = scaffold(model, ScaffoldConfig(**cfg_kwargs))
    except ValueError:
        return
    layers = [n for n, _ in scaffold_layers(scaffolded)]
    assert layers, "scaffold() returned without scaffolding anything"
    if "all-linear" in names:
        assert layers == ["layers.0", "layers.1"]
    else:
        expected = {n for n in ("layers.0", "layers.1", "head")
                    if n in names or (r"layers\.\d" in names and n.startswith("layers."))}
        assert set(layers) == expected


# ----------------------------------------------------------------------------- trainable modules own their layers


class WithTrainableBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.pooler = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.pooler(self.body(x)))


def test_all_linear_leaves_layers_inside_a_trainable_module_trainable():
    model = scaffold(WithTrainableBlock(), ScaffoldConfig(r=2, trainable=["pooler", "head"]))
    assert [n for n, _ in scaffold_layers(model)] == ["body"]
    assert type(model.pooler[0]) is nn.Linear and model.pooler[0].weight.requires_grad


def test_an_explicit_target_inside_a_trainable_module_is_refused():
    model = WithTrainableBlock()
    with pytest.raises(ValueError, match=r"layer 'pooler.0' is a scaffold target inside trainable module 'pooler' "
                                         r"\(pattern 'pooler'\)"):
        scaffold(model, ScaffoldConfig(target_modules=["body", "0"], r=2, trainable="pooler"))
    assert type(model.body) is nn.Linear


def test_a_trainable_module_inside_a_target_is_refused():
    model = nn.Sequential(nn.MultiheadAttention(4, 2), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"trainable modules \['0.out_proj'\] lie inside scaffold target '0'"):
        scaffold(model, ScaffoldConfig(target_modules="0", r=2, trainable="out_proj"))
