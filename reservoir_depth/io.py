"""Adapter files: everything but W_seed, which regenerates from (spec, root seed).

A saved model is a folder with two files:

    adapter.safetensors   A, B, beta and the other trained tensors (heads, norms)
    adapter.json          sorted JSON: format, package version, architecture config,
                          scaffold config (spec, root seed, r, alpha, ...), a
                          fingerprint of every regenerated W_seed, tensor shapes

Loading regenerates the backbone, refuses a W_seed whose fingerprint differs
beyond float rounding (naming the layer), and loads tensors strictly. No pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as to_bytes
from torch import nn

from . import __version__
from .distributions import rng_for, torch_rng
from .scaffold import ScaffoldConfig, merge, scaffold, scaffold_layers

FORMAT = "reservoir-depth-adapter/1"
TENSORS, CONFIG = "adapter.safetensors", "adapter.json"
N_PROBES = 8
FINGERPRINT_RTOL = 1e-5


def fingerprint(w: torch.Tensor) -> dict[str, Any]:
    """A sketch of W_seed robust to float rounding: ||W||_F, sum and u_i^T W v_i for fixed unit u_i, v_i.

    Also the sha256 of its float32 bytes (reported, not enforced: it is rounding-sensitive).
    """
    m = w.detach().to("cpu", torch.float64).reshape(w.shape[0], -1).numpy()
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
    """Why two fingerprints differ beyond rounding, or None if they agree."""
    if list(a["shape"]) != list(b["shape"]):
        return f"shape {a['shape']} != {b['shape']}"
    tol = FINGERPRINT_RTOL * max(a["frobenius"], b["frobenius"], 1e-30)
    for key in ("frobenius", "sum"):
        if abs(a[key] - b[key]) > tol * (np.sqrt(np.prod(a["shape"])) if key == "sum" else 1):
            return f"{key} {a[key]!r} != {b[key]!r}"
    diff = np.max(np.abs(np.subtract(a["probes"], b["probes"])))
    if diff > tol:
        return f"random projections differ by {diff:.3g} (tolerance {tol:.3g})"
    return None


def _saved_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state to save: all persistent tensors except a scaffold layer's untrained ones."""
    skip = set()
    for name, layer in scaffold_layers(model):
        for local, _ in layer.named_parameters(recurse=False):
            if local not in layer.trainable:
                skip.add(f"{name}.{local}")
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in skip}


@dataclass(frozen=True)
class SaveReport:
    path: Path
    bytes: int  # adapter.safetensors + adapter.json
    full_bytes: int  # a dense safetensors checkpoint of the merged model

    @property
    def ratio(self) -> float:
        return self.bytes / self.full_bytes

    def __str__(self) -> str:
        return (f"{self.path}: {self.bytes:,} bytes vs {self.full_bytes:,} for a full checkpoint "
                f"({100 * self.ratio:.2f}%)")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(model: nn.Module, path: str | os.PathLike, arch: dict[str, Any] | None = None) -> SaveReport:
    """Write ``path``/adapter.safetensors and ``path``/adapter.json (each atomically)."""
    config: ScaffoldConfig | None = getattr(model, "scaffold_config", None)
    if config is None:
        raise ValueError("model has no scaffold_config: call scaffold(model, config) first")
    arch = arch if arch is not None else getattr(model, "arch_config", None)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = _saved_state(model)
    meta = {
        "format": FORMAT,
        "version": __version__,
        "arch": arch,
        "scaffold": config.to_dict(),
        "fingerprints": {n: fingerprint(m.W_seed) for n, m in scaffold_layers(model)},
        "tensors": {k: list(v.shape) for k, v in state.items()},
    }
    _atomic_write(path / TENSORS, to_bytes(state, metadata={"format": FORMAT}))
    _atomic_write(path / CONFIG, (json.dumps(meta, sort_keys=True, indent=1) + "\n").encode())
    full = len(to_bytes({k: v.detach().cpu().contiguous() for k, v in merge(model).state_dict().items()}))
    return SaveReport(path, (path / TENSORS).stat().st_size + (path / CONFIG).stat().st_size, full)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The adapter.json of a saved model, format-checked."""
    p = Path(path) / CONFIG
    if not p.exists():
        raise FileNotFoundError(f"no {CONFIG} in {path}")
    meta = json.loads(p.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Regenerate the scaffold from the file's spec and seed, check it, load the tensors.

    ``model``: a fresh, unscaffolded instance of the architecture; needed when the
    file records no architecture (a user's own torch model).
    """
    meta = read_config(path)
    if model is None:
        if not meta.get("arch"):
            raise ValueError(f"{path} records no architecture: pass model= (a fresh instance of it)")
        from .models import build

        arch = dict(meta["arch"])
        with torch_rng(0):
            model = build(arch.pop("name"), **arch)
    model = scaffold(model, ScaffoldConfig.from_dict(meta["scaffold"]))
    layers = dict(scaffold_layers(model))
    if set(layers) != set(meta["fingerprints"]):
        raise ValueError(f"scaffold layers differ from the file: model has {sorted(layers)}, "
                         f"file has {sorted(meta['fingerprints'])}")
    for name, layer in layers.items():
        why = fingerprint_mismatch(meta["fingerprints"][name], fingerprint(layer.W_seed))
        if why:
            raise ValueError(f"regenerated W_seed of layer {name!r} does not match the file ({why}): "
                             f"a different seed, spec or package version drew it")
    tensors = load_file(str(Path(path) / TENSORS))
    expected = _saved_state(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: tensor names do not match the model: missing {missing}, unexpected {unexpected}")
    bad = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
           for k in expected if tensors[k].shape != expected[k].shape]
    if bad:
        raise ValueError(f"{path}: shape mismatch: {'; '.join(bad)}")
    model.load_state_dict(tensors, strict=False)
    return model
