import hashlib
import json
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from safetensors.torch import save as to_bytes
from torch import nn

from reservoir_depth import adapter_format, io
from reservoir_depth.distributions import DistributionSpec
from reservoir_depth.models import build
from reservoir_depth.scaffold import ScaffoldConfig, advance, merge, scaffold, scaffold_layers

from helpers import nudge_trainable


def trained_mlp(seed=3, r=4, spec="normal", bias="frozen", **config):
    m = build("mlp", d_in=20, n_out=5, hidden="tiny")
    m = scaffold(m, ScaffoldConfig(target_modules=m.scaffold_targets, trainable=m.scaffold_trainable, r=r,
                                   root_seed=seed, spec=DistributionSpec(spec), bias=bias, **config))
    return nudge_trainable(m, 0.1, seed=1).eval()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rewrite(path, edit=None, tensors=None):
    """Rewrite an adapter folder with its hashes recomputed: a consistent file of another model.

    ``edit(meta)`` changes adapter.json in place; ``tensors`` replaces adapter.safetensors.
    """
    meta = json.loads((path / io.CONFIG).read_text())
    if tensors is not None:
        tensors = {k: t.clone() for k, t in tensors.items()}  # not views of the memory-mapped file we overwrite
        data = to_bytes(tensors)
        (path / io.TENSORS).write_bytes(data)
        meta["tensors"] = {k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                               "sha256": sha(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())}
                           for k, t in tensors.items()}
        meta["tensors_sha256"] = sha(data)
    if edit is not None:
        edit(meta)
    if "config_sha256" in meta:
        meta["config_sha256"] = {k: sha(json.dumps(v, sort_keys=True, separators=(",", ":")).encode())
                                 for k, v in meta.items() if k != "config_sha256"}
    (path / io.CONFIG).write_text(json.dumps(meta, sort_keys=True, indent=1))


@pytest.mark.parametrize("bias", ["frozen", "trainable", "none"])
@pytest.mark.parametrize("spec", ["normal", "orthogonal", "cauchy"])
def test_round_trip_gives_identical_outputs(tmp_path, spec, bias):
    m = trained_mlp(spec=spec, bias=bias)
    io.save(m, tmp_path)
    m2 = io.load(tmp_path).eval()
    x = torch.randn(7, 20)
    assert torch.equal(m(x), m2(x))


def test_file_holds_no_W_seed_and_is_small(tmp_path):
    m = trained_mlp(r=2)
    report = io.save(m, tmp_path)
    names = set(json.loads((tmp_path / io.CONFIG).read_text())["tensors"])
    assert not any("W_seed" in n for n in names)
    assert "layers.0.lora_A" in names and "layers.0.beta" in names and "head.weight" in names
    assert "layers.0.bias" not in names  # frozen scaffold bias regenerates from the seed
    assert report.bytes < report.full_bytes


def test_json_is_sorted_and_records_provenance(tmp_path):
    io.save(trained_mlp(), tmp_path)
    text = (tmp_path / io.CONFIG).read_text()
    meta = json.loads(text)
    assert text == json.dumps(meta, sort_keys=True, indent=1) + "\n"
    assert meta["scaffold"]["root_seed"] == 3 and meta["arch"]["name"] == "mlp"
    assert meta["format"] == io.FORMAT == "reservoir-depth-adapter/2"
    assert set(meta["fingerprints"]) == {"layers.0.W_seed", "layers.1.W_seed", "layers.0.bias", "layers.1.bias"}
    assert meta["draws"] == {"layers.0": 0, "layers.1": 0} and meta["ties"] == {}
    assert meta["versions"] == adapter_format.library_versions()
    assert set(meta["versions"]) == {"numpy", "scipy", "torch", "safetensors", "reservoir_depth"}
    assert meta["tensors_sha256"] == sha((tmp_path / io.TENSORS).read_bytes())


@pytest.mark.parametrize("field,value", [("root_seed", 4), ("spec", {"name": "laplace", "params": {},
                                                                       "scaling": "fan_in", "gain": 1.0, "rho": 0.95})])
def test_changed_seed_or_spec_is_refused_naming_the_layer(tmp_path, field, value):
    io.save(trained_mlp(), tmp_path)
    rewrite(tmp_path, lambda meta: meta["scaffold"].update({field: value}))  # hashes recomputed
    with pytest.raises(ValueError, match=r"adapter.json: key 'fingerprints/layers.0.W_seed': the regenerated"):
        io.load(tmp_path)


def test_fingerprint_tolerates_rounding_but_not_a_new_draw():
    w = torch.randn(64, 32, dtype=torch.float64)
    fp = io.fingerprint(w)
    assert io.fingerprint_mismatch(fp, io.fingerprint(w.float())) is None
    assert io.fingerprint_mismatch(fp, io.fingerprint(w.to(torch.bfloat16))) is not None  # 3 digits is not rounding
    assert io.fingerprint_mismatch(fp, io.fingerprint(torch.randn(64, 32))) is not None
    assert io.fingerprint_mismatch(fp, io.fingerprint(w.T.contiguous())) is not None


def test_strict_names_and_shapes(tmp_path):
    """A consistent file (hashes recomputed) whose tensors do not fit the model is refused, naming them."""
    io.save(trained_mlp(), tmp_path)
    t = load_file(str(tmp_path / io.TENSORS))
    rewrite(tmp_path, tensors=dict(t, **{"layers.0.stray": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"unexpected \['layers.0.stray'\]"):
        io.load(tmp_path)
    t.pop("head.weight")
    rewrite(tmp_path, tensors=t)
    with pytest.raises(ValueError, match=r"missing \['head.weight'\]"):
        io.load(tmp_path)
    t["head.weight"] = torch.zeros(5, 3)
    rewrite(tmp_path, tensors=t)
    with pytest.raises(ValueError, match="adapter.safetensors: key 'head.weight': shape mismatch"):
        io.load(tmp_path)
    t["head.weight"] = torch.zeros(5, 64, dtype=torch.float64)
    rewrite(tmp_path, tensors=t)
    with pytest.raises(ValueError, match="adapter.safetensors: key 'head.weight': dtype mismatch: file float64"):
        io.load(tmp_path)


def test_user_model_needs_model_argument(tmp_path):
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    m = scaffold(net, ScaffoldConfig(target_modules=["0"], trainable=["2"], r=2, root_seed=9)).eval()
    io.save(m, tmp_path)
    with pytest.raises(ValueError, match="pass model="):
        io.load(tmp_path)
    fresh = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    m2 = io.load(tmp_path, model=fresh).eval()
    x = torch.randn(3, 6)
    assert torch.equal(m(x), m2(x))


def test_save_needs_a_scaffolded_model(tmp_path):
    with pytest.raises(ValueError, match="scaffold"):
        io.save(nn.Linear(3, 3), tmp_path)


def test_merged_model_matches_after_load(tmp_path):
    m = trained_mlp()
    io.save(m, tmp_path)
    plain = merge(io.load(tmp_path)).eval()
    x = torch.randn(4, 20)
    assert not list(scaffold_layers(plain))
    torch.testing.assert_close(plain(x), m(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_round_trip_in_the_models_dtype(tmp_path, dtype):
    m = trained_mlp()
    m = scaffold(build("mlp", d_in=20, n_out=5, hidden="tiny").to(dtype),
                 ScaffoldConfig(target_modules=m.scaffold_targets, trainable=m.scaffold_trainable, r=2, root_seed=3))
    with torch.no_grad():
        m.head.weight.add_(0.5)
    io.save(m, tmp_path)
    with pytest.raises(ValueError, match=rf"key '[\w.]+': dtype mismatch: file {str(dtype)[6:]} vs model float32"):
        io.load(tmp_path)  # the recorded architecture builds float32: no silent cast
    m2 = io.load(tmp_path, model=build("mlp", d_in=20, n_out=5, hidden="tiny").to(dtype)).eval()
    x = torch.randn(3, 20, dtype=dtype)
    assert torch.equal(m2(x), m.eval()(x))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), r=st.integers(0, 8), bias=st.sampled_from(["keep", "frozen", "trainable", "none"]),
       schedule=st.sampled_from(["static", "epoch", "step"]), t=st.integers(0, 7))
def test_any_saved_model_loads_to_the_same_outputs(seed, r, bias, schedule, t):
    m = trained_mlp(seed=seed, r=r, bias=bias, schedule=schedule, k=3 if schedule == "step" else 1)
    advance(m, epoch=t, step=t)
    with tempfile.TemporaryDirectory() as d:
        io.save(m, d)
        m2 = io.load(d).eval()
    x = torch.randn(4, 20, generator=torch.Generator().manual_seed(seed % 1000))
    assert torch.equal(m2(x), m(x))
