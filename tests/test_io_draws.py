"""Regenerated tensors: frozen scaffold tensors are fingerprinted, destabilised schedules reload the draw that
was current, and the architecture is rebuilt through a builder (io knows no model)."""

import ast
import json
from pathlib import Path

import pytest
import torch
from test_io import rewrite, trained_mlp

from reservoir_depth import io
from reservoir_depth.models import build
from reservoir_depth.scaffold import advance, scaffold_layers


# -- frozen scaffold tensors regenerate and are fingerprinted like W_seed ---------------------------
@pytest.mark.parametrize("bias,fingerprinted", [("frozen", True), ("trainable", False), ("none", False)])
def test_frozen_bias_is_fingerprinted_not_stored(tmp_path, bias, fingerprinted):
    io.save(trained_mlp(bias=bias), tmp_path)
    meta = json.loads((tmp_path / io.CONFIG).read_text())
    assert ("layers.0.bias" in meta["fingerprints"]) == fingerprinted
    assert ("layers.0.bias" in meta["tensors"]) == (bias == "trainable")
    assert "layers.0.W_seed" in meta["fingerprints"]


def test_frozen_bias_drawn_differently_is_refused_naming_it(tmp_path):
    """A change in how the frozen bias is drawn (outputs off by 0.2) must not load silently."""
    m = trained_mlp(bias="frozen")
    io.save(m, tmp_path)
    shifted = io.fingerprint(m.layers[0].bias.detach() + 0.2)  # what the writer's draw would have been
    rewrite(tmp_path, lambda meta: meta["fingerprints"].update({"layers.0.bias": shifted}))
    with pytest.raises(ValueError, match=r"adapter.json: key 'fingerprints/layers.0.bias': the regenerated tensor"):
        io.load(tmp_path)


def test_missing_frozen_fingerprint_is_refused(tmp_path):
    io.save(trained_mlp(bias="frozen"), tmp_path)
    rewrite(tmp_path, lambda meta: meta["fingerprints"].pop("layers.1.bias"))
    with pytest.raises(ValueError, match=r"key 'fingerprints': the model regenerates .*'layers.1.bias'"):
        io.load(tmp_path)


# -- destabilised schedules: the draw that was current reloads ------------------------------------
@pytest.mark.parametrize("schedule,k,move,draw", [
    ("epoch", 1, {"epoch": 3}, ["epoch", 3]),
    ("step", 3, {"step": 4}, ["cycle", 1]),
    ("step", 3, {"step": 6}, 0),
])
def test_model_saved_mid_schedule_reloads_its_current_draw(tmp_path, schedule, k, move, draw):
    m = trained_mlp(schedule=schedule, k=k)
    advance(m, **move)
    io.save(m, tmp_path)
    m2 = io.load(tmp_path).eval()
    x = torch.randn(5, 20)
    assert torch.equal(m2(x), m(x))
    assert [layer.draw_id for _, layer in scaffold_layers(m2)] == [draw, draw]
    assert json.loads((tmp_path / io.CONFIG).read_text())["draws"] == {"layers.0": draw, "layers.1": draw}


def test_recorded_draw_is_checked_against_its_fingerprint(tmp_path):
    m = trained_mlp(schedule="epoch")
    advance(m, epoch=2)
    io.save(m, tmp_path)
    rewrite(tmp_path, lambda meta: meta["draws"].update({"layers.1": ["epoch", 5]}))
    with pytest.raises(ValueError, match=r"key 'fingerprints/layers.1.W_seed': the regenerated tensor"):
        io.load(tmp_path)


def test_draw_the_schedule_cannot_produce_is_refused(tmp_path):
    io.save(trained_mlp(), tmp_path)  # static: only draw 0 exists
    rewrite(tmp_path, lambda meta: meta["draws"].update({"layers.0": ["epoch", 2]}))
    with pytest.raises(ValueError, match=r"adapter.json: key 'draws/layers.0': .*\['epoch', 2\]"):
        io.load(tmp_path)


# -- the architecture is rebuilt through a builder ------------------------------------------------
def test_the_model_zoo_does_not_import_io():
    """io imports models.build plainly (the default builder); the zoo must never import io back (no cycle)."""
    for path in Path(io.__file__).parent.joinpath("models").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m in ("io", "..io", "reservoir_depth.io") or m.endswith(".io")], (path, imported)


def test_load_uses_the_builder_it_is_given(tmp_path):
    m = trained_mlp()
    io.save(m, tmp_path)
    calls = []

    def builder(name, **kwargs):
        calls.append((name, kwargs))
        return build(name, **kwargs)

    m2 = io.load(tmp_path, build=builder).eval()
    assert calls == [("mlp", {"d_in": 20, "n_out": 5, "hidden": "tiny"})]
    x = torch.randn(3, 20)
    assert torch.equal(m2(x), m(x))
    assert io.build_architecture is build  # the default: the registry's build


def test_unbuildable_architecture_is_refused_naming_the_key(tmp_path):
    io.save(trained_mlp(), tmp_path)
    rewrite(tmp_path, lambda meta: meta["arch"].update(name="transformer-xl"))
    with pytest.raises(ValueError, match=r"adapter.json: key 'arch': cannot build the recorded architecture: "
                                         r"unknown architecture 'transformer-xl'"):
        io.load(tmp_path)
