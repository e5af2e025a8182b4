"""Per-layer ranks from a per-layer prediction (predict.allocate_ranks, ranks_config, layer_dims) and the AdaLoRA
baseline of experiments/per_layer_ranks.py."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reservoir_depth.models import build
from reservoir_depth.predict import GradientSpectrum, allocate_ranks, layer_dims, ranks_config
from reservoir_depth.scaffold import ScaffoldConfig, merge, scaffold, scaffold_layers
from reservoir_depth.data.dataset import Dataset

ROOT = Path(__file__).resolve().parents[1]
PROPS = settings(deadline=None, max_examples=200)


def _cost(d):
    return d[0] + d[1]


def _cap(d):
    return min(d)


@st.composite
def layers(draw):
    """(per_layer, dims, r): 1..6 layers of random widths, predictions >= 0 (some 0, some tied), r in 0..20."""
    n = draw(st.integers(1, 6))
    names = [f"layers.{i}.weight" for i in range(n)]
    dims = {k: (draw(st.integers(1, 40)), draw(st.integers(1, 40))) for k in names}
    value = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1e3, allow_nan=False, allow_infinity=False))
    per_layer = {k: draw(value) for k in names}
    return per_layer, dims, draw(st.integers(0, 20))


@PROPS
@given(layers())
def test_allocation_keeps_the_budget_the_caps_and_uses_the_budget(case):
    per_layer, dims, r = case
    ranks = allocate_ranks(per_layer, dims, r)
    assert set(ranks) == set(per_layer)
    budget = sum(min(r, _cap(d)) * _cost(d) for d in dims.values())
    spent = sum(ranks[k] * _cost(d) for k, d in dims.items())
    assert spent <= budget
    for k, d in dims.items():
        assert isinstance(ranks[k], int) and 0 <= ranks[k] <= _cap(d)
        if ranks[k] < _cap(d):  # one more rank on any uncapped layer would overspend
            assert budget - spent < _cost(d), (k, ranks, budget, spent)


@PROPS
@given(layers())
def test_allocation_is_monotone_in_the_prediction(case):
    """A layer with a larger prediction and no larger cost per rank never gets fewer ranks than another
    (unless its own cap stops it)."""
    per_layer, dims, r = case
    ranks = allocate_ranks(per_layer, dims, r)
    for i in per_layer:
        for j in per_layer:
            if per_layer[i] > per_layer[j] and _cost(dims[i]) <= _cost(dims[j]):
                assert ranks[i] >= min(ranks[j], _cap(dims[i])), (i, j, per_layer, dims, ranks)


@PROPS
@given(st.integers(1, 6), st.integers(1, 40), st.integers(1, 40), st.floats(1e-3, 1e3), st.integers(0, 50))
def test_equal_predictions_on_equal_layers_give_the_uniform_rank(n, d_in, d_out, p, r):
    dims = {f"l{i}": (d_in, d_out) for i in range(n)}
    assert allocate_ranks({k: p for k in dims}, dims, r) == {k: min(r, d_in, d_out) for k in dims}


def test_ranks_are_proportional_to_the_prediction():
    dims = {"a": (10, 10), "b": (10, 10)}
    assert allocate_ranks({"a": 1.0, "b": 3.0}, dims, 4) == {"a": 2, "b": 6}
    # a capped layer's share goes to the others: b wants 12 > its cap 10 (budget 2 * 8 * 20 = 320)
    assert allocate_ranks({"a": 1.0, "b": 3.0}, dims, 8) == {"a": 6, "b": 10}


@pytest.mark.parametrize("per_layer, dims, r, message", [
    ({"a": 1.0, "x": 1.0}, {"a": (4, 4)}, 2, "'x'"),
    ({"a": 1.0}, {"a": (4, 4), "b": (4, 4)}, 2, "'b'"),
    ({"a": float("nan")}, {"a": (4, 4)}, 2, "nan"),
    ({"a": float("inf")}, {"a": (4, 4)}, 2, "inf"),
    ({"a": -1.0}, {"a": (4, 4)}, 2, "-1.0"),
    ({"a": "1"}, {"a": (4, 4)}, 2, "'1'"),
    ({"a": 1.0}, {"a": (4, 4)}, -1, "-1"),
    ({"a": 1.0}, {"a": (4, 4)}, 2.5, "2.5"),
    ({"a": 1.0}, {"a": (4, 4)}, True, "True"),
    ({"a": 1.0}, {"a": (0, 4)}, 2, "(0, 4)"),
    ({"a": 1.0}, {"a": (4,)}, 2, "(4,)"),
    ({}, {}, 2, "no layer"),
])
def test_bad_input_is_named(per_layer, dims, r, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        allocate_ranks(per_layer, dims, r)


def _mlp(seed=0, r=0, **cfg):
    model = build("mlp", seed=seed, d_in=12, n_out=3, hidden=(8, 6))
    return scaffold(model, ScaffoldConfig(**{"trainable": "head", **cfg, "r": r, "root_seed": seed}))


def test_layer_dims_are_keyed_like_the_gradient_spectrum():
    model = _mlp()
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(64, 12, generator=g), torch.randint(0, 3, (64,), generator=g)
    est = GradientSpectrum(k=1, batch_size=64).fit(model, Dataset("toy", X, y, X[:8], y[:8], n_classes=3))
    assert layer_dims(model) == {"layers.0.weight": (12, 8), "layers.1.weight": (8, 6)}
    assert set(layer_dims(model)) == set(est.per_layer_)


def test_ranks_config_sets_each_layers_rank_and_scale():
    cfg = ranks_config({"layers.0.weight": 5, "layers.1.weight": 2}, {"alpha": 16.0, "trainable": "head"})
    assert cfg.r == 5 and cfg.max_rank == {re.escape("layers.0"): 5, re.escape("layers.1"): 2}
    model = scaffold(build("mlp", seed=0, d_in=12, n_out=3, hidden=(8, 6)), cfg)
    got = {n: (layer.lora_A.shape[0], layer.s) for n, layer in scaffold_layers(model)}
    assert got == {"layers.0": (5, 16.0 / 5), "layers.1": (2, 16.0 / 2)}  # s = alpha / r_layer
    assert ranks_config({"a.weight": 0}).r == 0
    base = ScaffoldConfig(alpha=8.0, trainable="head", bias="frozen", rslora=True)
    got = ranks_config({"layers.0.weight": 3}, base)
    assert got == ScaffoldConfig(alpha=8.0, trainable="head", bias="frozen", rslora=True, r=3,
                                 max_rank={re.escape("layers.0"): 3})


def test_ranks_config_refuses_a_name_that_is_not_a_weight():
    with pytest.raises(ValueError, match="'layers.0.bias'"):
        ranks_config({"layers.0.bias": 2})
    with pytest.raises(ValueError, match="-1"):
        ranks_config({"layers.0.weight": -1})
    with pytest.raises(ValueError, match=re.escape("max_rank={'x': 1}")):  # replacing it would drop the cap
        ranks_config({"layers.0.weight": 2}, ScaffoldConfig(max_rank={"x": 1}))


# ----------------------------------------------------------------------------- the experiment's AdaLoRA baseline

def _experiment():
    """experiments/per_layer_ranks.py as a module (it imports _common as `python experiments/x.py` does)."""
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        spec = importlib.util.spec_from_file_location("per_layer_ranks", ROOT / "experiments" / "per_layer_ranks.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    return mod


def test_adalora_starts_from_the_frozen_reservoir_and_trains_only_adapters_and_head():
    pytest.importorskip("peft")
    exp = _experiment()
    model = _mlp(seed=3, bias="frozen")
    plain = merge(model)
    net = exp.adalora(model, r=2, total_step=100, alpha=16.0)
    base = {n: p for n, p in net.net.named_parameters() if "base_layer" in n}
    assert set(base) == {f"layers.{i}.base_layer.{w}" for i in (0, 1) for w in ("weight", "bias")}
    for n, p in base.items():
        assert torch.equal(p, plain.get_parameter(n.replace(".base_layer", ""))) and not p.requires_grad
    trained = {n for n, p in net.net.named_parameters() if p.requires_grad}
    assert trained == {n.removeprefix("peft.base_model.model.net.") for n, p in net.named_parameters() if p.requires_grad}
    assert trained == {f"layers.{i}.lora_{m}.default" for i in (0, 1) for m in "ABE"} | {"head.weight", "head.bias"}
    x = torch.randn(5, 12)
    net.eval(), plain.eval()
    assert torch.allclose(net(x), plain(x))  # E = 0 at init: the reservoir itself


def test_adalora_loss_adds_peft_orthogonality_term():
    pytest.importorskip("peft")
    exp = _experiment()
    net = exp.adalora(_mlp(), r=2, total_step=100, alpha=16.0)
    x, y = torch.randn(5, 12), torch.tensor([0, 1, 2, 0, 1])
    net.eval()  # no dropout: the two forwards see the same network
    task_loss = torch.nn.functional.cross_entropy(net(x), y)
    reg = [torch.linalg.matrix_norm(p @ p.T - torch.eye(p.shape[0])) if "lora_A" in n
           else torch.linalg.matrix_norm(p.T @ p - torch.eye(p.shape[1]))
           for n, p in net.net.named_parameters() if "lora_A" in n or "lora_B" in n]
    want = task_loss + 0.5 * sum(reg) / len(reg)  # peft's default orth_reg_weight
    assert math.isclose(exp.adalora_loss(net, x, y).item(), want.item(), rel_tol=1e-5)
