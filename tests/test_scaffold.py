"""Tests of reservoir_depth.scaffold: frozen-scaffold layers, scaffold(), merge(), schedules."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reservoir_depth.distributions import DistributionSpec, draw, layer_seed
from reservoir_depth.models import build
from reservoir_depth.scaffold import (
    ScaffoldConfig,
    ScaffoldConv2d,
    ScaffoldLayer,
    ScaffoldLinear,
    advance,
    count_parameters,
    merge,
    scaffold,
    scaffold_layers,
)

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- helpers


class Net(nn.Module):
    """Two scaffold candidates under ``body``, a frozen norm and a trainable ``head``."""

    def __init__(self, d_in: int = 6, width: int = 8, n_out: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        return self.head(self.norm(self.body(x)))


class Stack(nn.Module):
    """Linear layers named ``layers.0``, ``layers.1``, ..."""

    def __init__(self, widths) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


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


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def canonical_w_seed(config: ScaffoldConfig, shape, name: str) -> torch.Tensor:
    """W_seed as documented: drawn from (spec, root seed, layer name) only."""
    return draw(config.spec, tuple(shape), layer_seed(config.root_seed, name, "W_seed"))


def perturb(model: nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Move adapters and beta away from their initial values (B = 0, beta = 1)."""
    g = gen(seed)
    with torch.no_grad():
        for _, layer in scaffold_layers(model):
            layer.lora_A.copy_(scale * torch.randn(layer.lora_A.shape, generator=g))
            layer.lora_B.copy_(scale * torch.randn(layer.lora_B.shape, generator=g))
            layer.beta.fill_(0.5 + torch.rand((), generator=g).item())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    state.update({"buffer:" + n: b.clone() for n, b in model.named_buffers() if b is not None})
    return state


@st.composite
def linear_case(draw_):
    d_in, d_out = draw_(st.integers(1, 32)), draw_(st.integers(1, 32))
    r = draw_(st.integers(0, min(d_in, d_out)))
    return d_in, d_out, r, draw_(st.booleans()), draw_(st.integers(0, 2**32))


# ----------------------------------------------------------------------------- 1. init = reservoir


@settings(max_examples=30, deadline=None)
@given(case=linear_case(), beta=st.floats(-3.0, 3.0))
def test_linear_at_init_is_the_reservoir(case, beta):
    d_in, d_out, r, rslora, root = case
    config = ScaffoldConfig(r=r, rslora=rslora, root_seed=root)
    layer = ScaffoldLinear(d_in, d_out, "layers.0", config)
    assert layer.W_seed.shape == (d_out, d_in) and not layer.W_seed.requires_grad
    assert torch.equal(layer.W_seed, canonical_w_seed(config, (d_out, d_in), "layers.0"))
    assert float(layer.beta.detach()) == 1.0 and not layer.lora_B.any()
    assert layer.lora_A.shape == (r, d_in) and layer.lora_B.shape == (d_out, r)
    if r:
        assert layer.lora_A.abs().max().item() <= 1 / math.sqrt(d_in)

    x = torch.randn(5, d_in, generator=gen(root % 1000))
    torch.testing.assert_close(layer(x), F.linear(x, layer.W_seed) + layer.bias)
    with torch.no_grad():
        layer.beta.fill_(beta)
    torch.testing.assert_close(layer(x), beta * F.linear(x, layer.W_seed) + layer.bias)


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
    layer = ScaffoldConv2d(nn.Conv2d(cin, cout, k, stride, padding), "conv", config)
    assert layer.W_seed.shape == (cout, cin, k, k)
    assert torch.equal(layer.W_seed, canonical_w_seed(config, (cout, cin, k, k), "conv"))

    x = torch.randn(2, cin, hw, hw, generator=gen(hw))
    expected = F.conv2d(x, layer.W_seed, None, stride, padding)
    torch.testing.assert_close(layer(x), expected + layer.bias.view(1, -1, 1, 1))
    with torch.no_grad():
        layer.beta.fill_(beta)
    torch.testing.assert_close(layer(x), beta * expected + layer.bias.view(1, -1, 1, 1))


@settings(max_examples=25, deadline=None)
@given(case=linear_case(), alpha=st.floats(0.5, 32.0))
def test_linear_forward_is_equation_1(case, alpha):
    """y = beta W_seed x + s B (A x) + b with s = alpha / r (rsLoRA: alpha / sqrt(r))."""
    d_in, d_out, r, rslora, root = case
    layer = ScaffoldLinear(d_in, d_out, "fc", ScaffoldConfig(r=r, alpha=alpha, rslora=rslora, root_seed=root))
    perturb(layer, seed=root % 1000)
    s = 0.0 if r == 0 else alpha / (math.sqrt(r) if rslora else r)
    x = torch.randn(4, d_in, generator=gen(1))
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    expected = layer.beta.detach() * x @ layer.W_seed.T + s * (x @ A.T) @ B.T + layer.bias.detach()
    torch.testing.assert_close(layer(x).detach(), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- 2. what trains


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


def test_bias_none_drops_the_bias():
    layer = ScaffoldLinear(4, 3, "fc", ScaffoldConfig(r=2, bias="none"))
    assert layer.bias is None and "bias" not in dict(layer.named_parameters())
    x = torch.randn(5, 4, generator=gen(0))
    torch.testing.assert_close(layer(x), F.linear(x, layer.W_seed))


def test_w_seed_is_not_in_state_dict():
    model = scaffold(Net(), ScaffoldConfig(target_modules=(r"body\.\d+",), trainable=("head",), r=2))
    assert not any("W_seed" in k for k in model.state_dict())


# ----------------------------------------------------------------------------- 3. seeds by name


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
    direct = ScaffoldLinear(5, 4, "x", config)
    assert isinstance(via, ScaffoldLinear)
    assert torch.equal(via.W_seed, direct.W_seed)
    assert torch.equal(via.lora_A, direct.lora_A) and torch.equal(via.bias, direct.bias)
    assert torch.equal(direct.W_seed, canonical_w_seed(config, (4, 5), "x"))


# ----------------------------------------------------------------------------- 4. merge


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("bias", ["frozen", "none"])
def test_merge_matches_scaffolded_model(arch, bias):
    case = MODELS[arch]
    model = scaffold(case.factory(), ScaffoldConfig(target_modules=case.targets, trainable=case.trainable, r=2, bias=bias))
    perturb(model, seed=3)
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


# ----------------------------------------------------------------------------- 5. parameter counts


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


# ----------------------------------------------------------------------------- 6. errors


def test_rank_too_large():
    with pytest.raises(ValueError) as err:
        ScaffoldLinear(7, 3, "fc", ScaffoldConfig(r=4))
    assert "4" in str(err.value) and "[0, 3]" in str(err.value)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        ScaffoldConv2d(nn.Conv2d(2, 5, 1), "conv", ScaffoldConfig(r=3))
    with pytest.raises(ValueError, match="r=9"):
        scaffold(Net(), ScaffoldConfig(target_modules=(r"body\.\d+",), trainable=("head",), r=9))


@pytest.mark.parametrize(
    "kw",
    [
        {"r": -1},
        {"r": 1.5},
        {"r": True},
        {"alpha": 0},
        {"alpha": -1.0},
        {"alpha": float("nan")},
        {"bias": "maybe"},
        {"schedule": "sometimes"},
        {"schedule": "step", "k": 0},
        {"k": 3},
        {"k": 3, "schedule": "static"},
        {"spec": "not_a_family"},
    ],
)
def test_invalid_config(kw):
    with pytest.raises(ValueError):
        ScaffoldConfig(**kw)


def test_no_target_matches_lists_candidates():
    with pytest.raises(ValueError) as err:
        scaffold(Net(), ScaffoldConfig(target_modules=("encoder",), r=2))
    msg = str(err.value)
    assert "encoder" in msg and "body.0" in msg and "head" in msg


def test_layer_both_target_and_trainable():
    with pytest.raises(ValueError, match="head"):
        scaffold(Net(), ScaffoldConfig(target_modules=(r"body\.\d+", "head"), trainable=("head",), r=2))


def test_grouped_conv_rejected():
    with pytest.raises(ValueError, match="group"):
        ScaffoldConv2d(nn.Conv2d(4, 4, 3, groups=2), "conv", ScaffoldConfig(r=2))
    with pytest.raises(ValueError, match="group"):
        scaffold(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4)), ScaffoldConfig(target_modules="0", r=1))


# ----------------------------------------------------------------------------- 7. schedules


def w_seeds(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.W_seed.clone() for n, m in scaffold_layers(model)}


def scaffolded_net(**kw) -> nn.Module:
    return scaffold(Net(), ScaffoldConfig(target_modules=(r"body\.\d+",), trainable=("head",), r=2, **kw))


def test_epoch_schedule():
    model = scaffolded_net(schedule="epoch")
    canonical = w_seeds(model)
    advance(model, epoch=1)
    e1 = w_seeds(model)
    advance(model, epoch=2)
    e2 = w_seeds(model)
    for n in canonical:
        assert e1[n].shape == canonical[n].shape and e1[n].dtype == canonical[n].dtype
        assert not torch.equal(e1[n], canonical[n]) and not torch.equal(e2[n], e1[n])
    advance(model, epoch=1)
    assert all(torch.equal(w, e1[n]) for n, w in w_seeds(model).items())
    # the forward pass uses the current scaffold
    layer = model.body[0]
    x = torch.randn(3, 6, generator=gen(0))
    torch.testing.assert_close(layer(x), F.linear(x, e1["body.0"]) + layer.bias)
    advance(model, epoch=0)
    assert all(torch.equal(w, canonical[n]) for n, w in w_seeds(model).items())
    advance(model, step=5)  # not the epoch schedule's clock
    assert all(torch.equal(w, canonical[n]) for n, w in w_seeds(model).items())


def test_step_schedule_cycles_with_period_k():
    model = scaffolded_net(schedule="step", k=3)
    canonical = w_seeds(model)
    seen = []
    for step in range(9):
        advance(model, step=step)
        seen.append(w_seeds(model))
    for step, ws in enumerate(seen):
        for n, w in ws.items():
            assert torch.equal(w, seen[step % 3][n])
    for n in canonical:
        assert torch.equal(seen[0][n], canonical[n])
        first = [seen[i][n] for i in range(3)]
        assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
        assert not torch.equal(first[0], first[2])


def test_static_schedule_ignores_advance():
    model = scaffolded_net()
    canonical = w_seeds(model)
    advance(model, epoch=3, step=7)
    assert all(torch.equal(w, canonical[n]) for n, w in w_seeds(model).items())


@pytest.mark.parametrize("n", [1, 3])
def test_batch_schedule_splits_the_batch(n):
    config = ScaffoldConfig(r=2, schedule="batch", k=2, root_seed=4)
    layer = ScaffoldLinear(5, 4, "fc", config)
    perturb(layer, seed=1)
    canonical = canonical_w_seed(config, (4, 5), "fc")
    stack = layer._stack
    assert stack.shape == (2, 4, 5)
    assert torch.equal(stack[0], canonical) and not torch.equal(stack[1], canonical)

    def through(x, w):
        return layer.beta * F.linear(x, w) + layer.s * layer.adapter(x) + layer.bias

    x = torch.randn(2 * n, 5, generator=gen(n))
    layer.train()
    y = layer(x)
    torch.testing.assert_close(y[:n], through(x[:n], stack[0]))
    torch.testing.assert_close(y[n:], through(x[n:], stack[1]))
    layer.eval()
    torch.testing.assert_close(layer(x), through(x, canonical))
    assert torch.equal(layer.W_seed, canonical)


# ----------------------------------------------------------------------------- 8. config


@pytest.mark.parametrize(
    "config",
    [
        ScaffoldConfig(),
        ScaffoldConfig(target_modules=[r"layers\.\d+"], trainable=["head", "norm"], r=4, alpha=8.0, rslora=True,
                       spec=DistributionSpec("gaussian_mixture", scaling="spectral_radius", rho=0.9), root_seed=7,
                       bias="trainable", schedule="batch", k=2),
        ScaffoldConfig(r=0, spec="orthogonal", bias="none", schedule="epoch"),
        ScaffoldConfig(specs={"W": DistributionSpec("normal", scaling="spectral_radius", rho=0.9),
                              r"layers\.[01]": "laplace"}),
    ],
)
def test_config_round_trip(config):
    d = config.to_dict()
    back = ScaffoldConfig.from_dict(json.loads(json.dumps(d)))
    assert back == config and back.to_dict() == d
    assert isinstance(back.spec, DistributionSpec) and isinstance(back.target_modules, tuple)


@settings(max_examples=30, deadline=None)
@given(r=st.integers(0, 64), alpha=st.floats(0.01, 100.0), rslora=st.booleans())
def test_lora_scale(r, alpha, rslora):
    s = ScaffoldConfig(r=r, alpha=alpha, rslora=rslora).s
    if r == 0:
        assert s == 0.0
    else:
        assert s == pytest.approx(alpha / math.sqrt(r) if rslora else alpha / r, rel=1e-12)


# ----------------------------------------------------------------------------- regressions
# Each guards a bug found while writing these tests (dtype, chunking, validation order).


def test_merge_keeps_dtype():
    model = scaffold(nn.Sequential(nn.Linear(4, 3)), ScaffoldConfig(target_modules="0", r=1)).double()
    x = torch.randn(2, 4, dtype=torch.float64, generator=gen(0))
    torch.testing.assert_close(merge(model).eval()(x), model.eval()(x))


def test_epoch_advance_keeps_dtype():
    model = scaffold(nn.Sequential(nn.Linear(4, 3)), ScaffoldConfig(target_modules="0", r=1, schedule="epoch")).double()
    advance(model, epoch=1)
    assert model[0].W_seed.dtype == torch.float64
    model(torch.randn(2, 4, dtype=torch.float64))


def test_batch_schedule_uses_all_k_scaffolds():
    layer = ScaffoldLinear(5, 4, "fc", ScaffoldConfig(r=1, schedule="batch", k=4)).train()
    x = torch.randn(6, 5, generator=gen(0))
    parts = x.tensor_split(4)  # sizes 2, 2, 1, 1
    expected = torch.cat([F.linear(p, layer._stack[i]) + layer.bias for i, p in enumerate(parts)])
    torch.testing.assert_close(layer(x), expected)


def test_failed_scaffold_leaves_the_model_untouched():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="both a scaffold target and in trainable"):
        scaffold(net, ScaffoldConfig(target_modules=[".*"], trainable=["1"], r=1))
    assert all(type(m) is nn.Linear for m in net)
    assert all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_numpy_numbers_are_accepted_and_bools_refused():
    c = ScaffoldConfig(r=np.int64(4), alpha=np.float32(8.0))
    assert c.r == 4 and type(c.r) is int and c.alpha == 8.0
    for bad in ({"r": True}, {"k": True, "schedule": "step"}, {"alpha": True}):
        with pytest.raises(ValueError):
            ScaffoldConfig(**bad)


# ----------------------------------------------------------------------------- the fused Linear path

def _reference(layer, x):
    """Eq. (1) through plain autograd (the unfused path every layer type shares)."""
    from reservoir_depth.scaffold import ScaffoldLayer

    return ScaffoldLayer.forward(layer, x)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 5), st.integers(0, 2**16),
       st.sampled_from(["frozen", "trainable", "none"]), st.booleans())
def test_fused_linear_matches_autograd_reference(d_in, d_out, batch, seed, bias, three_d):
    r = 1 + seed % min(d_in, d_out)
    layer = ScaffoldLinear(d_in, d_out, "fc", ScaffoldConfig(r=r, bias=bias, root_seed=seed)).double()
    g = gen(seed)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g, dtype=torch.float64))
        layer.beta.fill_(0.3 + seed % 7 / 5)
    shape = (batch, 3, d_in) if three_d else (batch, d_in)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    params = [x, layer.beta, layer.lora_A, layer.lora_B] + ([layer.bias] if bias == "trainable" else [])
    y, ref = layer(x), _reference(layer, x)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    up = torch.randn(y.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(y, params, up), torch.autograd.grad(ref, params, up)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_fused_linear_passes_gradcheck_and_runs_under_autocast():
    from reservoir_depth.scaffold import _LottaLinear

    layer = ScaffoldLinear(6, 4, "fc", ScaffoldConfig(r=2, bias="trainable")).double()
    with torch.no_grad():
        layer.lora_B.normal_(generator=gen(1))
        layer.bias.normal_(generator=gen(4))
    fn = lambda x, b, A, B, c: _LottaLinear.apply(x, layer.W_seed, b, A, B, c, layer.s)
    for n in (3, 12):  # batch below and above d_in: beta and B A applied to the output, or folded into W_eff
        x = torch.randn(n, 6, dtype=torch.float64, requires_grad=True, generator=gen(2))
        assert torch.autograd.gradcheck(fn, (x, layer.beta, layer.lora_A, layer.lora_B, layer.bias))
        torch.testing.assert_close(fn(x, layer.beta, layer.lora_A, layer.lora_B, layer.bias),
                                   ScaffoldLayer.forward(layer, x), rtol=1e-12, atol=1e-12)
    lf = ScaffoldLinear(6, 4, "fc", ScaffoldConfig(r=2))
    xf = torch.randn(5, 6, requires_grad=True, generator=gen(3))
    with torch.autocast("cpu", torch.bfloat16):
        y = lf(xf)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert xf.grad.dtype == lf.lora_A.grad.dtype == lf.beta.grad.dtype == torch.float32
    ref = _reference(lf, xf.detach())
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05)
    assert lf.W_seed.grad is None


def test_the_package_exports_the_layer_type_surface():
    """The layer-type registry, its scaffold classes and scaffold_defaults are public (reservoir_depth.*)."""
    import reservoir_depth

    names = {"LAYER_TYPES", "LayerType", "register_layer_type", "layer_type", "Scaffolded", "ScaffoldLayer",
             "ScaffoldLinear", "ScaffoldConv1D", "ScaffoldConv1d", "ScaffoldConv2d", "ScaffoldEmbedding",
             "ScaffoldMultiheadAttention", "scaffold_defaults"}
    assert names <= set(reservoir_depth.__all__)
    assert all(hasattr(reservoir_depth, n) for n in reservoir_depth.__all__)
