"""A format-2 adapter file relabelled as format 1 (issue 20.15): format 1 has no hashes, so the label
turned every hash check off and an edited alpha loaded with other outputs. A file labelled format 1 may
carry only what format 1 wrote; save writes format 2 only."""

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as from_bytes
from safetensors.torch import save as to_bytes

from test_io import trained_mlp
from reservoir_depth import io

V1 = Path(__file__).parent / "data" / "adapter_v1"


def relabelled(path: Path, keep_header: bool = False, keep_spec_version: bool = False, alpha: float = 32.0):
    """Rewrite a format-2 folder as a format-1 one (keys, tensor entries, W_seed fingerprints by layer,
    the safetensors header), with alpha edited."""
    meta = json.loads((path / io.CONFIG).read_text())
    for k in ("config_sha256", "draws", "ties", "tensors_sha256", "versions"):
        meta.pop(k)
    meta.update(format="reservoir-depth-adapter/1", version="0.1.0")
    meta["tensors"] = {k: v["shape"] for k, v in meta["tensors"].items()}
    meta["fingerprints"] = {k.removesuffix(".W_seed"): v for k, v in meta["fingerprints"].items()
                            if k.endswith(".W_seed")}
    meta["scaffold"]["alpha"] = alpha
    if not keep_spec_version:
        meta["scaffold"]["spec"].pop("version")
    (path / io.CONFIG).write_text(json.dumps(meta, sort_keys=True, indent=1))
    if not keep_header:
        tensors = from_bytes((path / io.TENSORS).read_bytes())
        (path / io.TENSORS).write_bytes(to_bytes(tensors, metadata={"format": "reservoir-depth-adapter/1"}))


def header_format(path: Path) -> str:
    raw = (path / io.TENSORS).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])["__metadata__"]["format"]


@pytest.fixture
def saved(tmp_path):
    io.save(trained_mlp(), tmp_path / "a")
    return tmp_path / "a"


def test_save_writes_format_2_only(saved):
    assert json.loads((saved / io.CONFIG).read_text())["format"] == io.FORMAT == "reservoir-depth-adapter/2"
    assert header_format(saved) == io.FORMAT


def test_a_relabelled_file_keeping_the_tensor_header_is_refused(saved):
    relabelled(saved, keep_header=True, keep_spec_version=False)
    with pytest.raises(ValueError, match=r"adapter.safetensors: key 'format': the tensors were written as "
                                         r"'reservoir-depth-adapter/2' but adapter.json says "
                                         r"'reservoir-depth-adapter/1'"):
        io.load(saved)


def test_a_relabelled_file_keeping_a_format_2_setting_is_refused(saved):
    relabelled(saved, keep_spec_version=True)
    with pytest.raises(ValueError, match=r"adapter.json: key 'scaffold/spec/version': a format-2 field in a "
                                         r"file labelled format 1"):
        io.load(saved)


@pytest.mark.parametrize("key", ["versions", "tensors_sha256", "config_sha256", "draws", "ties"])
def test_a_format_1_label_on_a_file_with_format_2_keys_says_so(saved, key):
    meta = json.loads((saved / io.CONFIG).read_text())
    meta.update(format="reservoir-depth-adapter/1", version="0.1.0")
    (saved / io.CONFIG).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"adapter.json: key '(config_sha256|draws|tensors_sha256|ties|versions)': "
                                         r"a format-2 field in a file labelled format 1"):
        io.load(saved)


def test_a_genuine_format_1_file_still_loads(tmp_path):
    shutil.copytree(V1, tmp_path / "v1")
    assert io.load(tmp_path / "v1") is not None
