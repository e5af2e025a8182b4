"""nn.RNN / nn.GRU / nn.LSTM (reservoir_depth/scaffold/recurrent.py): one scaffold per gate matrix; exact
at init against torch's own module holding the drawn weights; merge, save / load; the spectral-radius rule
on weight_hh through specs; what is refused. (The layer-type invariants run over them in
test_scaffold_layers.py through scaffold_cases.EXAMPLES.)"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from reservoir_depth import io
from reservoir_depth.distributions import DistributionSpec, draw, layer_seed
from reservoir_depth.scaffold import PassedOverWarning, ScaffoldConfig, merge, scaffold, scaffold_layers
from reservoir_depth.scaffold.recurrent import GATES

from scaffold_cases import perturb

CLASSES = {"RNN": nn.RNN, "GRU": nn.GRU, "LSTM": nn.LSTM}


class Seq(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x, hx=None):
        return self.rnn(x, hx)


def _drawn_reference(model: Seq, config: ScaffoldConfig) -> nn.Module:
    """torch's own module holding the documented draws: gate g of weight_ih_l0 is drawn from (spec, root seed,
    'rnn.ih_l0.g'), stacked in torch's gate order; the biases are the scaffold's seeded ones."""
    unit, fresh = model.rnn, None
    fresh = type(unit._template)(unit.input_size, unit.hidden_size, num_layers=unit.num_layers, bias=unit.bias,
                                 batch_first=unit.batch_first, bidirectional=unit.bidirectional).double()
    if isinstance(fresh, nn.RNN):
        fresh.nonlinearity = unit._template.nonlinearity
    gates = GATES[fresh.mode]
    with torch.no_grad():
        for wname in fresh._flat_weights_names:
            w = getattr(fresh, wname)
            if wname.startswith("weight_"):
                names = [f"rnn.{wname.removeprefix('weight_')}" + (f".{g}" if g else "") for g in gates]
                w.copy_(torch.cat([draw(config.spec, (unit.hidden_size, w.shape[1]),
                                        layer_seed(config.root_seed, n, "W_seed"), dtype=torch.float64)
                                   for n in names]))
            else:
                w.copy_(getattr(unit, wname))
    return fresh


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(sorted(CLASSES)), batch_first=st.booleans(), bidirectional=st.booleans(),
       num_layers=st.integers(1, 2), bias=st.booleans(), packed=st.booleans(), state=st.booleans(),
       seed=st.integers(0, 2**16))
def test_at_init_it_is_torchs_module_holding_the_drawn_weights(kind, batch_first, bidirectional, num_layers, bias,
                                                               packed, state, seed):
    rnn = CLASSES[kind](3, 4, num_layers=num_layers, bias=bias, batch_first=batch_first,
                        bidirectional=bidirectional).double()
    config = ScaffoldConfig(target_modules="rnn", r=2, root_seed=seed)
    model = scaffold(Seq(rnn), config)
    reference = _drawn_reference(model, config)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1)
    if packed:
        x = pack_padded_sequence(x, [5, 3], batch_first=batch_first)
    hx = None
    if state:
        h0 = torch.randn(num_layers * (1 + bidirectional), 2, 4, generator=g, dtype=torch.float64)
        hx = (h0, torch.randn(h0.shape, generator=g, dtype=torch.float64)) if kind == "LSTM" else h0
    ours, theirs = model(x, hx), reference(x, hx)
    flat = lambda out: [t.data if hasattr(t, "batch_sizes") else t for t in  # noqa: E731
                        (out[0], *(out[1] if isinstance(out[1], tuple) else (out[1],)))]
    for a, b in zip(flat(ours), flat(theirs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # trained: merge gives the same class, loading strictly, computing the same map
    perturb(model, seed=seed)
    merged = merge(model).rnn
    assert type(merged) is type(rnn)
    type(rnn)(3, 4, num_layers=num_layers, bias=bias, batch_first=batch_first,
              bidirectional=bidirectional).load_state_dict(merged.state_dict(), strict=True)
    for a, b in zip(flat(model(x, hx)), flat(merged(x, hx))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_each_gate_is_its_own_scaffold_and_the_file_round_trips(kind, tmp_path):
    torch.manual_seed(0)
    model = scaffold(Seq(CLASSES[kind](3, 5, bidirectional=True, batch_first=True)),
                     ScaffoldConfig(target_modules="rnn", r=2))
    gates = [g for g in GATES[model.rnn.mode]]
    units = ("ih_l0", "hh_l0", "ih_l0_reverse", "hh_l0_reverse")
    assert [n for n, _ in scaffold_layers(model)] == [f"rnn.{u}" + (f".{g}" if g else "") for u in units for g in gates]
    assert model.rnn.weight_hh_l0.shape == (len(gates) * 5, 5)  # torch's tensors read as the merged ones
    perturb(model)
    x = torch.randn(2, 6, 3)
    io.save(model, tmp_path)
    torch.manual_seed(1)
    loaded = io.load(tmp_path, model=Seq(CLASSES[kind](3, 5, bidirectional=True, batch_first=True)))
    assert torch.equal(loaded(x)[0], model(x)[0])


def test_the_spectral_radius_rule_reaches_weight_hh_through_specs():
    spec = DistributionSpec(name="normal", scaling="spectral_radius", rho=0.9, version=2)
    model = scaffold(Seq(nn.GRU(2, 16)), ScaffoldConfig(target_modules="rnn", r=2, specs={r".*hh_l0\..*": spec}))
    for n, layer in scaffold_layers(model):
        if ".hh_l0." in n:
            radius = float(torch.linalg.eigvals(layer.W_seed.double()).abs().max())
            assert radius == pytest.approx(0.9, rel=1e-5), n
        else:
            assert layer.settings.spec_pattern is None


def test_a_family_may_cap_the_recurrent_rank():
    model = scaffold(Seq(nn.LSTM(1, 8)), ScaffoldConfig(target_modules="rnn", r=4, max_rank={r".*ih_l0\..*": 1}))
    assert {n: l.r for n, l in scaffold_layers(model) if ".ih_l0." in n} == {f"rnn.ih_l0.{g}": 1 for g in "ifgo"}
    with pytest.raises(ValueError, match=r"rank r=4 for layer 'rnn.ih_l0.i' must lie in \[0, min\(d_in, d_out\)\] = \[0, 1\]"):
        scaffold(Seq(nn.LSTM(1, 8)), ScaffoldConfig(target_modules="rnn", r=4))


def test_what_is_not_supported_is_refused_by_name():
    with pytest.raises(ValueError, match=r"layer 'rnn': nn.LSTM with proj_size=2 cannot be scaffolded \(allowed: proj_size=0\)"):
        scaffold(Seq(nn.LSTM(3, 4, proj_size=2)), ScaffoldConfig(target_modules="rnn", r=1))
    with pytest.raises(ValueError, match=r"bias='none' would change the bias structure of GRU\(bias=True\)"):
        scaffold(Seq(nn.GRU(3, 4)), ScaffoldConfig(target_modules="rnn", r=1, bias="none"))


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_all_linear_takes_recurrent_layers(kind):
    """"all-linear" scaffolds each gate of a GRU / LSTM (it once passed them over with no word)."""
    class Forecaster(nn.Module):
        scaffold_head = "readout"

        def __init__(self):
            super().__init__()
            self.rnn, self.readout = CLASSES[kind](2, 6, batch_first=True), nn.Linear(6, 1)

    with warnings.catch_warnings():
        warnings.simplefilter("error", PassedOverWarning)
        model = scaffold(Forecaster(), ScaffoldConfig(r=2, trainable="readout"))
    assert {n.split(".")[0] for n, _ in scaffold_layers(model)} == {"rnn"}
