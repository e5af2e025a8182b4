"""Probes: spectra of what a model's layers see and learn, and of a data set.

``ActivationSpectra`` hooks a model's layers and accumulates the covariance of their
inputs (what each adapter's A sees) or outputs; ``WeightSpectra`` takes the squared
singular values of the adapters s B A or of a weight update Delta W = W_trained - W_init;
``TaskSpectrum`` describes a data set (input PCA, between-class scatter, Cov(X, Y));
``IntrinsicDimension`` wraps scikit-dimension's TwoNN / MLE estimators. Each spectrum is
summarised by the measures of ``spectra.measures``.

Layer types are scaffold's registry (LAYER_TYPES): each declares how its input and output
are read as rows (``scaffold.layer_rows``) and its effective weight (``scaffold.effective_weights``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..checks import Estimator, an_int, in_interval, one_of
from ..scaffold import effective_weights, is_container, layer_rows, layer_type, matches, scaffold_layers
from .measures import DEFAULT_TAUS, Spectrum, StreamingCovariance, _to_numpy

__all__ = ["ActivationSpectra", "DeadUnits", "IntrinsicDimension", "TaskSpectrum", "WeightSpectra", "hooked_pass",
           "select_layers"]


# ----------------------------------------------------------------------------- layer rows


SIDES = ("input", "output")


def _rows(module: nn.Module, t: Any, side: str, name: str) -> torch.Tensor:
    """The activation as (rows, features): by the layer type's declared reader (scaffold.layer_rows:
    conv patches, one-hot token ids, every token / time position a row); for other modules a 4-D
    tensor gives channel rows, anything else one row per leading position."""
    try:
        rows = layer_rows(module, t, side)
    except ValueError as e:
        raise ValueError(f"layer {name!r}: {e}") from None
    if rows is not None:
        return rows
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"layer {name!r}: the {side} is a {type(t).__name__}, not a tensor; "
                        f"choose layers whose {side} is a single tensor")
    if t.ndim == 4:  # (N, C, H, W) -> channel covariance over all N H W positions
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    return t.reshape(-1, t.shape[-1])  # (..., features): every leading position is a row


def _model_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _model_float_dtype(model: nn.Module) -> torch.dtype | None:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def _registered(named: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Modules of a registered layer type, less those inside a container (an nn.MultiheadAttention
    reads its out_proj's weight without calling it)."""
    inside = [n for n, m in named if is_container(m)]
    return [(n, m) for n, m in named if layer_type(m) is not None and not any(n.startswith(c + ".") for c in inside)]


def select_layers(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    """(name, module) of the layers a probe reads: those ``layers`` names / regexes match (peft's rule), by
    default every ScaffoldLayer, or every module of a registered layer type in a model without one."""
    named = [(n, m) for n, m in model.named_modules() if n]
    if layers is None:
        chosen = list(scaffold_layers(model)) or _registered(named)
        if not chosen:
            raise ValueError(f"the model has no ScaffoldLayer and no module of a registered layer type "
                             f"(scaffold.LAYER_TYPES); pass layers=[...] from its modules: {[n for n, _ in named]}")
        return chosen
    if isinstance(layers, str):
        layers = [layers]
    chosen = [(n, m) for n, m in named if matches(n, layers)]
    if not chosen:
        raise ValueError(f"layers {list(layers)} match no module; candidates: {[n for n, _ in named]}")
    return chosen


def hooked_pass(model: nn.Module, X: Any, chosen: list[tuple[str, nn.Module]], side: str,
                on_rows: Any, batch_size: int, device: torch.device) -> None:
    """Run ``model`` in eval mode without gradients over X in batches; ``on_rows(name, rows)`` receives each
    chosen layer's ``side`` as (rows, features) (_rows). Every module's training flag is restored."""
    X = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    dtype = _model_float_dtype(model)
    if X.is_floating_point() and dtype is not None:
        X = X.to(dtype)

    def hook_for(name: str, module: nn.Module):  # hooks return None: they must not replace in/outputs
        def pre_hook(mod: nn.Module, args: tuple) -> None:
            on_rows(name, _rows(module, args[0] if args else None, "input", name))

        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            on_rows(name, _rows(module, out, "output", name))

        return pre_hook if side == "input" else hook

    modes = {m: m.training for m in model.modules()}
    handles = []
    try:
        for name, module in chosen:
            register = module.register_forward_pre_hook if side == "input" else module.register_forward_hook
            handles.append(register(hook_for(name, module)))
        model.eval()
        with torch.no_grad():
            for batch in X.split(batch_size):
                model(batch.to(device))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training


def _frame(spectra: dict[str, Spectrum], taus: Sequence[float], **extra: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for name, s in spectra.items():
        row = {"layer": name, **{k: v[name] for k, v in extra.items()}, **s.summary(taus)}
        rows.append(row)
    return pd.DataFrame(rows)


class ActivationSpectra(Estimator):
    """Covariance spectrum of what each layer sees (side="input": what its A matrix sees) or emits.

    layers: names / regexes (peft rule of ``scaffold.matches``) of modules; default every
        ScaffoldLayer, or, in a model without any, every module of a registered layer type
        (scaffold.LAYER_TYPES) not inside an nn.MultiheadAttention.
    Rows (each layer type's ``rows`` / ``output_rows``): token and time positions are rows, so
        a (B, T, d) activation gives B T rows of d, and (N, ..., d) one row per leading position;
        a conv's input gives its unfolded patches (N L rows of fan_in = C prod(kernel), the conv's
        own padding, stride and dilation; a grouped conv falls back to channel rows) and its
        output N L rows of channels; an Embedding's input (token ids) gives one-hot rows over
        the vocabulary V (what its A sees; covariance diag(p) - p p^T of the token frequencies),
        refused above V = 4096. Other modules: a 4-D tensor (N, C, H, W) gives N H W rows of C
        channels, anything else one row per leading position.
    device: where batches of X go and covariances accumulate; "auto" = the model's device.

    Fitted: ``covariances_`` (name -> StreamingCovariance), ``spectra_`` (name -> Spectrum).
    """

    _constraints = {"side": one_of(*SIDES), "batch_size": an_int(1)}

    def __init__(self, layers: Sequence[str] | None = None, side: str = "input", batch_size: int = 1024,
                 device: str | torch.device = "auto") -> None:
        self.layers, self.side, self.batch_size, self.device = layers, side, batch_size, device

    def fit(self, model: nn.Module, X: Any) -> "ActivationSpectra":
        """Run ``model`` in eval mode without gradients over X in batches, hooking the layers."""
        self._validate_params()
        chosen = select_layers(model, self.layers)
        device = _model_device(model) if self.device == "auto" else torch.device(self.device)
        covs = {n: StreamingCovariance(device=device) for n, _ in chosen}
        hooked_pass(model, X, chosen, self.side, lambda name, rows: covs[name].update(rows), self.batch_size, device)
        unseen = [n for n, c in covs.items() if c.n_ == 0]
        if unseen:
            raise ValueError(f"layers {unseen} were never called in the forward pass (or X is empty)")
        self.layer_names_ = [n for n, _ in chosen]
        self.covariances_ = covs
        self.spectra_ = {n: c.spectrum() for n, c in covs.items()}
        return self

    def frame(self, taus: Sequence[float] = DEFAULT_TAUS) -> pd.DataFrame:
        """One row per layer: layer, n (rows seen) and Spectrum.summary(taus)."""
        return _frame(self.spectra_, taus, n={n: c.n_ for n, c in self.covariances_.items()})


class DeadUnits(Estimator):
    """Units of each layer's output that are <= 0 on every row of X: under a ReLU after the layer they emit 0
    and pass no gradient to anything before them ("dead"). With W_seed = 0 and B = 0 (the no-scaffold
    control at init), a unit's output is its frozen bias, so every unit with a negative seeded bias is dead
    and stays so; ScaffoldConfig(init_B="kaiming") gives it a gradient.

    layers: as ActivationSpectra (default every ScaffoldLayer). Rows as ActivationSpectra's output side
        (a conv's channels over every position).
    Fitted: ``max_`` (name -> per-unit max over rows), ``fraction_`` (name -> fraction of units with max <= 0).
    """

    _constraints = {"batch_size": an_int(1)}

    def __init__(self, layers: Sequence[str] | None = None, batch_size: int = 1024) -> None:
        self.layers, self.batch_size = layers, batch_size

    def fit(self, model: nn.Module, X: Any) -> "DeadUnits":
        self._validate_params()
        chosen = select_layers(model, self.layers)
        top: dict[str, torch.Tensor] = {}

        def update(name: str, rows: torch.Tensor) -> None:
            m = rows.detach().float().amax(dim=0).cpu()
            top[name] = m if name not in top else torch.maximum(top[name], m)

        hooked_pass(model, X, chosen, "output", update, self.batch_size, _model_device(model))
        unseen = [n for n, _ in chosen if n not in top]
        if unseen:
            raise ValueError(f"layers {unseen} were never called in the forward pass (or X is empty)")
        self.max_ = top
        self.fraction_ = {n: float((m <= 0).float().mean()) for n, m in top.items()}
        return self


# ----------------------------------------------------------------------------- tasks


TASKS = ("classification", "regression")


def _flat(X: Any, what: str = "X") -> np.ndarray:
    a = _to_numpy(X)
    if a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"{what} needs at least one row, got shape {a.shape}")
    return a.reshape(a.shape[0], -1)


def _covariance_spectrum(X: np.ndarray) -> Spectrum:
    """Eigenvalues of the population covariance of the rows of X (ddof = 0)."""
    return StreamingCovariance().update(X).spectrum()


class TaskSpectrum(Estimator):
    """Spectra of a data set: inputs (PCA), and the task's directions.

    classification: between-class scatter (Fisher 1936; Duda, Hart & Stork 2001, sec. 3.8)
        S_b = sum_c (n_c / n)(mu_c - mu)(mu_c - mu)^T,
        whose spectrum is that of the weighted centred means sqrt(n_c / n)(mu_c - mu)
        (padded with zeros to d); its numerical rank (<= C - 1) counts eigenvalues above
        ``rtol * d * max eigenvalue of Cov(X)`` (Cov(X) = S_w + S_b bounds S_b).
    regression: the target covariance Cov(Y) and the cross-covariance Cov(X, Y) (d, k);
        ``cross_spectrum_`` holds its squared singular values, ``cross_singular_values_``
        the singular values.
    X may be (n, ...); it is flattened to (n, d).
    """

    _constraints = {"task": one_of(*TASKS), "rtol": in_interval(0, math.inf)}

    def __init__(self, task: str = "classification", rtol: float = 1e-10) -> None:
        self.task, self.rtol = task, rtol

    def fit(self, X: Any, y: Any) -> "TaskSpectrum":
        self._validate_params()
        X = _flat(X)
        n, d = X.shape
        y = _to_numpy(y) if self.task == "regression" else np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
        if y.shape[0] != n:
            raise ValueError(f"X has {n} rows but y has {y.shape[0]}")
        self.n_samples_, self.n_features_ = n, d
        self.input_spectrum_ = _covariance_spectrum(X)
        if self.task == "classification":
            if y.ndim != 1:
                raise ValueError(f"classification needs 1-D labels y, got shape {y.shape}")
            classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
            means = np.zeros((classes.size, d))
            np.add.at(means, inverse, X)
            means /= counts[:, None]
            weighted = np.sqrt(counts / n)[:, None] * (means - X.mean(0))
            sv2 = np.linalg.svd(weighted, compute_uv=False) ** 2
            self.classes_, self.n_classes_ = classes, int(classes.size)
            self.between_class_spectrum_ = Spectrum(np.concatenate([sv2, np.zeros(d - sv2.size)]))
            # S_t = S_w + S_b >= S_b, so the input's top eigenvalue bounds S_b's and sets the round-off scale
            # (a relative-to-S_b tolerance would count pure round-off when all class means coincide).
            tol = self.rtol * d * self.input_spectrum_.eigenvalues[0]
            self.between_class_rank_ = int(np.sum(self.between_class_spectrum_.eigenvalues > tol)) if tol > 0 else 0
        else:
            Y = y.reshape(n, -1)
            self.target_spectrum_ = _covariance_spectrum(Y)
            cross = (X - X.mean(0)).T @ (Y - Y.mean(0)) / n
            self.cross_singular_values_ = np.linalg.svd(cross, compute_uv=False)
            self.cross_spectrum_ = Spectrum(self.cross_singular_values_ ** 2)
        return self


# ----------------------------------------------------------------------------- weights


WEIGHT_KINDS = ("adapter", "delta")


class WeightSpectra(Estimator):
    """Spectra of weight updates, each reshaped to (d_out, -1).

    kind="adapter": s B A (``layer.delta()``) of every ScaffoldLayer of ``model``.
    kind="delta": Delta W = W_trained - W_init for every layer of a registered type (its
        effective weight as the (d_out, d_in) map: W of a plain layer, transposed for Conv1D and
        Embedding, beta W_seed + s B A of a ScaffoldLayer; ``scaffold.effective_weights``)
        present by name in both ``model`` (at init) and ``trained``.
    Fitted: ``spectra_`` (name -> Spectrum of squared singular values).
    """

    _constraints = {"kind": one_of(*WEIGHT_KINDS)}

    def __init__(self, kind: str = "adapter") -> None:
        self.kind = kind

    def fit(self, model: nn.Module, trained: nn.Module | None = None) -> "WeightSpectra":
        self._validate_params()
        spectra: dict[str, Spectrum] = {}
        if self.kind == "adapter":
            if trained is not None:
                raise ValueError("kind='adapter' reads the adapters of one model; trained is only for kind='delta'")
            for n, m in scaffold_layers(model):
                delta = m.to_map(m.delta()).detach()
                spectra[n] = Spectrum.from_matrix(delta.reshape(delta.shape[0], -1))
            if not spectra:
                raise ValueError("kind='adapter' needs a scaffolded model; this one has no ScaffoldLayer")
        else:
            if trained is None:
                raise ValueError("kind='delta' needs fit(model_at_init, trained)")
            init = {n: w.detach() for n, w in effective_weights(model)}
            after = {n: w.detach() for n, w in effective_weights(trained)}
            common = [n for n in init if n in after]
            if not common:
                raise ValueError(f"no layer of a registered type is in both models by name; "
                                 f"init has {list(init)}, trained has {list(after)}")
            for n in common:
                if init[n].shape != after[n].shape:
                    raise ValueError(f"layer {n!r}: shape {tuple(init[n].shape)} at init, "
                                     f"{tuple(after[n].shape)} trained")
                delta = after[n].double().cpu() - init[n].double().cpu()
                spectra[n] = Spectrum.from_matrix(delta.reshape(delta.shape[0], -1))
        self.spectra_ = spectra
        return self

    def frame(self, taus: Sequence[float] = DEFAULT_TAUS) -> pd.DataFrame:
        """One row per layer: layer, total (= ||Delta||_F^2) and Spectrum.summary(taus)."""
        return _frame(self.spectra_, taus, total={n: s.total for n, s in self.spectra_.items()})


# ----------------------------------------------------------------------------- intrinsic dimension


ID_METHODS = ("twonn", "mle")


class IntrinsicDimension(Estimator):
    """Intrinsic dimension of a point cloud by scikit-dimension.

    method: "twonn" (skdim.id.TwoNN, Facco et al. 2017) or "mle" (skdim.id.MLE,
    Levina & Bickel 2004). fit(X) flattens X to (n, d) and uses ``n_samples`` rows drawn
    without replacement by numpy's Generator(random_state) (all rows if n <= n_samples
    or n_samples is None). TwoNN needs distinct points. Fitted: ``dimension_``, ``n_samples_``.
    """

    _constraints = {"method": one_of(*ID_METHODS), "n_samples": an_int(3, or_none=True)}

    def __init__(self, method: str = "twonn", n_samples: int | None = 2000, random_state: int = 0) -> None:
        self.method, self.n_samples, self.random_state = method, n_samples, random_state

    def fit(self, X: Any) -> "IntrinsicDimension":
        self._validate_params()
        import skdim  # slow import (numba); only when used

        X = _flat(X)
        if self.n_samples is not None and X.shape[0] > self.n_samples:
            rows = np.random.default_rng(self.random_state).choice(X.shape[0], self.n_samples, replace=False)
            X = X[np.sort(rows)]
        estimator = skdim.id.TwoNN() if self.method == "twonn" else skdim.id.MLE()
        self.estimator_ = estimator.fit(X)
        self.dimension_ = float(self.estimator_.dimension_)
        self.n_samples_ = int(X.shape[0])
        if not math.isfinite(self.dimension_):
            raise ValueError(f"{self.method} gave dimension {self.dimension_}; are there duplicate points in X?")
        return self
