"""Adapter files: everything but W_seed and the other frozen scaffold tensors, which
regenerate from (spec, root seed).

A saved model is a folder with two files:

    adapter.safetensors   A, B, beta and the other trained or non-scaffold tensors
                          (heads, norms, embeddings); a tensor shared by several
                          names (tied weights) is stored once
    adapter.json          sorted JSON, format ``reservoir-depth-adapter/2``:

      format          "reservoir-depth-adapter/<major>"; a newer major is refused
      versions        {numpy, scipy, torch, safetensors, reservoir_depth} that wrote it
                      (numpy and scipy determine the canonical draw of W_seed)
      arch            the architecture config (``build(name, **kwargs)``), or null for
                      a user's own model (then ``load(path, model=...)``)
      scaffold        ScaffoldConfig.to_dict(): spec, root seed, r, alpha, rslora, bias, ...
      draws           {layer: draw id}: which W_seed each layer used when saved
                      (0 = canonical, ["epoch", e], ["cycle", i]: destabilised schedules)
      fingerprints    {tensor: sketch} of every regenerated tensor ("<layer>.W_seed" and the
                      frozen ones, e.g. "<layer>.bias"): Frobenius norm, sum, N_PROBES random
                      projections u^T W v, shape, sha256 of its float32 bytes (informative)
      tensors         {name: {shape, dtype, sha256}} of every stored tensor
      ties            {alias: stored name} of tensors shared by several names
      tensors_sha256  sha256 of the adapter.safetensors bytes
      config_sha256   {key: sha256} of the canonical JSON (sorted keys, no spaces) of every
                      other top-level key, so an edit names the key it touched

Loading (``verify`` then ``load``) refuses anything it cannot vouch for, naming the
file and the key: a damaged or edited JSON (missing, unknown, wrongly typed or
non-finite values; a section that does not match its hash), a damaged or non-finite
tensor, a regenerated tensor whose fingerprint differs beyond float rounding (noting
library versions that differ from the writer's), a model whose tensor names, shapes,
dtypes or ties differ from the file's. Format 1 files (written by reservoir-depth
0.1.0: no hashes, draws, frozen-tensor fingerprints, ties or versions) still load,
with the checks they support, but only as written: a file labelled format 1 that carries
anything of format 2 is refused (save writes format 2 only). The hashes are integrity,
not authentication: whoever can edit a file can recompute them. No pickle.

This module saves and loads models; ``adapter_format.py`` owns the format's constants,
fingerprints, hashes and the checks that need no model (its names are re-exported here).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import save as to_bytes
from torch import nn

from .adapter_format import (CONFIG, FORMAT, FORMAT_NAME, TENSORS, VERSIONED, _dtype_name, _error, _sha256,
                             _tensor_sha256, _verify_config, config_hashes, fingerprint, fingerprint_mismatch,
                             library_versions, verify)
from .distributions import torch_rng
from .models import build as build_architecture
from .scaffold import ScaffoldConfig, merge, scaffold, scaffold_layers

Builder = Callable[..., nn.Module]


# -- what a model saves ---------------------------------------------------------------------------
def _regenerated(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a load regenerates instead of reading: each layer's W_seed and frozen tensors."""
    out = {}
    for name, layer in scaffold_layers(model):
        out[f"{name}.W_seed"] = layer.canonical_seed()  # the draw in the parameter dtype, however it is held
        out.update({f"{name}.{local}": getattr(layer, local) for local in layer.frozen()})
    return out


def _ties(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """{alias: first name} of tensors that are one tensor under several names (tied weights).

    Tensors that overlap in memory without being the same view cannot be stored: refused.
    """
    first: dict[tuple, str] = {}
    storage: dict[int, str] = {}
    ties = {}
    for name, t in state.items():
        if t.numel() == 0:
            continue
        ptr = t.untyped_storage().data_ptr()
        view = (ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in first:
            ties[name] = first[view]
        elif ptr in storage:
            raise ValueError(f"tensors {storage[ptr]!r} and {name!r} share memory without being the same tensor: "
                             f"an adapter file can store tied tensors only when they are identical")
        else:
            first[view], storage[ptr] = name, name
    return ties


def _saved_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to store, ties): every persistent tensor except the regenerated ones, each shared one once."""
    skip = set(_regenerated(model))
    state = {k: v for k, v in model.state_dict().items() if k not in skip}
    ties = _ties(state)
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in ties}, ties


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


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file in the same folder and a rename; the file gets the mode
    a plain ``open(path, "wb")`` would give it (0o666 less the umask), not mkstemp's 0o600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before any work is done, a folder ``save`` could not write (a path under a regular file, a
    regular file, a folder it may not write in): a ValueError naming the path and the reason. It creates
    the folder and a temporary file in it, and removes both; nothing is left behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"cannot save to {path}: it is a file, and an adapter file is a folder "
                         f"(adapter.safetensors + adapter.json); choose a folder path")
    created = [p for p in (path, *path.parents) if not p.exists()]  # innermost first
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ValueError(f"cannot save to {path}: {above} is a file, not a folder; choose a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(f"cannot save to {path}: {e.strerror or e}"
                         f"{f' ({e.filename})' if e.filename and str(e.filename) != str(path) else ''}; "
                         f"choose a folder that can be created and written") from None
    finally:
        for p in created:
            try:
                p.rmdir()
            except OSError:
                break


def save(model: nn.Module, path: str | os.PathLike, arch: dict[str, Any] | None = None) -> SaveReport:
    """Write ``path``/adapter.safetensors and ``path``/adapter.json (each atomically; format in the module doc).

    Refuses a model with a non-finite tensor (it could not be loaded back), naming it.
    """
    config: ScaffoldConfig | None = getattr(model, "scaffold_config", None)
    if config is None:
        raise ValueError("model has no scaffold_config: call scaffold(model, config) first")
    arch = arch if arch is not None else getattr(model, "arch_config", None)
    path = Path(path)
    state, ties = _saved_state(model)
    regenerated = _regenerated(model)
    for name, t in {**state, **regenerated}.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"cannot save: tensor {name!r} holds {int((~torch.isfinite(t)).sum())} non-finite values")
    data = to_bytes(state, metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "versions": library_versions(),
        "arch": arch,
        "scaffold": config.to_dict(),
        "draws": {n: layer.draw_id for n, layer in scaffold_layers(model)},
        "fingerprints": {n: fingerprint(t) for n, t in regenerated.items()},
        "tensors": {k: {"shape": list(v.shape), "dtype": _dtype_name(v.dtype), "sha256": _tensor_sha256(v)}
                    for k, v in state.items()},
        "ties": ties,
        "tensors_sha256": _sha256(data),
    }
    meta["config_sha256"] = config_hashes(meta)
    text = json.dumps(meta, sort_keys=True, indent=1, allow_nan=False) + "\n"
    _verify_config(path / CONFIG, json.loads(text))  # never write what load would refuse
    merged, _ = _saved_state(merge(model))  # everything that can fail runs before the first byte is written
    full, encoded = len(to_bytes(merged)), text.encode()
    path.mkdir(parents=True, exist_ok=True)
    _atomic_write(path / TENSORS, data)
    _atomic_write(path / CONFIG, encoded)
    return SaveReport(path, len(data) + len(encoded), full)


# -- loading --------------------------------------------------------------------------------------
def _versions_note(meta: dict[str, Any]) -> str:
    written = meta.get("versions") or {"reservoir_depth": meta.get("version")}
    running = library_versions()
    differ = [f"{k} {written[k]} (running {running[k]})" for k in VERSIONED
              if k in written and written[k] != running[k]]
    return (f"; the file was written with {', '.join(differ)}: the draw may have changed with them"
            if differ else "")


def _check_model(path: Path, meta: dict[str, Any], model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """The model against the file: scaffold layers, stored tensors (ties, names, shapes, dtypes), then the
    regenerated tensors against their fingerprints, after moving each layer to its recorded draw."""
    config_file = path / CONFIG
    layers = dict(scaffold_layers(model))
    draws = meta.get("draws", {name: 0 for name in layers})
    if set(layers) != set(draws):
        raise _error(config_file, "draws", f"scaffold layers differ from the file: model has {sorted(layers)}, "
                                           f"file has {sorted(draws)}")
    expected, ties = _saved_state(model)
    if ties != meta.get("ties", {}):
        raise _error(config_file, "ties", f"the model ties {ties}, the file records {meta.get('ties', {})}")
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path / TENSORS}: tensor names do not match the model: missing {missing}, "
                         f"unexpected {unexpected}")
    for k, t in expected.items():
        if tensors[k].shape != t.shape:
            raise _error(path / TENSORS, k, f"shape mismatch: file {tuple(tensors[k].shape)} vs model {tuple(t.shape)}")
        if tensors[k].dtype != t.dtype:
            raise _error(path / TENSORS, k, f"dtype mismatch: file {_dtype_name(tensors[k].dtype)} vs model "
                                            f"{_dtype_name(t.dtype)} (pass model= built in the file's dtype)")
    for name, draw in draws.items():
        try:
            if draw != 0:  # a fresh layer holds draw 0
                layers[name].set_draw(draw)
        except (TypeError, ValueError) as e:
            raise _error(config_file, f"draws/{name}", str(e)) from None
    regenerated, recorded = _regenerated(model), meta["fingerprints"]
    if meta["format"] == f"{FORMAT_NAME}/1":  # format 1 fingerprinted W_seed only, keyed by layer
        regenerated = {k.removesuffix(".W_seed"): v for k, v in regenerated.items() if k.endswith(".W_seed")}
    if set(regenerated) != set(recorded):
        raise _error(config_file, "fingerprints", f"the model regenerates {sorted(regenerated)}, "
                                                  f"the file fingerprints {sorted(recorded)}")
    for name, t in regenerated.items():
        why = fingerprint_mismatch(recorded[name], fingerprint(t))
        if why:
            raise _error(config_file, f"fingerprints/{name}", f"the regenerated tensor does not match the file "
                                                              f"({why}): a different seed, spec or draw produced it"
                                                              f"{_versions_note(meta)}")


def load(path: str | os.PathLike, model: nn.Module | None = None, build: Builder | None = None) -> nn.Module:
    """Verify the file, regenerate the scaffold from its spec, seed and draws, check it, load the tensors.

    ``model``: a fresh, unscaffolded instance of the architecture; needed when the
    file records no architecture (a user's own torch model). Otherwise the recorded
    ``arch`` is rebuilt with ``build(name, **kwargs)`` (default: the architecture
    registry's, models.build). The model is returned in eval mode (dropout off); call
    ``model.train()`` before training it further.
    """
    path = Path(path)
    meta, tensors = verify(path)
    if model is None:
        if not meta["arch"]:
            raise ValueError(f"{path / CONFIG} records no architecture: pass model= (a fresh instance of it)")
        arch = dict(meta["arch"])
        try:
            with torch_rng(0):
                model = (build or build_architecture)(arch.pop("name"), **arch)
        except (TypeError, ValueError) as e:
            raise _error(path / CONFIG, "arch", f"cannot build the recorded architecture: {e}") from None
    try:
        model = scaffold(model, ScaffoldConfig.from_dict(meta["scaffold"]))
    except (TypeError, ValueError) as e:
        raise _error(path / CONFIG, "scaffold", f"cannot scaffold the model: {e}") from None
    _check_model(path, meta, model, tensors)
    ties = meta.get("ties", {})
    model.load_state_dict({**tensors, **{alias: tensors[name] for alias, name in ties.items()}}, strict=False)
    return model.eval()
