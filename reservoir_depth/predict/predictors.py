"""Predictors of r* at init, each a spectrum measure of the study's model before training.

scikit-learn's estimator convention (checks.Estimator): parameters in __init__, ``fit(model, data)``
returns self; fitted ``per_layer_`` (name -> raw value), ``r_`` (the max over layers), ``seconds_``.
The raw value is a spectrum measure (``measure``: participation ratio, stable rank or k_tau of
``Spectrum``), read as a rank after one scale factor (evaluation.calibrate):

- ``GradientSpectrum``: the first gradient G = dL/dW at W = W_seed of every target weight (autograd
  on merge(model), a plain copy), averaged over K batches ("mean") or stacked ("stack": the spectrum
  of sum_k G_k G_k^T);
- ``ProbeSpectrum``: the adapter s B A after a short training at a high rank (a few % of the steps);
- ``LayerTaskSpectrum``: between-class scatter (integer targets) or Cov(x, y) of each target
  layer's inputs at init;
- ``DataSpectrum``: input PCA or between-class / Cov(x, y) of the data set alone (no model).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..checks import Estimator, an_int, one_of
from ..scaffold import merge
from ..spectra import Spectrum, TaskSpectrum, WeightSpectra, hooked_pass, select_layers
from ..tasks import task_of
from .model import float_input, target_weights, training_batches

MEASURE_OF: dict[str, Callable[[Spectrum], float]] = {  # spectrum -> a number read as a rank
    "participation_ratio": lambda s: s.participation_ratio,
    "stable_rank": lambda s: s.stable_rank,
    "k_0.9": lambda s: float(s.k_tau(0.9)),
    "k_0.99": lambda s: float(s.k_tau(0.99)),
}
ROWS = 1000  # at most this many training inputs for the activation / data spectra


class Predictor(Estimator):
    """Shared: ``measure`` of each layer's spectrum -> ``per_layer_``; ``r_`` = max over layers."""

    _constraints = {"measure": one_of(*MEASURE_OF)}

    def _finish(self, spectra: Mapping[str, Spectrum], t0: float) -> "Predictor":
        self.spectra_ = dict(spectra)
        self.per_layer_ = {n: MEASURE_OF[self.measure](s) for n, s in spectra.items()}
        self.r_ = max(self.per_layer_.values()) if self.per_layer_ else math.nan
        self.seconds_ = time.perf_counter() - t0
        return self


class GradientSpectrum(Predictor):
    """Spectrum of the first gradient G = dL/dW at W = W_seed of each target weight (reshaped to
    (d_out, -1)), by autograd on merge(model), over ``k`` seeded batches of ``batch_size``.
    accumulate="mean": G = the mean of the batch gradients (one gradient of k * batch_size rows);
    "stack": the spectrum of [G_1 ... G_k] (the eigenvalues of sum_k G_k G_k^T)."""

    def __init__(self, k: int = 4, batch_size: int = 256, measure: str = "participation_ratio",
                 accumulate: str = "mean", random_state: int = 0) -> None:
        self.k, self.batch_size, self.measure = k, batch_size, measure
        self.accumulate, self.random_state = accumulate, random_state

    _constraints = {**Predictor._constraints, "k": an_int(1), "batch_size": an_int(1),
                    "accumulate": one_of("mean", "stack")}

    def fit(self, model: nn.Module, data) -> "GradientSpectrum":
        self._validate_params()
        t0 = time.perf_counter()
        plain = merge(model)
        weights = target_weights(model, plain)
        if not weights:
            raise ValueError("the model has no scaffold weight to take a gradient of (scaffold() it first)")
        task = task_of(data.task)
        plain.train()
        grads: dict[str, list[torch.Tensor]] = {n: [] for n in weights}
        for X, y in training_batches(data, self.batch_size, self.k, self.random_state):
            plain.zero_grad(set_to_none=True)
            task.loss(plain(float_input(X, plain)), y, washout=data.washout).backward()
            for n, p in weights.items():
                grads[n].append(p.grad.detach().double().reshape(p.shape[0], -1))
        spectra = {}
        for n, gs in grads.items():
            G = torch.stack(gs).mean(0) if self.accumulate == "mean" else torch.cat(gs, dim=1)
            spectra[n] = Spectrum.from_matrix(G)
        return self._finish(spectra, t0)


class ProbeSpectrum(Predictor):
    """Spectrum of each adapter s B A after ``steps`` AdamW steps (lr, batch_size) on a copy of a
    model scaffolded at a high rank (the probe rank): B = 0 at init, so s B A is what the first steps
    put there. ``model`` is that high-rank model (``init_model(study, rank=...)``)."""

    def __init__(self, steps: int = 20, lr: float = 1e-3, batch_size: int = 128,
                 measure: str = "participation_ratio", random_state: int = 0) -> None:
        self.steps, self.lr, self.batch_size = steps, lr, batch_size
        self.measure, self.random_state = measure, random_state

    _constraints = {**Predictor._constraints, "steps": an_int(1), "batch_size": an_int(1)}

    def fit(self, model: nn.Module, data) -> "ProbeSpectrum":
        self._validate_params()
        t0 = time.perf_counter()
        probe = copy.deepcopy(model)
        probe.train()
        opt = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], lr=self.lr)
        task = task_of(data.task)
        for X, y in training_batches(data, self.batch_size, self.steps, self.random_state):
            opt.zero_grad(set_to_none=True)
            task.loss(probe(float_input(X, probe)), y, washout=data.washout).backward()
            opt.step()
        return self._finish(WeightSpectra("adapter").fit(probe).spectra_, t0)


def _reducer(n: int, n_targets: int, batch_size: int, max_rows: int):
    """(on_rows, seen) for _hooked_pass over n samples in batches of ``batch_size``: each layer's
    (rows, features) is kept as is when it has one row per target, else averaged per sample (conv
    patches, positions of a sequence with one target); at most ``max_rows`` rows per layer."""
    per = n_targets // n
    seen: dict[str, list[torch.Tensor]] = {}
    done: dict[str, int] = {}

    def on_rows(name: str, rows: torch.Tensor) -> None:
        start = done.get(name, 0)
        b = min(batch_size, n - start)
        done[name] = start + b
        if rows.shape[0] != b * per:
            if rows.shape[0] % b:
                raise ValueError(f"layer {name!r}: {rows.shape[0]} rows for {b} samples; cannot align them "
                                 f"with the targets")
            rows = rows.reshape(b, -1, rows.shape[1]).mean(1)
        kept = sum(len(r) for r in seen.get(name, []))
        if kept < max_rows:
            seen.setdefault(name, []).append(rows[:max_rows - kept].detach().double().cpu())

    return on_rows, seen


def _task_spectrum(X: np.ndarray, y: torch.Tensor) -> Spectrum:
    """Between-class scatter (integer targets) or Cov(x, y) (real targets) of the rows X against y."""
    if y.is_floating_point():
        return TaskSpectrum("regression").fit(X, y.reshape(len(X), -1)).cross_spectrum_
    return TaskSpectrum("classification").fit(X, y.reshape(-1)).between_class_spectrum_


def _targets_of(data, n: int) -> torch.Tensor:
    """The targets of the first n training samples, flat per row (forecasting: steps t >= washout)."""
    y = data.y_train[:n]
    if data.task == "node-classification":  # padding nodes (label -1) would enter as a class of their own
        raise ValueError("node-classification: a between-class scatter of node rows would count the padding "
                         "nodes (label -1) as a class; task spectra of graphs are not implemented")
    if data.task == "forecasting":
        y = y[:, data.washout:]
    return y.reshape(-1, *y.shape[2:]) if y.ndim >= 2 and data.task != "classification" else y


class LayerTaskSpectrum(Predictor):
    """Between-class scatter (integer targets) or Cov(x, y) (real targets) of each target layer's
    inputs at init, over ``n_rows`` training samples (a layer seeing several rows per sample, conv
    patches or sequence positions, is averaged per sample unless each row has its own target)."""

    def __init__(self, n_rows: int = ROWS, max_rows: int = 20000, measure: str = "participation_ratio") -> None:
        self.n_rows, self.max_rows, self.measure = n_rows, max_rows, measure

    _constraints = {**Predictor._constraints, "n_rows": an_int(1), "max_rows": an_int(1)}

    def fit(self, model: nn.Module, data) -> "LayerTaskSpectrum":
        self._validate_params()
        t0 = time.perf_counter()
        n = min(self.n_rows, len(data.X_train))
        y = _targets_of(data, n)
        if data.task == "forecasting":
            raise ValueError("forecasting: a layer's inputs per time step include the washout steps the loss "
                             "leaves out; use DataSpectrum(kind='task') for Cov(x, y) of the series")
        chosen = select_layers(model, None)
        on_rows, seen = _reducer(n, len(y), 256, self.max_rows)
        hooked_pass(model, data.X_train[:n], chosen, "input", on_rows, 256, torch.device("cpu"))
        spectra = {}
        for name, parts in seen.items():  # a layer its container calls without its forward (nn.GRU's gates)
            rows = torch.cat(parts)       # is never seen, and has no entry
            spectra[name] = _task_spectrum(rows.numpy(), y[:len(rows)])
        return self._finish(spectra, t0)


class DataSpectrum(Predictor):
    """The data set alone (no model): kind="inputs", PCA of the inputs; kind="task", between-class
    scatter or Cov(x, y) of the inputs. Token ids have no spectrum: ``r_`` is NaN."""

    def __init__(self, kind: str = "inputs", n_rows: int = ROWS, measure: str = "participation_ratio") -> None:
        self.kind, self.n_rows, self.measure = kind, n_rows, measure

    _constraints = {**Predictor._constraints, "kind": one_of("inputs", "task"), "n_rows": an_int(1)}

    def fit(self, model: nn.Module | None, data) -> "DataSpectrum":
        self._validate_params()
        t0 = time.perf_counter()
        if data.vocab_size:
            return self._finish({}, t0)
        n = min(self.n_rows, len(data.X_train))
        X, y = data.X_train[:n].double(), _targets_of(data, n)
        if data.task == "forecasting":
            X = X[:, data.washout:].reshape(-1, X.shape[-1])
        X = X.reshape(len(X), -1).numpy()
        spectra = {"inputs": TaskSpectrum("regression").fit(X, np.zeros((len(X), 1))).input_spectrum_
                   if self.kind == "inputs" else _task_spectrum(X, y)}
        return self._finish(spectra, t0)
