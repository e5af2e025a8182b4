"""The layer-type registry: every registered type has an example, a subclass with its own forward is
not its base's type, a user's own type scaffolds, merges and round-trips, and spectra read every type
as its entry declares."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

import reservoir_depth
from reservoir_depth import io
from reservoir_depth.scaffold import (LAYER_TYPES, LayerType, ScaffoldConfig, ScaffoldLinear, ScaffoldMultiheadAttention,
                                      effective_weights, is_container, layer_type, merge, register_layer_type, scaffold,
                                      scaffold_layers)
from reservoir_depth.spectra import ActivationSpectra, WeightSpectra

from scaffold_cases import Block, Conv1D, EXAMPLES, EXAMPLE_PARAMS, Net, needs_transformers, perturb, scaffolded


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


def test_subclass_with_its_own_forward_is_not_treated_as_linear():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(Scaled(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"0 \(Scaled\)"):
        scaffold(model, ScaffoldConfig(target_modules="0"))


def test_the_package_exports_the_layer_type_surface():
    """The layer-type registry, its scaffold classes and scaffold_defaults are public (reservoir_depth.*)."""
    names = {"LAYER_TYPES", "LayerType", "register_layer_type", "layer_type", "Scaffolded", "ScaffoldLayer",
             "ScaffoldLinear", "ScaffoldTransposedLinear", "ScaffoldConv1d", "ScaffoldConv2d", "ScaffoldEmbedding",
             "ScaffoldMultiheadAttention", "scaffold_defaults"}
    assert names <= set(reservoir_depth.__all__)
    assert all(hasattr(reservoir_depth, n) for n in reservoir_depth.__all__)


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
    def from_module(cls, module, name, resolve):
        return cls(module.weight.shape[1], module.weight.shape[0], name, resolve(name), template=module)


def test_a_user_registered_type_scaffolds_merges_and_round_trips(tmp_path):
    entry = register_layer_type(LayerType(Affine, ScaffoldAffine, linear=True))
    try:
        assert LAYER_TYPES[Affine] is entry and layer_type(Affine(3, 2)) is entry
        torch.manual_seed(0)
        model = scaffold(nn.Sequential(Affine(5, 4), nn.Tanh(), nn.Linear(4, 2)), ScaffoldConfig(r=2, trainable="2"))
        assert [n for n, _ in scaffold_layers(model)] == ["0"]  # all-linear took it, left the trained output out
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


def test_a_container_is_declared_in_its_entry_and_a_wrong_declaration_is_refused():
    """is_container reads the entry's ``container``: nn.MultiheadAttention's scaffold holds two layers, a recurrent
    one a layer per gate matrix, every other registered type is one weight; an entry declaring the other kind than
    its layer class is refused."""
    assert [k for k, e in LAYER_TYPES.items() if e.container] == [nn.MultiheadAttention, nn.RNN, nn.GRU, nn.LSTM]
    assert is_container(nn.MultiheadAttention(4, 2)) and not is_container(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Affine: container=True but ScaffoldAffine is one ScaffoldLayer"):
        register_layer_type(LayerType(Affine, ScaffoldAffine, container=True))
    with pytest.raises(ValueError, match="container=False but ScaffoldMultiheadAttention is no ScaffoldLayer"):
        register_layer_type(LayerType(Affine, ScaffoldMultiheadAttention))
    assert Affine not in LAYER_TYPES


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


def test_a_layer_type_written_for_the_old_config_argument_gets_a_clear_error():
    """from_module used to take the ScaffoldConfig; it takes resolve(layer_name) -> LayerSettings now."""
    class Old(ScaffoldLinear):
        @classmethod
        def from_module(cls, module, name, config):
            return cls(module.in_features, module.out_features, name, config.r, template=module)

    class Dense(nn.Linear):
        pass

    register_layer_type(LayerType(Dense, Old, linear=True))
    try:
        with pytest.raises(AttributeError, match=r"receives a resolver, not a ScaffoldConfig: resolve\(layer_name\)"):
            scaffold(nn.Sequential(Dense(3, 3), nn.Linear(3, 2)), ScaffoldConfig(r=1, trainable="1"))
    finally:
        del LAYER_TYPES[Dense]
