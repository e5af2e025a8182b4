"""Eq. (1) for one weight: at init the layer is the random reservoir, y = beta W_seed x + s B (A x) + b,
W_seed drawn from (spec, root seed, layer name) and never stored, the rank check, the seeded bias, the
replaced layer's dtype and device, and W_seed held in a lower dtype (set_seed_dtype)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reservoir_depth import io
from reservoir_depth.distributions import layer_seed, rng_for, sample
from reservoir_depth.models import build
from reservoir_depth.scaffold import (ScaffoldConfig, ScaffoldConv2d, ScaffoldLayer, ScaffoldLinear, advance, merge,
                                      scaffold, scaffold_layers, set_seed_dtype)

from scaffold_cases import (BF16, Net, X, canonical, conv_mlp, gen, perturb_adapters, perturb_b_and_beta,
                            scaffolded_conv_mlp)


class Stack(nn.Module):
    """Linear layers named ``layers.0``, ``layers.1``, ..."""

    def __init__(self, widths) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


# ----------------------------------------------------------------------------- init = reservoir, eq. (1)


@st.composite
def linear_case(draw_):
    d_in, d_out = draw_(st.integers(1, 32)), draw_(st.integers(1, 32))
    r = draw_(st.integers(0, min(d_in, d_out)))
    return d_in, d_out, r, draw_(st.booleans()), draw_(st.integers(0, 2**32))


@settings(max_examples=30, deadline=None)
@given(case=linear_case(), beta=st.floats(-3.0, 3.0))
def test_linear_at_init_is_the_reservoir(case, beta):
    d_in, d_out, r, rslora, root = case
    config = ScaffoldConfig(r=r, rslora=rslora, root_seed=root)
    layer = ScaffoldLinear(d_in, d_out, "layers.0", config.settings_for("layers.0"))
    assert layer.W_seed.shape == (d_out, d_in) and not layer.W_seed.requires_grad
    assert torch.equal(layer.W_seed, canonical(config, (d_out, d_in), "layers.0"))
    assert float(layer.beta.detach()) == 1.0 and not layer.lora_B.any()
    assert layer.lora_A.shape == (r, d_in) and layer.lora_B.shape == (d_out, r)
    if r:
        assert layer.lora_A.abs().max().item() <= 1 / math.sqrt(d_in)

    x = torch.randn(5, d_in, generator=gen(root % 1000))
    torch.testing.assert_close(layer(x), F.linear(x, layer.W_seed) + layer.bias)
    with torch.no_grad():
        layer.beta.fill_(beta)
    torch.testing.assert_close(layer(x), beta * F.linear(x, layer.W_seed) + layer.bias)


@settings(max_examples=25, deadline=None)
@given(case=linear_case(), alpha=st.floats(0.5, 32.0))
def test_linear_forward_is_equation_1(case, alpha):
    """y = beta W_seed x + s B (A x) + b with s = alpha / r (rsLoRA: alpha / sqrt(r))."""
    d_in, d_out, r, rslora, root = case
    layer = ScaffoldLinear(d_in, d_out, "fc", ScaffoldConfig(r=r, alpha=alpha, rslora=rslora, root_seed=root).settings_for("fc"))
    perturb_adapters(layer, seed=root % 1000)
    s = 0.0 if r == 0 else alpha / (math.sqrt(r) if rslora else r)
    x = torch.randn(4, d_in, generator=gen(1))
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    expected = layer.beta.detach() * x @ layer.W_seed.T + s * (x @ A.T) @ B.T + layer.bias.detach()
    torch.testing.assert_close(layer(x).detach(), expected, rtol=1e-5, atol=1e-5)


def test_bias_none_drops_the_bias():
    layer = ScaffoldLinear(4, 3, "fc", ScaffoldConfig(r=2, bias="none").settings_for("fc"))
    assert layer.bias is None and "bias" not in dict(layer.named_parameters())
    x = torch.randn(5, 4, generator=gen(0))
    torch.testing.assert_close(layer(x), F.linear(x, layer.W_seed))


def test_w_seed_is_not_in_state_dict():
    model = scaffold(Net(), ScaffoldConfig(target_modules=(r"body\.\d+",), trainable=("head",), r=2))
    assert not any("W_seed" in k for k in model.state_dict())


def test_rank_too_large():
    with pytest.raises(ValueError) as err:
        ScaffoldLinear(7, 3, "fc", ScaffoldConfig(r=4).settings_for("fc"))
    assert "4" in str(err.value) and "[0, 3]" in str(err.value)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        ScaffoldConv2d(nn.Conv2d(2, 5, 1), "conv", ScaffoldConfig(r=3).settings_for("conv"))
    with pytest.raises(ValueError, match="r=9"):
        scaffold(Net(), ScaffoldConfig(target_modules=(r"body\.\d+",), trainable=("head",), r=9))


# ----------------------------------------------------------------------------- seeds by name


def test_adding_a_layer_keeps_other_draws():
    config = ScaffoldConfig(target_modules=(r"layers\.\d+",), r=2, root_seed=11)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        a = scaffold(Stack((4, 6, 5, 7)), config)
        torch.manual_seed(1)  # different torch init: irrelevant to the scaffold
        b = scaffold(Stack((4, 6, 5, 7, 3)), config)
    la, lb = dict(scaffold_layers(a)), dict(scaffold_layers(b))
    assert sorted(la) == ["layers.0", "layers.1", "layers.2"] and "layers.3" in lb
    for n in la:
        assert torch.equal(la[n].W_seed, lb[n].W_seed)
        assert torch.equal(la[n].lora_A, lb[n].lora_A) and torch.equal(la[n].bias, lb[n].bias)
    # Distinct names and roots give distinct draws.
    assert not torch.equal(lb["layers.1"].W_seed[:5, :5], lb["layers.2"].W_seed[:5, :5])
    c = scaffold(Stack((4, 6, 5, 7)), ScaffoldConfig(target_modules=(r"layers\.\d+",), r=2, root_seed=12))
    assert not torch.equal(dict(scaffold_layers(c))["layers.0"].W_seed, la["layers.0"].W_seed)


class Single(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Linear(5, 4)
        self.head = nn.Linear(4, 2)


def test_w_seed_same_via_scaffold_or_direct():
    config = ScaffoldConfig(target_modules=("x",), trainable=("head",), r=3, root_seed=5)
    via = scaffold(Single(), config).x
    direct = ScaffoldLinear(5, 4, "x", config.settings_for("x"))
    assert isinstance(via, ScaffoldLinear)
    assert torch.equal(via.W_seed, direct.W_seed)
    assert torch.equal(via.lora_A, direct.lora_A) and torch.equal(via.bias, direct.bias)
    assert torch.equal(direct.W_seed, canonical(config, (4, 5), "x"))


def expected_bias(root_seed, name, d_in, d_out):
    bound = 1.0 / d_in ** 0.5
    return torch.from_numpy(rng_for(layer_seed(root_seed, name, "bias")).uniform(-bound, bound, (d_out,))).float()


@pytest.mark.parametrize("mode", ["keep", "frozen", "trainable"])
def test_bias_is_drawn_from_its_own_stream(mode):
    layer = ScaffoldLinear(6, 4, "enc.fc", ScaffoldConfig(r=2, root_seed=9, bias=mode).settings_for("enc.fc"))
    assert torch.equal(layer.bias.detach(), expected_bias(9, "enc.fc", 6, 4))


# ----------------------------------------------------------------------------- dtype and device


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
    expected = torch.from_numpy(sample(model[0].settings.spec, (5, 7), layer_seed(3, "0", "W_seed")))
    assert torch.equal(model[0].W_seed, expected)


def test_scaffold_layers_take_the_replaced_layers_device():
    model = nn.Sequential(nn.Linear(4, 3, device="meta"))
    model = scaffold(model, ScaffoldConfig(target_modules="0", r=1))
    assert all(t.device.type == "meta" for t in (model[0].W_seed, model[0].lora_A, model[0].beta))


def test_merge_keeps_dtype():
    model = scaffold(nn.Sequential(nn.Linear(4, 3)), ScaffoldConfig(target_modules="0", r=1)).double()
    x = torch.randn(2, 4, dtype=torch.float64, generator=gen(0))
    torch.testing.assert_close(merge(model).eval()(x), model.eval()(x))


def test_epoch_advance_keeps_dtype():
    model = scaffold(nn.Sequential(nn.Linear(4, 3)), ScaffoldConfig(target_modules="0", r=1, schedule="epoch")).double()
    advance(model, epoch=1)
    assert model[0].W_seed.dtype == torch.float64
    model(torch.randn(2, 4, dtype=torch.float64))


# ----------------------------------------------------------------------------- W_seed held in a lower dtype


def test_seed_dtype_holds_the_canonical_draw_rounded_and_leaves_what_trains_float32():
    model = scaffolded_conv_mlp(bias="frozen")
    before = model.scaffold_config.to_dict()
    assert set_seed_dtype(model, BF16) is model
    for name, layer in scaffold_layers(model):
        assert layer.seed_dtype == BF16 and layer.W_seed.dtype == BF16
        assert torch.equal(layer.W_seed, canonical(model.scaffold_config, layer.weight_shape, name).to(BF16))
        assert torch.equal(layer.canonical_seed(), canonical(model.scaffold_config, layer.weight_shape, name))
        for p in (layer.beta, layer.lora_A, layer.lora_B, layer.bias):
            assert p.dtype == torch.float32
    assert model.scaffold_config.to_dict() == before  # the config (and so the run id) does not see it
    set_seed_dtype(model, None)  # back: regenerated, not widened from the rounded values
    for name, layer in scaffold_layers(model):
        assert layer.seed_dtype is None
        assert torch.equal(layer.W_seed, canonical(model.scaffold_config, layer.weight_shape, name))


@pytest.mark.parametrize("dtype", [torch.int8, torch.float64, "bfloat16"])
def test_seed_dtype_refuses_what_it_cannot_hold(dtype):
    with pytest.raises(ValueError, match="seed dtype"):
        set_seed_dtype(scaffolded_conv_mlp(), dtype)


def reference64(layer: ScaffoldLayer, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Eq. (1) in float64 through plain autograd with W_seed = w."""
    ref = copy.deepcopy(layer).double()
    ref.W_seed = w.double()
    return ScaffoldLayer.forward(ref, x.double())


@pytest.mark.parametrize("path", ["fused", "plain"])
def test_cpu_forward_with_a_bf16_seed_computes_in_the_input_dtype(path):
    """No autocast, x float32: W_seed is cast to x's dtype, so the output is eq. (1) with the bf16-rounded
    W_seed to float32 rounding, and within bf16 rounding of the float64 reference with the canonical draw."""
    model = scaffolded_conv_mlp(bias="trainable")
    perturb_b_and_beta(model)
    set_seed_dtype(model, BF16)
    conv, fc = model[0], model[3]
    xf = torch.randn(4, 150, generator=gen(2))
    for layer, x in ((conv, X), (fc, xf)):
        x = x.clone().requires_grad_()
        y = layer(x) if path == "fused" else ScaffoldLayer.forward(layer, x)  # the generic autograd path
        assert y.dtype == torch.float32
        torch.testing.assert_close(y.double(), reference64(layer, x, layer.W_seed), rtol=1e-5, atol=1e-5)
        exact = reference64(layer, x, layer.canonical_seed())
        torch.testing.assert_close(y.double(), exact, rtol=2e-2, atol=2e-2 * float(exact.abs().max()))
        y.square().sum().backward()
        for p in (x, layer.beta, layer.lora_A, layer.lora_B, layer.bias):
            assert p.grad is not None and p.grad.dtype == torch.float32
        assert layer.W_seed.grad is None


def test_cpu_autocast_with_a_bf16_seed():
    model = scaffolded_conv_mlp()
    perturb_b_and_beta(model)
    set_seed_dtype(model, BF16)
    x = X.clone().requires_grad_()
    with torch.autocast("cpu", BF16):
        y = model(x)
    y.float().sum().backward()
    ref = copy.deepcopy(model)
    set_seed_dtype(ref, None)
    torch.testing.assert_close(y.float(), ref(X), rtol=0.05, atol=0.05)
    for _, layer in scaffold_layers(model):
        assert layer.beta.grad.dtype == layer.lora_A.grad.dtype == layer.lora_B.grad.dtype == torch.float32
    assert x.grad.dtype == torch.float32


def test_embedding_with_a_bf16_seed_returns_the_parameter_dtype():
    torch.manual_seed(0)
    model = scaffold(nn.Sequential(nn.Embedding(11, 6)), ScaffoldConfig(target_modules=["0"], r=2))
    perturb_b_and_beta(model)
    ids = torch.randint(0, 11, (3, 4), generator=gen(6))
    ref = model[0](ids)
    set_seed_dtype(model, BF16)
    y = model[0](ids)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-2, atol=1e-2)
    y.sum().backward()
    assert model[0].lora_A.grad.dtype == model[0].beta.grad.dtype == torch.float32


@pytest.mark.parametrize("schedule, k", [("epoch", 1), ("step", 3), ("batch", 2)])
def test_destabilised_scaffolds_keep_the_held_dtype(schedule, k):
    model = scaffolded_conv_mlp(schedule=schedule, k=k)
    set_seed_dtype(model, BF16)
    config = model.scaffold_config
    for name, layer in scaffold_layers(model):
        if layer._stack is not None:
            assert layer._stack.dtype == BF16
            for i in range(1, k):
                assert torch.equal(layer._stack[i], canonical(config, layer.weight_shape, name, "cycle", i).to(BF16))
    advance(model, epoch=2, step=1)
    for name, layer in scaffold_layers(model):
        assert layer.W_seed.dtype == BF16
        salt = {"epoch": ("epoch", 2), "step": ("cycle", 1), "batch": ()}[schedule]
        assert torch.equal(layer.W_seed, canonical(config, layer.weight_shape, name, *salt).to(BF16))
        assert torch.equal(layer.canonical_seed(), canonical(config, layer.weight_shape, name, *salt))
    model.train()(X).sum().backward()  # the batch schedule's plain path runs with the held seeds


def test_merge_gives_the_parameter_dtype():
    model = scaffolded_conv_mlp(bias="frozen")
    perturb_b_and_beta(model)
    set_seed_dtype(model, BF16)
    plain = merge(model)
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    assert type(plain[0]) is nn.Conv2d and type(plain[3]) is nn.Linear
    torch.testing.assert_close(plain(X), model(X), rtol=1e-5, atol=1e-5)


def _round_trip(model: nn.Module, path) -> nn.Module:
    io.save(model, path)
    torch.manual_seed(1)
    return io.load(path, model=conv_mlp())


def test_bf16_held_seed_saves_and_loads(tmp_path):
    model = scaffolded_conv_mlp(schedule="epoch")
    perturb_b_and_beta(model)
    set_seed_dtype(model, BF16)
    advance(model, epoch=3)
    loaded = _round_trip(model, tmp_path)
    assert [layer.draw_id for _, layer in scaffold_layers(loaded)] == [["epoch", 3]] * 2
    set_seed_dtype(loaded, BF16)
    torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=0)


# ----------------------------------------------------------------------------- a layer from its own settings


def test_a_layer_is_built_from_its_settings_alone_with_no_config():
    """LayerSettings is all a layer reads: r, s, spec, bias, schedule, seed; no pattern, no config."""
    from reservoir_depth.distributions import DistributionSpec
    from reservoir_depth.scaffold import LayerSettings

    st_ = LayerSettings(spec=DistributionSpec("orthogonal"), r=2, s=3.0, seed=5, bias="trainable")
    layer = ScaffoldLinear(6, 4, "fc", st_)
    assert not hasattr(layer, "config") and layer.settings is st_
    assert (layer.r, layer.s, layer.spec.name) == (2, 3.0, "orthogonal")
    assert layer.lora_A.shape == (2, 6) and layer.bias.requires_grad
    # the same settings resolved from a config give the same draw
    via = ScaffoldConfig(r=2, alpha=6.0, spec=DistributionSpec("orthogonal"), root_seed=5, bias="trainable")
    assert via.settings_for("fc") == st_
    assert torch.equal(ScaffoldLinear(6, 4, "fc", via.settings_for("fc")).W_seed, layer.W_seed)
    assert "r=2" in repr(layer) and "s=3" in repr(layer) and "spec=orthogonal" in repr(layer) and "seed=5" in repr(layer)
    with pytest.raises(TypeError, match="settings must be a LayerSettings"):
        ScaffoldLinear(6, 4, "fc", via)


def test_settings_resolve_per_layer_overrides_once():
    from reservoir_depth.distributions import DistributionSpec

    config = ScaffoldConfig(r=8, max_rank={"attn": 2}, specs={r".*\.in_proj": DistributionSpec("uniform")})
    s = config.settings_for("enc.attn.in_proj", target="enc.attn")
    assert (s.r, s.r_max, s.rank_pattern, s.spec.name, s.spec_pattern) == (2, 2, "attn", "uniform", r".*\.in_proj")
    assert s.s == config.scale(2)
    plain = config.settings_for("enc.fc")
    assert (plain.r, plain.r_max, plain.rank_pattern, plain.spec_pattern) == (8, None, None, None)
    model = scaffold(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), ScaffoldConfig(r=3, max_rank={"1": 1}, trainable=()),
                     strict=False)
    assert "max_rank['1'] = 1" in repr(model[1]) and "r=3" in repr(model[0])


@pytest.mark.parametrize("bad", [dict(r=-1), dict(s=float("nan")), dict(r=2, s=0.0), dict(bias="x"), dict(k=0),
                                 dict(schedule="step", k=0), dict(r_max=-1), dict(seed=1.5), dict(init_B="ones")])
def test_layer_settings_refuse_what_no_layer_can_honour(bad):
    from reservoir_depth.scaffold import LayerSettings

    with pytest.raises(ValueError):
        LayerSettings(**bad)
