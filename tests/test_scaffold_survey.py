"""What scaffold() passes over (reservoir_depth/scaffold/survey.py): declared output layers only, nn.Linear
subclasses, parametrized weights, MoE experts, a forgotten head; strict=True; save() that fails writes nothing."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reservoir_depth import io
from reservoir_depth.models import build
from reservoir_depth.scaffold import PassedOverWarning, ScaffoldConfig, merge, scaffold, scaffold_layers

from scaffold_cases import perturb

transformers = pytest.importorskip("transformers")


def _quiet(model: nn.Module, config: ScaffoldConfig, **kw) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error", PassedOverWarning)
        return scaffold(model, config, **kw)


def _report(model: nn.Module, config: ScaffoldConfig) -> str:
    with pytest.warns(PassedOverWarning) as rec:
        scaffold(model, config)
    assert len(rec) == 1  # one warning naming everything
    return str(rec[0].message)


def _names(model: nn.Module) -> list[str]:
    return [n for n, _ in scaffold_layers(model)]


# -- parametrized weights (weight_norm, spectral_norm): refused, never accepted then broken at merge / save

def _weight_normed() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(8, 8)), nn.ReLU(), nn.Linear(8, 2))


def test_all_linear_reports_a_weight_normed_linear_and_merge_and_save_work(tmp_path):
    model = _weight_normed()
    msg = _report(model, ScaffoldConfig(r=2))
    assert "0: its weight (_WeightNorm) is parametrized" in msg and "remove_parametrizations" in msg
    assert _names(model) == ["2"]  # no declared output layer: the last Linear is no head
    x = torch.randn(4, 8)
    torch.testing.assert_close(merge(model)(x), model(x))
    io.save(model, tmp_path)  # its merge for the size report no longer raises
    assert torch.equal(io.load(tmp_path, model=_weight_normed())(x), model(x))


@pytest.mark.parametrize("norm", [nn.utils.parametrizations.weight_norm, nn.utils.parametrizations.spectral_norm])
def test_a_parametrized_linear_named_as_a_target_is_refused_by_name(norm):
    model = nn.Sequential(norm(nn.Linear(8, 8)), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"0 \(ParametrizedLinear\): its weight .* is parametrized"):
        scaffold(model, ScaffoldConfig(target_modules="0", r=2))
    assert not any(True for _ in scaffold_layers(model))


# -- declared output layers only: a headless model loses no hidden layer

def test_headless_clip_vision_model_keeps_its_last_hidden_layer():
    config = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=8, patch_size=4)
    torch.manual_seed(0)
    model = transformers.CLIPVisionModel(config)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    _quiet(model, ScaffoldConfig(r=2, trainable="embeddings"))  # its conv and embedding: trained, so no warning
    assert any(n.endswith("encoder.layers.1.mlp.fc2") for n in _names(model))
    assert sorted(_names(model)) == sorted(linear)  # no output layer declared: every linear is taken


def test_a_family_declared_head_and_exclude_are_left_out():
    model = _quiet(build("mlp", d_in=6, n_out=3, hidden=[8, 8]), ScaffoldConfig(r=2, trainable="head"))
    assert _names(model) == ["layers.0", "layers.1"]
    model = _quiet(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)),
                   ScaffoldConfig(r=2, exclude="2", trainable="2"))
    assert _names(model) == ["0", "1"]
    with pytest.raises(ValueError, match=r"exclude patterns \['nope'\] match no module"):
        scaffold(nn.Sequential(nn.Linear(4, 2)), ScaffoldConfig(r=1, exclude="nope"))
    assert "exclude" not in ScaffoldConfig().to_dict()  # stored configs and run ids without it keep their form


# -- a forgotten head: warned, strict raises

def test_a_forgotten_mlp_head_is_warned_and_strict_refuses_it():
    msg = _report(build("mlp", d_in=6, n_out=3, hidden=[8, 8]), ScaffoldConfig(r=4))
    assert "head: the family's declared head" in msg and "neither adapted nor trainable" in msg
    model = build("mlp", d_in=6, n_out=3, hidden=[8, 8])
    with pytest.raises(ValueError, match=r"strict=True.*head: the family's declared head"):
        scaffold(model, ScaffoldConfig(r=4), strict=True)
    assert not any(True for _ in scaffold_layers(model))  # nothing changed
    _quiet(model, ScaffoldConfig(r=4, trainable="head"), strict=True)


def test_an_untied_gpt2_lm_head_left_frozen_is_warned():
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=8,
                                     tie_word_embeddings=False)
    msg = _report(transformers.GPT2LMHeadModel(config), ScaffoldConfig(r=2))
    assert "lm_head: the output layer (get_output_embeddings())" in msg
    _quiet(transformers.GPT2LMHeadModel(config), ScaffoldConfig(r=2, trainable=["lm_head", "wte", "wpe"]))
    assert "transformer.wte: a Embedding left at its own (unseeded) init" in msg  # the embeddings, named too


# -- nn.Linear subclasses

class Doubled(nn.Linear):
    """Its own forward, not the affine map."""

    def forward(self, x):
        return 2 * F.linear(x, self.weight, self.bias)


class Affine(nn.Linear):
    """Its own forward, the affine map written out (as transformers' FalconLinear)."""

    def forward(self, x):
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


def test_an_affine_linear_subclass_is_scaffolded_and_merges_into_its_class():
    torch.manual_seed(0)
    model = _quiet(nn.Sequential(Affine(5, 4), nn.Tanh(), Affine(4, 3, bias=False)), ScaffoldConfig(r=2))
    assert _names(model) == ["0", "2"]
    perturb(model)
    x = torch.randn(3, 5)
    merged = merge(model)
    assert type(merged[0]) is Affine and type(merged[2]) is Affine
    torch.testing.assert_close(merged(x), model(x))
    Affine(5, 4).load_state_dict(merged[0].state_dict(), strict=True)


def test_a_linear_subclass_with_another_forward_is_reported_and_refused_by_name():
    msg = _report(nn.Sequential(Doubled(5, 4), nn.Tanh(), nn.Linear(4, 3)), ScaffoldConfig(r=2))
    assert "0: an nn.Linear subclass (Doubled) whose forward is not the plain affine map" in msg
    with pytest.raises(ValueError, match=r"0 \(Doubled\): an nn.Linear subclass \(Doubled\)"):
        scaffold(nn.Sequential(Doubled(5, 4), nn.Linear(4, 3)), ScaffoldConfig(target_modules="0", r=2))


def test_falcon_all_linear_takes_every_falcon_linear_exactly():
    config = transformers.FalconConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       new_decoder_architecture=False, multi_query=True)
    torch.manual_seed(0)
    model = transformers.FalconForCausalLM(config)
    inner = [n for n, m in model.named_modules() if type(m).__name__ == "FalconLinear"]
    assert inner  # every linear of the blocks is a FalconLinear(nn.Linear) with its own forward
    ids = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(0))
    model.eval()
    scaffold(model, ScaffoldConfig(r=2, trainable="lm_head"))
    assert sorted(_names(model)) == sorted(inner)
    plain = build_falcon_with_seeded_weights(model, config)
    torch.testing.assert_close(model(ids).logits, plain(ids).logits, rtol=1e-5, atol=1e-5)
    assert type(merge(model).get_submodule(inner[0])).__name__ == "FalconLinear"


def build_falcon_with_seeded_weights(model, config):
    """A fresh Falcon loading the merged state strictly: the scaffold equals torch's module with the drawn W."""
    fresh = transformers.FalconForCausalLM(config).eval()
    fresh.load_state_dict(merge(model).state_dict(), strict=True)
    return fresh


# -- MoE: fused expert weights and the router are reported and refused by name

def _mixtral():
    config = transformers.MixtralConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4)
    return transformers.MixtralForCausalLM(config)


def test_mixtral_experts_and_router_are_reported_and_refused_by_name():
    model = _mixtral()
    msg = _report(model, ScaffoldConfig(r=2, trainable="lm_head"))
    assert "model.layers.0.mlp.experts: MixtralExperts holds weight matrices gate_up_proj (4, 64, 16)" in msg
    assert "(fused MoE expert weights)" in msg
    assert "model.layers.0.mlp.gate: MixtralTopKRouter holds weight matrices weight (4, 16)" in msg
    assert "model.layers.0.self_attn.q_proj" in _names(model)
    with pytest.raises(ValueError, match=r"experts \(MixtralExperts\): MixtralExperts holds weight matrices"):
        scaffold(_mixtral(), ScaffoldConfig(target_modules="experts", r=2))
    with pytest.raises(ValueError, match="strict=True.*MixtralExperts"):
        scaffold(_mixtral(), ScaffoldConfig(r=2, trainable="lm_head"), strict=True)


def test_all_linear_with_nothing_to_take_names_what_it_passed_over():
    with pytest.raises(ValueError, match=r"finds no layer it can scaffold.*0: an nn.Linear subclass \(Doubled\)"):
        scaffold(nn.Sequential(Doubled(4, 4)), ScaffoldConfig(r=1))


# -- save(): everything that can fail runs before the first byte is written

def test_save_that_fails_writes_nothing(tmp_path, monkeypatch):
    model = _quiet(build("mlp", d_in=6, n_out=3, hidden=[8, 8]), ScaffoldConfig(r=2, trainable="head"))

    def broken(m):
        raise RuntimeError("merge failed")

    monkeypatch.setattr(io, "merge", broken)
    with pytest.raises(RuntimeError, match="merge failed"):
        io.save(model, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    report = io.save(model, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [io.CONFIG, io.TENSORS]  # no temporary left
    assert report.bytes == sum(p.stat().st_size for p in (tmp_path / "run").iterdir())


def test_all_linear_names_the_convolutions_and_embeddings_it_leaves_at_their_own_init():
    """On a CNN "all-linear" takes the linear layers only (peft's meaning); the convolutions and the embedding
    keep torch's unseeded init, and the warning names each of them (it said nothing)."""
    import warnings as w

    from torch import nn

    from reservoir_depth.scaffold import PassedOverWarning, ScaffoldConfig, scaffold

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.conv = nn.Conv1d(4, 4, 3)
            self.fc = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        scaffold(Net(), ScaffoldConfig(r=1, trainable="head"))
    text = " ".join(str(c.message) for c in caught if issubclass(c.category, PassedOverWarning))
    assert "conv (Conv1d" in text or "conv:" in text
    assert "emb" in text and "all-linear" in text
    with w.catch_warnings(record=True) as caught:  # targeted or trained: nothing to say
        w.simplefilter("always")
        scaffold(Net(), ScaffoldConfig(target_modules=["conv", "fc"], r=1, trainable=["head", "emb"]))
    assert not [c for c in caught if issubclass(c.category, PassedOverWarning)]
