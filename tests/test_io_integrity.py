"""Adapter files that cannot be vouched for are refused, naming the file and the key."""

import json
import math
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from safetensors.torch import save as to_bytes
from test_io import rewrite, trained_mlp

from reservoir_depth import adapter_format, cli, io

V1 = Path(__file__).parent / "data" / "adapter_v1"  # written by reservoir-depth 0.1.0 (format 1), never rewritten
KEYS_1 = ("arch", "fingerprints", "format", "scaffold", "tensors", "version")
KEYS_2 = ("arch", "config_sha256", "draws", "fingerprints", "format", "scaffold", "tensors", "tensors_sha256", "ties",
          "versions")


@pytest.fixture
def saved(tmp_path):
    io.save(trained_mlp(), tmp_path)
    return tmp_path


@pytest.fixture
def v1(tmp_path):
    shutil.copytree(V1, tmp_path / "v1")
    return tmp_path / "v1"


def meta_of(path):
    return json.loads((path / io.CONFIG).read_text())


def write_meta(path, meta):
    (path / io.CONFIG).write_text(json.dumps(meta, sort_keys=True, indent=1))


def tensor_span(path, name):
    """(start, end) byte offsets of one tensor's data in a safetensors file."""
    raw = (path / io.TENSORS).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    start, end = json.loads(raw[8:8 + n])[name]["data_offsets"]
    return 8 + n + start, 8 + n + end


# -- item 6: fingerprints must be finite numbers ---------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "2.5", None, True])
def test_non_finite_or_non_number_fingerprint_is_refused(saved, bad):
    """A NaN fingerprint switched the check off: with root_seed edited, the wrong backbone loaded silently."""
    def edit(meta):
        meta["scaffold"]["root_seed"] = 4
        meta["fingerprints"]["layers.0.W_seed"]["frobenius"] = bad
    rewrite(saved, edit)
    with pytest.raises(ValueError, match=r"adapter.json: key 'fingerprints/layers.0.W_seed/frobenius': "
                                         r"expected a finite number"):
        io.load(saved)


def test_nan_probe_in_a_format_1_file_is_refused(v1):
    meta = meta_of(v1)
    meta["scaffold"]["root_seed"] = 12
    meta["fingerprints"]["layers.0"]["probes"][3] = math.nan
    write_meta(v1, meta)
    with pytest.raises(ValueError, match=r"key 'fingerprints/layers.0/probes/3': expected a finite number"):
        io.load(v1)


def test_fingerprint_mismatch_is_never_none_for_non_finite_values():
    fp = io.fingerprint(torch.randn(8, 4))
    for key in ("frobenius", "sum"):
        for bad in (math.nan, math.inf):
            assert io.fingerprint_mismatch({**fp, key: bad}, fp) is not None
            assert io.fingerprint_mismatch(fp, {**fp, key: bad}) is not None
    assert io.fingerprint_mismatch({**fp, "probes": [math.nan] * adapter_format.N_PROBES}, fp) is not None


# -- item 7: content hashes of the tensors and the config; finite tensors --------------------------
def test_flipped_byte_in_tensor_data_is_refused_naming_the_tensor(saved):
    start, _ = tensor_span(saved, "head.weight")
    raw = bytearray((saved / io.TENSORS).read_bytes())
    raw[start + 5] ^= 0x01  # a low mantissa bit: a finite value, still a float
    (saved / io.TENSORS).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"adapter.safetensors: key 'head.weight': data do not match their sha256"):
        io.load(saved)


def test_changed_safetensors_header_is_refused(saved):
    tensors = {k: t.clone() for k, t in load_file(str(saved / io.TENSORS)).items()}
    (saved / io.TENSORS).write_bytes(to_bytes(tensors, metadata={"format": "something else"}))
    with pytest.raises(ValueError, match=r"adapter.safetensors: key 'tensors_sha256': .*header was changed"):
        io.load(saved)


@pytest.fixture(scope="module")
def saved_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved")
    io.save(trained_mlp(r=1), path)
    return (path / io.TENSORS).read_bytes(), (path / io.CONFIG).read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_byte_in_the_tensor_file_is_refused(saved_bytes, data):
    tensors, config = saved_bytes
    i = data.draw(st.integers(0, len(tensors) - 1), label="byte")
    flip = data.draw(st.integers(1, 255), label="xor")
    damaged = bytearray(tensors)
    damaged[i] ^= flip
    with tempfile.TemporaryDirectory() as d:
        Path(d, io.TENSORS).write_bytes(bytes(damaged))
        Path(d, io.CONFIG).write_bytes(config)
        with pytest.raises(ValueError, match=io.TENSORS):
            io.load(d)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_byte_in_the_json_is_refused_or_changes_nothing(saved_bytes, data):
    """Only a flip that leaves the parsed JSON equal (whitespace) may load; everything else is refused."""
    tensors, config = saved_bytes
    i = data.draw(st.integers(0, len(config) - 1), label="byte")
    flip = data.draw(st.integers(1, 255), label="xor")
    damaged = bytearray(config)
    damaged[i] ^= flip
    with tempfile.TemporaryDirectory() as d:
        Path(d, io.TENSORS).write_bytes(tensors)
        Path(d, io.CONFIG).write_bytes(bytes(damaged))
        try:
            meta = adapter_format.read_config(d)
        except ValueError as e:
            assert io.CONFIG in str(e)
        else:
            assert meta == json.loads(config)


@pytest.mark.parametrize("key,value", [("alpha", 8.0), ("rslora", True), ("bias", "trainable"), ("r", 2),
                                       ("root_seed", 4)])
def test_edited_config_is_refused_naming_the_key(saved, key, value):
    meta = meta_of(saved)
    meta["scaffold"][key] = value
    write_meta(saved, meta)
    with pytest.raises(ValueError, match=r"adapter.json: key 'scaffold': content does not match its sha256"):
        io.load(saved)


def test_edited_fingerprint_or_tensor_list_is_refused_naming_the_key(saved):
    meta = meta_of(saved)
    meta["fingerprints"]["layers.1.bias"]["sum"] += 0.5
    write_meta(saved, meta)
    with pytest.raises(ValueError, match=r"key 'fingerprints': content does not match"):
        io.load(saved)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_tensor_is_refused_by_name(saved, bad):
    """Even in a file whose hashes agree (written by hand), NaN or inf tensors are refused."""
    tensors = load_file(str(saved / io.TENSORS))
    tensors["layers.1.lora_B"][3, 1] = bad
    rewrite(saved, tensors=tensors)
    with pytest.raises(ValueError, match=r"adapter.safetensors: key 'layers.1.lora_B': 1 non-finite values"):
        io.load(saved)


def test_save_refuses_non_finite_tensors(tmp_path):
    m = trained_mlp()
    with torch.no_grad():
        m.head.weight[0, 0] = math.nan
    with pytest.raises(ValueError, match="'head.weight' holds 1 non-finite"):
        io.save(m, tmp_path)
    assert not (tmp_path / io.CONFIG).exists()


# -- item 9: format version; damaged JSON -----------------------------------------------------------
def test_newer_major_format_is_refused_with_a_clear_message(saved):
    rewrite(saved, lambda meta: meta.update(format="reservoir-depth-adapter/3"))
    with pytest.raises(ValueError, match=r"key 'format': 'reservoir-depth-adapter/3' was written by a newer "
                                         r"reservoir-depth.*reads formats 1 to 2: upgrade"):
        io.load(saved)


@pytest.mark.parametrize("fmt", ["reservoir-depth-adapter/0", "reservoir-depth-adapter/2.x", "peft", 2, None])
def test_unknown_format_is_refused(saved, fmt):
    rewrite(saved, lambda meta: meta.update(format=fmt))
    with pytest.raises(ValueError, match=r"adapter.json: key 'format': "):
        io.load(saved)


@pytest.mark.parametrize("key", KEYS_2)
def test_missing_key_is_named(saved, key):
    meta = meta_of(saved)
    del meta[key]
    write_meta(saved, meta)
    with pytest.raises(ValueError, match=rf"adapter.json: key '{key}': (missing|.* is not an adapter format)"):
        io.load(saved)


@pytest.mark.parametrize("where,key", [((), "comment"), (("scaffold",), "alpah"), (("versions",), "pandas"),
                                       (("fingerprints", "layers.0.W_seed"), "mean")])
def test_unknown_key_is_named(saved, where, key):
    meta = meta_of(saved)
    d = meta
    for k in where:
        d = d[k]
    d[key] = 1
    write_meta(saved, meta)
    with pytest.raises(ValueError, match=rf"adapter.json: key '{'/'.join((*where, key))}': unknown key"):
        io.load(saved)


def test_missing_scaffold_key_is_named_not_defaulted(saved):
    rewrite(saved, lambda meta: meta["scaffold"].pop("alpha"))  # hashes agree: only the schema can tell
    with pytest.raises(ValueError, match=r"key 'scaffold/alpha': missing"):
        io.load(saved)


@pytest.mark.parametrize("edit,key", [
    (lambda m: m.update(tensors=[]), "tensors"),
    (lambda m: m["scaffold"].update(r="4"), "scaffold"),
    (lambda m: m["fingerprints"]["layers.0.W_seed"].update(shape="8x6"), "fingerprints/layers.0.W_seed/shape"),
    (lambda m: m["tensors"]["head.weight"].update(dtype="float128"), "tensors/head.weight/dtype"),
    (lambda m: m["draws"].update({"layers.0": "epoch 3"}), "draws/layers.0"),
    (lambda m: m["ties"].update({"head.bias": "nothing"}), "ties/head.bias"),
    (lambda m: m.update(arch={"hidden": "tiny"}), "arch/name"),
    (lambda m: m["versions"].update(numpy=2), "versions/numpy"),
    (lambda m: m.update(tensors_sha256="abc"), "tensors_sha256"),
])
def test_wrong_type_is_named(saved, edit, key):
    rewrite(saved, edit)
    with pytest.raises(ValueError, match=rf"adapter.json: key '{key}': "):
        io.load(saved)


@pytest.mark.parametrize("text", ["", "{", '{"format": "reservoir-depth-adapter/2", ', "[]", '"adapter"',
                                  '{"format": 1, "format": 2}'])
def test_truncated_or_malformed_json_is_refused_naming_the_file(saved, text):
    (saved / io.CONFIG).write_text(text)
    with pytest.raises(ValueError, match=r"adapter.json: "):
        io.load(saved)


def test_truncated_json_from_a_real_file(saved):
    text = (saved / io.CONFIG).read_text()
    (saved / io.CONFIG).write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"adapter.json: not a valid adapter JSON \(truncated or damaged\)"):
        io.load(saved)


def test_cli_prints_a_damaged_file_as_one_line(saved, capsys):
    text = (saved / io.CONFIG).read_text()
    (saved / io.CONFIG).write_text(text[:100])
    assert cli.main(["spectra", "--data", "digits", "--adapter", str(saved)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("reservoir-depth: error: ") and str(saved) in err


# -- format 1 files still load ----------------------------------------------------------------------
def test_format_1_file_loads_with_its_outputs(v1):
    expected = json.loads((V1 / "expected.json").read_text())
    m = io.load(v1).eval()
    torch.testing.assert_close(m(torch.tensor(expected["x"])), torch.tensor(expected["y"]), rtol=1e-5, atol=1e-6)
    assert meta_of(v1)["format"] == "reservoir-depth-adapter/1"


def test_format_1_file_with_another_seed_is_refused_naming_the_layer(v1):
    meta = meta_of(v1)
    meta["scaffold"]["root_seed"] = 12
    write_meta(v1, meta)
    with pytest.raises(ValueError, match=r"adapter.json: key 'fingerprints/layers.0': the regenerated tensor"):
        io.load(v1)


@pytest.mark.parametrize("key", KEYS_1)
def test_format_1_file_with_a_missing_key_is_refused(v1, key):
    meta = meta_of(v1)
    del meta[key]
    write_meta(v1, meta)
    with pytest.raises(ValueError, match=rf"adapter.json: key '{key}': "):
        io.load(v1)


def test_format_1_file_with_a_nan_tensor_is_refused(v1):
    tensors = {k: t.clone() for k, t in load_file(str(v1 / io.TENSORS)).items()}
    tensors["head.bias"][0] = math.nan
    (v1 / io.TENSORS).write_bytes(to_bytes(tensors))
    with pytest.raises(ValueError, match=r"adapter.safetensors: key 'head.bias': 1 non-finite"):
        io.load(v1)


# -- item 11: library versions ------------------------------------------------------------------------
def test_fingerprint_error_names_library_versions_that_differ(saved):
    def edit(meta):
        meta["scaffold"]["root_seed"] = 4  # stands in for a draw that changed with numpy
        meta["versions"]["numpy"] = "1.0.0"
    rewrite(saved, edit)
    with pytest.raises(ValueError, match=rf"written with numpy 1.0.0 \(running {io.library_versions()['numpy']}\)"):
        io.load(saved)


def test_fingerprint_error_does_not_blame_equal_versions(saved):
    rewrite(saved, lambda meta: meta["scaffold"].update(root_seed=4))
    with pytest.raises(ValueError) as e:
        io.load(saved)
    assert "written with" not in str(e.value) and "fingerprints/layers.0.W_seed" in str(e.value)
