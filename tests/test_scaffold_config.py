"""ScaffoldConfig: validation of every field, the stored form (to_dict / from_dict), the LoRA scale s,
module-name patterns, and the per-layer overrides ``specs`` and ``max_rank`` (matched by the peft rule,
one pattern per layer, every pattern must match a scaffold layer)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reservoir_depth import io
from reservoir_depth.distributions import DistributionSpec, draw
from reservoir_depth.scaffold import ALL_LINEAR, ScaffoldConfig, scaffold, scaffold_layers

from scaffold_cases import Block, perturb


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))


# ----------------------------------------------------------------------------- validation and stored form


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


def test_numpy_numbers_are_accepted_and_bools_refused():
    c = ScaffoldConfig(r=np.int64(4), alpha=np.float32(8.0))
    assert c.r == 4 and type(c.r) is int and c.alpha == 8.0
    for bad in ({"r": True}, {"k": True, "schedule": "step"}, {"alpha": True}):
        with pytest.raises(ValueError):
            ScaffoldConfig(**bad)


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


# ----------------------------------------------------------------------------- patterns: a str is one pattern


@pytest.mark.parametrize("bad", [3, None, ["ok", 4], [b"bytes"]])
def test_patterns_must_be_strings(bad):
    with pytest.raises(ValueError, match="pattern"):
        ScaffoldConfig(target_modules=bad)
    with pytest.raises(ValueError, match="pattern"):
        ScaffoldConfig(trainable=bad)


def test_invalid_regex_is_an_error_naming_it():
    with pytest.raises(ValueError, match=re.escape(r"'layers\.('")):
        ScaffoldConfig(target_modules=[r"layers\.("])


def test_all_linear_cannot_be_mixed_with_patterns():
    with pytest.raises(ValueError, match="all-linear"):
        ScaffoldConfig(target_modules=["all-linear", "head"])


# ----------------------------------------------------------------------------- per-layer specs


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
    assert layers["2"].settings.rank_pattern == "2" and layers["0"].settings.rank_pattern is None


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


# ----------------------------------------------------------------------------- init_B


def test_b_starts_at_zero_by_default_and_init_b_stays_out_of_the_stored_config():
    model = scaffold(mlp(), ScaffoldConfig(r=2))
    assert all(torch.count_nonzero(m.lora_B) == 0 for _, m in scaffold_layers(model))
    assert "init_B" not in ScaffoldConfig(r=2).to_dict()  # stored run ids and adapter files keep their form
    assert ScaffoldConfig(r=2, init_B="kaiming").to_dict()["init_B"] == "kaiming"


def test_kaiming_b_is_seeded_bounded_and_round_trips(tmp_path):
    cfg = ScaffoldConfig(r=2, init_B="kaiming", root_seed=3)
    a, b = scaffold(mlp(), cfg), scaffold(mlp(), cfg)
    layers = dict(scaffold_layers(a))
    for name, m in scaffold_layers(b):
        B = m.lora_B.detach()
        assert torch.equal(B, layers[name].lora_B)  # seeded by (root seed, layer name)
        assert torch.count_nonzero(B) == B.numel() and B.abs().max() <= 1 / math.sqrt(m.r)
    first, second = (m.lora_B.detach() for _, m in list(scaffold_layers(a))[:2])
    assert not torch.equal(first.flatten()[:4], second.flatten()[:4])
    other = dict(scaffold_layers(scaffold(mlp(), ScaffoldConfig(r=2, init_B="kaiming", root_seed=4))))
    assert not torch.equal(other[name].lora_B, layers[name].lora_B)
    io.save(a, tmp_path)
    x = torch.randn(5, 6)
    torch.testing.assert_close(io.load(tmp_path, model=mlp())(x), a(x), rtol=0, atol=0)


@pytest.mark.parametrize("bad", ["normal", "", None, 0])
def test_unknown_init_b_is_refused_naming_the_choices(bad):
    with pytest.raises(ValueError, match="init_B.*zeros.*kaiming"):
        ScaffoldConfig(init_B=bad)
