"""The adapter file format: what adapter.json and adapter.safetensors hold and every check
of them that needs no model (``read_config``, ``verify``); ``io.py`` saves and loads
models with it. The format itself is described in ``io.py``'s module doc.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import safetensors
import scipy
import torch
from safetensors.torch import load as from_bytes

from ._version import __version__
from .checks import is_number
from .distributions import rng_for
from .scaffold import ScaffoldConfig

FORMAT_NAME, FORMAT_VERSION = "reservoir-depth-adapter", 2
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
TENSORS, CONFIG = "adapter.safetensors", "adapter.json"
N_PROBES = 8
FINGERPRINT_RTOL = 1e-5
KEYS = {  # top-level keys of adapter.json, by format major version
    1: ("arch", "fingerprints", "format", "scaffold", "tensors", "version"),
    2: ("arch", "config_sha256", "draws", "fingerprints", "format", "scaffold", "tensors", "tensors_sha256", "ties",
        "versions"),
}
FORMAT_1_SCAFFOLD = ("alpha", "bias", "k", "r", "root_seed", "rslora", "schedule", "spec", "target_modules", "trainable")
FORMAT_1_SPEC = ("center", "gain", "name", "params", "rho", "scaling")  # what format 1 could write, and nothing else
FINGERPRINT_KEYS = ("frobenius", "probes", "sha256", "shape", "sum")
VERSIONED = ("numpy", "scipy", "torch", "safetensors", "reservoir_depth")

_HEX = re.compile(r"[0-9a-f]{64}")


# -- fingerprints, hashes, versions ---------------------------------------------------------------
def fingerprint(w: torch.Tensor) -> dict[str, Any]:
    """A sketch of W_seed robust to float rounding: ||W||_F, sum and u_i^T W v_i for fixed unit u_i, v_i.

    Also the sha256 of its float32 bytes (reported, not enforced: it is rounding-sensitive).
    """
    m = w.detach().to("cpu", torch.float64).reshape(w.shape[0] if w.dim() else 1, -1).numpy()
    rng = rng_for(0x5EED)
    u = rng.standard_normal((N_PROBES, m.shape[0]))
    v = rng.standard_normal((N_PROBES, m.shape[1]))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    probes = np.einsum("ki,ij,kj->k", u, m, v)
    sha = hashlib.sha256(w.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()
    return {"frobenius": float(np.linalg.norm(m)), "sum": float(m.sum()), "probes": probes.tolist(),
            "shape": list(w.shape), "sha256": sha}


def fingerprint_mismatch(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Why two fingerprints differ beyond rounding, or None if they agree (never None for a non-finite one)."""
    if list(a["shape"]) != list(b["shape"]):
        return f"shape {a['shape']} != {b['shape']}"
    values = [a["frobenius"], b["frobenius"], a["sum"], b["sum"], *a["probes"], *b["probes"]]
    if not all(is_number(v) and math.isfinite(v) for v in values):
        return "a fingerprint value is not a finite number"
    tol = FINGERPRINT_RTOL * max(a["frobenius"], b["frobenius"], 1e-30)
    for key in ("frobenius", "sum"):
        if not abs(a[key] - b[key]) <= tol * (np.sqrt(np.prod(a["shape"])) if key == "sum" else 1):
            return f"{key} {a[key]!r} != {b[key]!r}"
    if len(a["probes"]) != len(b["probes"]):
        return f"{len(a['probes'])} random projections != {len(b['probes'])}"
    diff = np.max(np.abs(np.subtract(a["probes"], b["probes"])))
    if not diff <= tol:
        return f"random projections differ by {diff:.3g} (tolerance {tol:.3g})"
    return None


def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine a file's contents (numpy and scipy: the canonical draw)."""
    return {"numpy": np.__version__, "scipy": scipy.__version__, "torch": torch.__version__,
            "safetensors": safetensors.__version__, "reservoir_depth": __version__}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensor_sha256(t: torch.Tensor) -> str:
    return _sha256(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def config_hashes(meta: Mapping[str, Any]) -> dict[str, str]:
    """config_sha256: the sha256 of the canonical JSON of every top-level key but itself."""
    return {k: _sha256(_canonical(v)) for k, v in sorted(meta.items()) if k != "config_sha256"}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- verifying a file -----------------------------------------------------------------------------
def _error(file: Path, key: str, why: str) -> ValueError:
    return ValueError(f"{file}: key {key!r}: {why}")


def _object(file: Path, key: str, value: Any, required: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``value`` as a JSON object; with ``required``, exactly those keys (key "" is the top level)."""
    if not isinstance(value, dict):
        if not key:
            raise ValueError(f"{file}: expected a JSON object, got {type(value).__name__}")
        raise _error(file, key, f"expected an object, got {type(value).__name__} {value!r:.60}")
    if required is not None:
        missing, unknown = sorted(set(required) - set(value)), sorted(set(value) - set(required))
        prefix = f"{key}/" if key else ""
        if missing:
            raise _error(file, prefix + missing[0], f"missing (required keys: {', '.join(required)})")
        if unknown:
            raise _error(file, prefix + unknown[0], f"unknown key (allowed: {', '.join(required)})")
    return value


_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {  # JSON value kinds: (what is allowed, check)
    "str": ("a string", lambda v: isinstance(v, str)),
    "hex": ("a sha256 hex digest", lambda v: isinstance(v, str) and _HEX.fullmatch(v) is not None),
    "finite": ("a finite number", lambda v: is_number(v) and math.isfinite(v)),
    "size": ("an int >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
}


def _of_type(file: Path, key: str, value: Any, kind: str) -> Any:
    allowed, ok = _KINDS[kind]
    if not ok(value):
        raise _error(file, key, f"expected {allowed}, got {value!r:.60}")
    return value


def _shape(file: Path, key: str, value: Any) -> list[int]:
    if not isinstance(value, list):
        raise _error(file, key, f"expected a list of ints >= 0, got {value!r:.60}")
    return [_of_type(file, f"{key}/{i}", v, "size") for i, v in enumerate(value)]


def _format_version(file: Path, meta: dict[str, Any]) -> int:
    fmt = meta.get("format")
    if not isinstance(fmt, str) or not re.fullmatch(rf"{re.escape(FORMAT_NAME)}/\d+", fmt):
        raise _error(file, "format", f"{fmt!r:.60} is not an adapter format (expected {FORMAT!r})")
    major = int(fmt.rpartition("/")[2])
    if major > FORMAT_VERSION:
        raise _error(file, "format", f"{fmt!r} was written by a newer reservoir-depth; this version "
                                     f"({__version__}) reads formats 1 to {FORMAT_VERSION}: upgrade to load it")
    if major not in KEYS:
        raise _error(file, "format", f"unknown format version {major} (known: {sorted(KEYS)})")
    return major


def _verify_fingerprint(file: Path, key: str, fp: Any) -> None:
    _object(file, key, fp, FINGERPRINT_KEYS)
    for k in ("frobenius", "sum"):
        _of_type(file, f"{key}/{k}", fp[k], "finite")
    if not isinstance(fp["probes"], list) or len(fp["probes"]) != N_PROBES:
        raise _error(file, f"{key}/probes", f"expected a list of {N_PROBES} finite numbers, got {fp['probes']!r:.60}")
    for i, v in enumerate(fp["probes"]):
        _of_type(file, f"{key}/probes/{i}", v, "finite")
    _shape(file, f"{key}/shape", fp["shape"])
    _of_type(file, f"{key}/sha256", fp["sha256"], "hex")


def _verify_scaffold(file: Path, d: Any) -> None:
    """The scaffold config must parse and round-trip exactly (a missing key would silently take a default)."""
    _object(file, "scaffold", d)
    allowed = [f.name for f in fields(ScaffoldConfig)]
    for k in sorted(set(d) - set(allowed)):
        raise _error(file, f"scaffold/{k}", f"unknown key (allowed: {', '.join(allowed)})")
    try:
        again = ScaffoldConfig.from_dict(d).to_dict()
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise _error(file, "scaffold", f"not a valid scaffold config: {e}") from None
    for k in sorted(set(d) | set(again)):
        if k not in d:
            raise _error(file, f"scaffold/{k}", "missing")
        if k not in again or json.loads(_canonical(again[k])) != d[k]:
            raise _error(file, f"scaffold/{k}", f"{d[k]!r:.60} is not what this config writes "
                                                f"({again.get(k, 'no such key')!r:.60})")


def _verify_draw(file: Path, key: str, draw: Any) -> None:
    if isinstance(draw, int) and not isinstance(draw, bool) and draw == 0:
        return
    if not (isinstance(draw, list) and len(draw) == 2 and isinstance(draw[0], str)
            and isinstance(draw[1], int) and not isinstance(draw[1], bool)):
        raise _error(file, key, f"expected 0 or [schedule, index], got {draw!r:.60}")


def _relabelled(file: Path, key: str) -> ValueError:
    return _error(file, key, "a format-2 field in a file labelled format 1: format 1 (reservoir-depth 0.1.0) "
                             "carries no hashes, so a file is read as format 1 only as that version wrote it; "
                             "this one was relabelled and is refused (reservoir-depth writes format 2 only)")


def _verify_format_1(file: Path, meta: dict[str, Any]) -> None:
    """A file labelled format 1 carries nothing format 1 did not write (a relabelled format-2 file would
    switch every hash check off)."""
    for k in sorted(set(meta) & (set(KEYS[2]) - set(KEYS[1]))):
        raise _relabelled(file, k)
    scaffold = meta.get("scaffold")
    if isinstance(scaffold, dict):
        for k in sorted(set(scaffold) - set(FORMAT_1_SCAFFOLD)):
            raise _relabelled(file, f"scaffold/{k}")
        if isinstance(scaffold.get("spec"), dict):
            for k in sorted(set(scaffold["spec"]) - set(FORMAT_1_SPEC)):
                raise _relabelled(file, f"scaffold/spec/{k}")


def _verify_config(file: Path, meta: Any) -> int:
    """Every check of adapter.json that needs no model: keys, types, finite fingerprints, hashes. Returns the major."""
    _object(file, "", meta)
    major = _format_version(file, meta)
    if major == 1:
        _verify_format_1(file, meta)
    _object(file, "", meta, KEYS[major])
    if meta["arch"] is not None:
        _of_type(file, "arch/name", _object(file, "arch", meta["arch"]).get("name"), "str")
    _verify_scaffold(file, meta["scaffold"])
    for name, fp in _object(file, "fingerprints", meta["fingerprints"]).items():
        _verify_fingerprint(file, f"fingerprints/{name}", fp)
    for name, entry in _object(file, "tensors", meta["tensors"]).items():
        if major == 1:
            _shape(file, f"tensors/{name}", entry)
        else:
            _object(file, f"tensors/{name}", entry, ("dtype", "sha256", "shape"))
            _shape(file, f"tensors/{name}/shape", entry["shape"])
            _of_type(file, f"tensors/{name}/sha256", entry["sha256"], "hex")
            if not isinstance(getattr(torch, str(entry["dtype"]), None), torch.dtype):
                raise _error(file, f"tensors/{name}/dtype", f"unknown dtype {entry['dtype']!r:.60}")
    if major == 1:
        _of_type(file, "version", meta["version"], "str")
        return major
    for k, v in _object(file, "versions", meta["versions"], VERSIONED).items():
        _of_type(file, f"versions/{k}", v, "str")
    for layer, draw in _object(file, "draws", meta["draws"]).items():
        _verify_draw(file, f"draws/{layer}", draw)
    for alias, target in _object(file, "ties", meta["ties"]).items():
        if target not in meta["tensors"] or alias in meta["tensors"]:
            raise _error(file, f"ties/{alias}", f"must name a stored tensor ({target!r:.60} is not one) and not "
                                                f"be one itself")
    _of_type(file, "tensors_sha256", meta["tensors_sha256"], "hex")
    hashed = tuple(k for k in KEYS[major] if k != "config_sha256")
    recorded = _object(file, "config_sha256", meta["config_sha256"], hashed)
    for k, sha in sorted(config_hashes(meta).items()):
        if recorded[k] != sha:
            raise _error(file, k, "content does not match its sha256 in config_sha256: the file was edited or "
                                  "damaged after it was written")
    return major


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        dup = next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))
        raise ValueError(f"key {dup!r} appears twice")
    return d


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The adapter.json of a saved model, verified (see ``verify``; no tensors read)."""
    file = Path(path) / CONFIG
    if not file.exists():
        raise FileNotFoundError(f"no {CONFIG} in {path}")
    try:
        meta = json.loads(file.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicates)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, duplicate keys
        raise ValueError(f"{file}: not a valid adapter JSON (truncated or damaged): {e}") from None
    _verify_config(file, meta)
    return meta


def _header_format(data: bytes) -> str | None:
    """The format a safetensors file's own header records (save writes it there too), or None."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        written = json.loads(data[8:8 + n]).get("__metadata__", {}).get("format")
    except (struct.error, ValueError, AttributeError):  # a damaged header: _verify_tensors says so
        return None
    return written if isinstance(written, str) else None


def _verify_tensors(file: Path, data: bytes, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """adapter.safetensors against adapter.json: hashes (format 2), names, shapes, dtypes, finite values."""
    written = _header_format(data)  # format 2's header is covered by tensors_sha256; format 1 has only this
    if meta["format"] == f"{FORMAT_NAME}/1" and written is not None and written != meta["format"]:
        raise _error(file, "format", f"the tensors were written as {written!r} but {CONFIG} says "
                                     f"{meta['format']!r}: the label was changed")
    damaged = "tensors_sha256" in meta and _sha256(data) != meta["tensors_sha256"]
    try:
        tensors = from_bytes(data)
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise ValueError(f"{file}: not a readable safetensors file{' (sha256 differs from the JSON)' * damaged}: "
                         f"{e}") from None
    recorded = meta["tensors"]
    missing, unexpected = sorted(set(recorded) - set(tensors)), sorted(set(tensors) - set(recorded))
    if missing or unexpected:
        raise ValueError(f"{file}: tensor names differ from {CONFIG}: missing {missing}, unexpected {unexpected}")
    for name, t in sorted(tensors.items()):
        entry = recorded[name] if isinstance(recorded[name], dict) else {"shape": recorded[name]}
        if list(t.shape) != entry["shape"]:
            raise _error(file, name, f"shape {list(t.shape)} differs from {entry['shape']} in {CONFIG}")
        if "dtype" in entry and _dtype_name(t.dtype) != entry["dtype"]:
            raise _error(file, name, f"dtype {_dtype_name(t.dtype)} differs from {entry['dtype']} in {CONFIG}")
        if "sha256" in entry and _tensor_sha256(t) != entry["sha256"]:
            raise _error(file, name, f"data do not match their sha256 in {CONFIG}: the file is damaged")
    if damaged:
        raise _error(file, "tensors_sha256", f"the file does not match its sha256 in {CONFIG} although every "
                                             "tensor does: its header was changed")
    for name, t in sorted(tensors.items()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _error(file, name, f"{int((~torch.isfinite(t)).sum())} non-finite values (NaN or inf)")
    return tensors


def verify(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter.json, tensors) of a saved model after every check that needs no model.

    Raises ValueError naming the file and the key for anything it cannot vouch for.
    """
    meta = read_config(path)
    file = Path(path) / TENSORS
    if not file.exists():
        raise FileNotFoundError(f"no {TENSORS} in {path}")
    return meta, _verify_tensors(file, file.read_bytes(), meta)
