"""scaffold() never guesses, and merge() gives the plain model back: target patterns ("all-linear" and
peft's rule), unsupported modules named, what trains, bias structure, tied weights, shared modules,
already-scaffolded models, trainable modules, merge and the parameter counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reservoir_depth.models import build
from reservoir_depth.scaffold import ScaffoldConfig, ScaffoldLayer, count_parameters, merge, scaffold, scaffold_layers

from scaffold_cases import Net, gen, perturb_adapters, scaffolded


def conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, stride=2, padding=1, dilation=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
    )


@dataclass(frozen=True)
class Case:
    factory: Callable[[], nn.Module]
    targets: tuple[str, ...]
    trainable: tuple[str, ...]
    layer_names: tuple[str, ...]  # the scaffold layers scaffold() must create
    in_shape: tuple[int, ...]


MODELS = {
    "net": Case(Net, (r"body\.\d+",), ("head",), ("body.0", "body.2"), (7, 6)),
    "sequential": Case(
        lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)),
        ("0", "2"), ("4",), ("0", "2"), (7, 5)),
    "conv": Case(conv_net, ("0", "2"), ("5",), ("0", "2"), (2, 3, 7, 7)),
}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    state.update({"buffer:" + n: b.clone() for n, b in model.named_buffers() if b is not None})
    return state


# ----------------------------------------------------------------------------- target patterns


def large_mlp() -> nn.Module:
    return build("mlp", d_in=12, n_out=3, hidden="large")


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


# ----------------------------------------------------------------------------- refusals


def test_no_target_matches_lists_candidates():
    with pytest.raises(ValueError) as err:
        scaffold(Net(), ScaffoldConfig(target_modules=("encoder",), r=2))
    msg = str(err.value)
    assert "encoder" in msg and "body.0" in msg and "head" in msg


def test_layer_both_target_and_trainable():
    with pytest.raises(ValueError, match="head"):
        scaffold(Net(), ScaffoldConfig(target_modules=(r"body\.\d+", "head"), trainable=("head",), r=2))


def test_failed_scaffold_leaves_the_model_untouched():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="both a scaffold target and in trainable"):
        scaffold(net, ScaffoldConfig(target_modules=[".*"], trainable=["1"], r=1))
    assert all(type(m) is nn.Linear for m in net)
    assert all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


class WithNormAndConv3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.conv3d = nn.Conv3d(4, 4, 1)  # no layer type handles it
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.norm(self.fc(x)))


def test_matched_unsupported_modules_are_named_with_their_class():
    model = WithNormAndConv3d()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        scaffold(model, ScaffoldConfig(target_modules=".*", trainable="head"))
    msg = str(err.value)
    assert "norm (LayerNorm)" in msg and "conv3d (Conv3d)" in msg and "Conv1D" in msg  # the registry is listed
    assert type(model.fc) is nn.Linear  # untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


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


# ----------------------------------------------------------------------------- what trains


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("bias", ["frozen", "trainable", "none"])
def test_only_adapters_beta_and_trainable_modules_train(arch, bias):
    case = MODELS[arch]
    in_shape = case.in_shape
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = scaffold(case.factory(), ScaffoldConfig(target_modules=case.targets, trainable=case.trainable,
                                                        r=2, bias=bias))
    layers = dict(scaffold_layers(model))
    assert sorted(layers) == sorted(case.layer_names)

    expected = {f"{n}.{p}" for n in layers for p in ("beta", "lora_A", "lora_B")}
    expected |= {n for n, _ in model.named_parameters() if n.split(".")[0] in case.trainable}
    for n, layer in layers.items():
        if bias == "none":
            assert layer.bias is None
        else:
            assert layer.bias is not None and layer.bias.requires_grad == (bias == "trainable")
            assert ("bias" in layer.trained) == (bias == "trainable")
        if bias == "trainable":
            expected.add(f"{n}.bias")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected

    before = snapshot(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = gen(1)
    for _ in range(4):
        x = torch.randn(in_shape, generator=g)
        target = torch.randint(0, 3, (in_shape[0],), generator=g)
        loss = F.cross_entropy(model(x)[:, :3], target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    after = snapshot(model)
    params = dict(model.named_parameters())
    for n, old in before.items():
        if n in expected:
            assert not torch.equal(after[n], old), f"trainable {n} did not change"
        else:
            assert torch.equal(after[n], old), f"frozen {n} changed"
            if not n.startswith("buffer:"):
                assert params[n].grad is None, f"frozen {n} got a gradient"
    for n in layers:
        assert torch.equal(after[f"buffer:{n}.W_seed"], before[f"buffer:{n}.W_seed"])


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


# ----------------------------------------------------------------------------- bias structure and merge


def test_keep_bias_mode_is_the_default_and_keeps_each_layers_structure():
    assert ScaffoldConfig().bias == "keep"
    model = nn.Sequential(nn.Linear(4, 5, bias=False), nn.ReLU(), nn.Linear(5, 3))
    model = scaffold(model, ScaffoldConfig(target_modules=["0", "2"], r=2))
    assert model[0].bias is None
    assert model[2].bias is not None and not model[2].bias.requires_grad
    assert model[0].frozen() == () and model[2].frozen() == ("bias",)


def test_frozen_mode_adds_a_bias_everywhere_as_documented():
    model = scaffold(nn.Sequential(nn.Linear(4, 5, bias=False)), ScaffoldConfig(target_modules="0", r=2, bias="frozen"))
    assert model[0].bias is not None and not model[0].bias.requires_grad


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("bias", ["frozen", "none"])
def test_merge_matches_scaffolded_model(arch, bias):
    case = MODELS[arch]
    model = scaffold(case.factory(), ScaffoldConfig(target_modules=case.targets, trainable=case.trainable, r=2, bias=bias))
    perturb_adapters(model, seed=3)
    model.eval()
    merged = merge(model).eval()

    assert not any(isinstance(m, ScaffoldLayer) for m in merged.modules())
    assert not hasattr(merged, "scaffold_config")
    assert all(p.requires_grad for p in merged.parameters())
    assert any(isinstance(m, ScaffoldLayer) for m in model.modules())  # the original is untouched
    for n, layer in scaffold_layers(model):
        plain = merged.get_submodule(n)
        assert type(plain) in (nn.Linear, nn.Conv2d)
        assert (plain.bias is None) == (bias == "none")
    x = torch.randn(case.in_shape, generator=gen(2))
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), rtol=1e-5, atol=1e-5)


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


# ----------------------------------------------------------------------------- parameter counts


def test_count_parameters_mlp_medium():
    m = build("mlp", d_in=784, n_out=10, hidden="medium")
    r = 8
    model = scaffold(m, ScaffoldConfig(target_modules=m.scaffold_targets, trainable=m.scaffold_trainable, r=r))
    dims = (784, 512, 256, 128, 64)
    hidden = list(zip(dims[:-1], dims[1:]))
    head = 64 * 10 + 10
    trainable = r * sum(i + o for i, o in hidden) + len(hidden) + head
    total = sum(i * o + o for i, o in hidden) + head + r * sum(i + o for i, o in hidden) + len(hidden)
    count = count_parameters(model)
    assert (count.trainable, count.total) == (trainable, total)
    assert (trainable, total) == (21774, 596174)
    assert round(100 * count.fraction, 2) == 3.65


def test_count_parameters_plain_model():
    count = count_parameters(nn.Linear(3, 2))
    assert (count.trainable, count.total) == (8, 8)
