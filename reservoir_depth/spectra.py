"""Spectra of activations, tasks and weight updates, and intrinsic dimension.

A variance spectrum ``lam`` (eigenvalues of a covariance, or squared singular
values of a matrix, sorted descending) is summarised by

    explained variance ratio   p_i = lam_i / sum lam
    k_tau                      smallest k with sum_{i<=k} p_i >= tau
    participation ratio        PR = (sum lam)^2 / sum lam^2            in [1, d]
    entropy effective rank     exp(H(p)), H(p) = -sum p_i log p_i       (Roy & Vetterli 2007)
    stable rank                sum lam / max lam  (= ||M||_F^2 / ||M||_2^2 for a matrix M)

All measures are ratios: invariant to rotations of the data and to scaling by c > 0.
A zero spectrum has every measure equal to 0 (no NaN, no warning).

``StreamingCovariance`` accumulates a covariance batch by batch (Chan et al. 1979);
``ActivationSpectra`` hooks a model's layers, ``TaskSpectrum`` describes a data set,
``WeightSpectra`` the adapters s B A or a weight update W_trained - W_init, and
``IntrinsicDimension`` wraps scikit-dimension's TwoNN / MLE estimators.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .distributions import is_number
from .scaffold import ScaffoldConv2d, ScaffoldLayer, matches, scaffold_layers

__all__ = [
    "ActivationSpectra", "IntrinsicDimension", "Spectrum", "StreamingCovariance", "TaskSpectrum", "WeightSpectra",
    "entropy_effective_rank", "explained_variance_ratio", "k_tau", "participation_ratio", "stable_rank",
]

DEFAULT_TAUS = (0.9, 0.95, 0.99)
NEG_RTOL = 1e-6    # eigenvalues down to -NEG_RTOL * d * max|lam| are round-off, clipped to 0
TAU_RTOL = 1e-12   # k_tau accepts a cumulative ratio within this of tau (isotropic spectra)


# ----------------------------------------------------------------------------- plain functions


def _clean(lam: Any) -> np.ndarray:
    """lam as a float64 1-D array sorted descending, round-off negatives clipped to 0."""
    if isinstance(lam, torch.Tensor):
        lam = lam.detach().cpu().double().numpy()
    a = np.asarray(lam, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"a spectrum must be a 1-D array, got shape {a.shape}")
    if a.size == 0:
        raise ValueError("a spectrum needs at least one value, got an empty array")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"a spectrum must be finite, got {np.sum(~np.isfinite(a))} NaN / inf values")
    scale = float(np.max(np.abs(a)))
    if a.min() < -NEG_RTOL * a.size * scale:
        raise ValueError(f"a variance spectrum is non-negative; got min {a.min():.3g} with max |lam| {scale:.3g} "
                         f"(more than round-off: is this a covariance / a matrix's squared singular values?)")
    return np.sort(np.clip(a, 0.0, None))[::-1].copy()


def explained_variance_ratio(lam: Any) -> np.ndarray:
    """p_i = lam_i / sum lam (all zeros for a zero spectrum)."""
    a = _clean(lam)
    total = a.sum()
    return a / total if total > 0 else np.zeros_like(a)


def _check_tau(tau: Any) -> float:
    if not is_number(tau) or not 0 < tau <= 1:
        raise ValueError(f"tau must be a number in (0, 1], got {tau!r}")
    return float(tau)


def k_tau(lam: Any, tau: float) -> int:
    """Smallest k with sum_{i<=k} p_i >= tau, tau in (0, 1]; 0 for a zero spectrum."""
    tau = _check_tau(tau)
    a = _clean(lam)
    if a[0] == 0:
        return 0
    cum = np.cumsum(a)
    cum /= cum[-1]  # the last ratio is exactly 1
    return int(np.searchsorted(cum, tau - TAU_RTOL, side="left")) + 1


def participation_ratio(lam: Any) -> float:
    """PR = (sum lam)^2 / sum lam^2, in [1, d]; 0 for a zero spectrum."""
    a = _clean(lam)
    if a[0] == 0:
        return 0.0
    a = a / a[0]  # scale-free, no overflow
    return float(a.sum() ** 2 / np.sum(a * a))


def entropy_effective_rank(lam: Any) -> float:
    """exp(H(p)), H(p) = -sum p_i log p_i, p = lam / sum lam (Roy & Vetterli 2007); 0 for a zero spectrum."""
    p = explained_variance_ratio(lam)
    p = p[p > 0]
    if p.size == 0:
        return 0.0
    return float(np.exp(-np.sum(p * np.log(p))))


def stable_rank(lam: Any) -> float:
    """sum lam / max lam (= ||M||_F^2 / ||M||_2^2 for lam = sigma(M)^2); 0 for a zero spectrum."""
    a = _clean(lam)
    return float(a.sum() / a[0]) if a[0] > 0 else 0.0


# ----------------------------------------------------------------------------- Spectrum


def _to_numpy(M: Any) -> np.ndarray:
    if isinstance(M, torch.Tensor):
        return M.detach().cpu().double().numpy()
    return np.asarray(M, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Spectrum:
    """A variance spectrum: ``eigenvalues`` float64, descending, >= 0 (read-only).

    Equality is identity (compare ``eigenvalues`` with numpy to compare values).
    """

    eigenvalues: np.ndarray

    def __post_init__(self) -> None:
        a = _clean(self.eigenvalues)
        a.setflags(write=False)
        object.__setattr__(self, "eigenvalues", a)

    @classmethod
    def from_matrix(cls, M: Any) -> "Spectrum":
        """Squared singular values of a 2-D matrix M (min(M.shape) of them)."""
        a = _to_numpy(M)
        if a.ndim != 2:
            raise ValueError(f"from_matrix needs a 2-D matrix, got shape {a.shape}; reshape it to (d_out, -1)")
        return cls(np.linalg.svd(a, compute_uv=False) ** 2)

    @classmethod
    def from_covariance(cls, C: Any) -> "Spectrum":
        """Eigenvalues of a symmetric positive semi-definite matrix C (eigvalsh of (C + C^T) / 2)."""
        a = _to_numpy(C)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"from_covariance needs a square 2-D matrix, got shape {a.shape}")
        asym = float(np.max(np.abs(a - a.T))) if a.size else 0.0
        if asym > 1e-5 * max(float(np.max(np.abs(a))), np.finfo(float).tiny):
            raise ValueError(f"from_covariance needs a symmetric matrix, max |C - C^T| = {asym:.3g}; "
                             f"use Spectrum.from_matrix for a general matrix")
        return cls(np.linalg.eigvalsh((a + a.T) / 2))

    @property
    def d(self) -> int:
        return int(self.eigenvalues.size)

    @property
    def total(self) -> float:
        """sum lam (the total variance)."""
        return float(self.eigenvalues.sum())

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        return explained_variance_ratio(self.eigenvalues)

    def k_tau(self, tau: float) -> int:
        return k_tau(self.eigenvalues, tau)

    @property
    def participation_ratio(self) -> float:
        return participation_ratio(self.eigenvalues)

    @property
    def entropy_effective_rank(self) -> float:
        return entropy_effective_rank(self.eigenvalues)

    @property
    def stable_rank(self) -> float:
        return stable_rank(self.eigenvalues)

    def rank(self, rtol: float = 1e-10) -> int:
        """Numerical rank: number of lam_i > rtol * d * max lam."""
        return int(np.sum(self.eigenvalues > rtol * self.d * self.eigenvalues[0]))

    def summary(self, taus: Sequence[float] = DEFAULT_TAUS) -> dict[str, int | float]:
        """k_tau for each tau, participation / entropy / stable rank, numerical rank and d."""
        out: dict[str, int | float] = {f"k_{tau:g}": self.k_tau(tau) for tau in taus}
        out.update(participation_ratio=self.participation_ratio, entropy_rank=self.entropy_effective_rank,
                   stable_rank=self.stable_rank, rank=self.rank(), d=self.d)
        return out

    def __repr__(self) -> str:
        return (f"Spectrum(d={self.d}, total={self.total:.4g}, participation_ratio={self.participation_ratio:.4g}, "
                f"k_0.9={self.k_tau(0.9)})")


# ----------------------------------------------------------------------------- streaming covariance


class StreamingCovariance:
    """Mean and population covariance (ddof = 0) of the rows of a stream of (n, dim) batches.

    Each batch is reduced to (n_b, mean_b, M2_b = sum (x - mean_b)(x - mean_b)^T) in float64
    on ``device`` (default: the first batch's device) and merged (Chan, Golub & LeVeque 1979):

        n = n_a + n_b,  delta = mean_b - mean_a,  mean = mean_a + delta n_b / n,
        M2 = M2_a + M2_b + delta delta^T n_a n_b / n,   covariance = M2 / n.

    ``mean_`` and ``covariance_`` are CPU float64 numpy arrays; ``n_`` an int.
    """

    chunk_elements = 1 << 23  # rows are reduced in chunks of at most this many float64 values (64 MB)

    def __init__(self, dim: int | None = None, device: str | torch.device | None = None) -> None:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be an int >= 1 or None, got {dim!r}")
        self.dim, self.device = dim, device
        self.n_ = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def _as_tensor(self, X: Any) -> torch.Tensor:
        if not isinstance(X, torch.Tensor):
            X = torch.from_numpy(np.asarray(X, dtype=np.float64))
        if X.ndim != 2:
            raise ValueError(f"update needs a 2-D batch (n, dim), got shape {tuple(X.shape)}")
        dim = self.dim if self.dim is not None else (self._mean.numel() if self._mean is not None else None)
        if dim is not None and X.shape[1] != dim:
            raise ValueError(f"batch has {X.shape[1]} columns, this accumulator has dim={dim}")
        dev = self._mean.device if self._mean is not None else (self.device or X.device)
        return X.detach().to(device=dev, dtype=torch.float64)

    def _merge_stats(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        if n == 0:
            return
        if self._mean is None:
            self.n_, self._mean, self._m2 = n, mean.clone(), m2.clone()
            return
        mean, m2 = mean.to(self._mean.device), m2.to(self._m2.device)
        total = self.n_ + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + torch.outer(delta, delta) * (self.n_ * n / total)
        self.n_ = total

    def update(self, X: Any) -> "StreamingCovariance":
        """Add the rows of X (torch tensor on any device, or array-like), shape (n, dim)."""
        X = self._as_tensor(X)
        step = max(1, self.chunk_elements // max(X.shape[1], 1))
        for chunk in X.split(step):
            mean = chunk.mean(0)
            c = chunk - mean
            self._merge_stats(chunk.shape[0], mean, c.T @ c)
        return self

    def merge(self, other: "StreamingCovariance") -> "StreamingCovariance":
        """Add everything ``other`` has seen (other is unchanged); returns self."""
        if not isinstance(other, StreamingCovariance):
            raise TypeError(f"merge needs a StreamingCovariance, got {type(other).__name__}")
        if other._mean is None:
            return self
        mine = self.dim if self.dim is not None else (self._mean.numel() if self._mean is not None else None)
        if mine is not None and other._mean.numel() != mine:
            raise ValueError(f"cannot merge dim={other._mean.numel()} into dim={mine}")
        if self._mean is None and self.device is not None:
            other_mean, other_m2 = other._mean.to(self.device), other._m2.to(self.device)
        else:
            other_mean, other_m2 = other._mean, other._m2
        self._merge_stats(other.n_, other_mean, other_m2)
        return self

    def _fitted(self) -> None:
        if self._mean is None:
            raise AttributeError("StreamingCovariance has seen no data yet; call update(X) first")

    @property
    def mean_(self) -> np.ndarray:
        self._fitted()
        return self._mean.cpu().numpy()

    @property
    def covariance_(self) -> np.ndarray:
        """Population covariance M2 / n (ddof = 0), symmetric float64."""
        self._fitted()
        c = self._m2 / self.n_
        return ((c + c.T) / 2).cpu().numpy()

    def spectrum(self) -> Spectrum:
        return Spectrum.from_covariance(self.covariance_)

    def __repr__(self) -> str:
        dim = self._mean.numel() if self._mean is not None else self.dim
        return f"StreamingCovariance(dim={dim}, n_={self.n_})"


# ----------------------------------------------------------------------------- activations


SIDES = ("input", "output")


def _pad_amounts(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]) -> list[int]:
    """F.pad amounts (left, right, top, bottom) of a conv's padding (ints, 'valid' or 'same')."""
    if padding == "valid":
        return [0, 0, 0, 0]
    if padding == "same":  # as torch: total d (k - 1), the extra one on the right / bottom
        out: list[int] = []
        for k, d in reversed(list(zip(kernel, dilation))):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return out
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return [pw, pw, ph, ph]


def _conv_patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """(N * L, C kh kw) patches a conv's kernel sees (its fan_in), or None for a grouped conv."""
    if isinstance(module, ScaffoldConv2d):
        kernel, mode = tuple(module.weight_shape[2:]), "zeros"
    elif isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return None
        kernel, mode = tuple(module.kernel_size), module.padding_mode
    else:
        return None
    dilation, stride = tuple(module.dilation), tuple(module.stride)
    pad = _pad_amounts(module.padding, kernel, dilation)
    if any(pad):
        x = F.pad(x, pad, mode="constant" if mode == "zeros" else mode)
    cols = F.unfold(x, kernel, dilation=dilation, padding=0, stride=stride)  # (N, C kh kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _rows(module: nn.Module, t: Any, side: str, name: str) -> torch.Tensor:
    """The activation as (rows, features): conv patches for a conv's input, channels for 4-D."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"layer {name!r}: the {side} is a {type(t).__name__}, not a tensor; "
                        f"choose layers whose {side} is a single tensor")
    if side == "input" and t.ndim == 4:
        patches = _conv_patches(module, t)
        if patches is not None:
            return patches
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


def _select_layers(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    named = [(n, m) for n, m in model.named_modules() if n]
    if layers is None:
        chosen = list(scaffold_layers(model)) or [(n, m) for n, m in named if isinstance(m, (nn.Linear, nn.Conv2d))]
        if not chosen:
            raise ValueError(f"the model has no ScaffoldLayer, nn.Linear or nn.Conv2d; pass layers=[...] "
                             f"from its modules: {[n for n, _ in named]}")
        return chosen
    if isinstance(layers, str):
        layers = [layers]
    chosen = [(n, m) for n, m in named if matches(n, layers)]
    if not chosen:
        raise ValueError(f"layers {list(layers)} match no module; candidates: {[n for n, _ in named]}")
    return chosen


def _frame(spectra: dict[str, Spectrum], taus: Sequence[float], **extra: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for name, s in spectra.items():
        row = {"layer": name, **{k: v[name] for k, v in extra.items()}, **s.summary(taus)}
        rows.append(row)
    return pd.DataFrame(rows)


class ActivationSpectra:
    """Covariance spectrum of what each layer sees (side="input": what its A matrix sees) or emits.

    layers: names / regexes (peft rule of ``scaffold.matches``) of modules; default every
        ScaffoldLayer, or, in a model without any, every nn.Linear and nn.Conv2d.
    Rows: a 2-D activation (N, d) gives N rows; a conv's 4-D input gives its unfolded
        patches (N * L rows of dimension fan_in = C kh kw, the conv's own padding, stride and
        dilation); any other 4-D tensor (N, C, H, W) gives N H W rows of C channels (so a
        grouped conv's input falls back to its channel covariance). (N, ..., d) tensors give
        one row per leading position.
    device: where batches of X go and covariances accumulate; "auto" = the model's device.

    Fitted: ``covariances_`` (name -> StreamingCovariance), ``spectra_`` (name -> Spectrum).
    """

    def __init__(self, layers: Sequence[str] | None = None, side: str = "input", batch_size: int = 1024,
                 device: str | torch.device = "auto") -> None:
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.layers, self.side, self.batch_size, self.device = layers, side, batch_size, device

    def fit(self, model: nn.Module, X: Any) -> "ActivationSpectra":
        """Run ``model`` in eval mode without gradients over X in batches, hooking the layers."""
        chosen = _select_layers(model, self.layers)
        device = _model_device(model) if self.device == "auto" else torch.device(self.device)
        X = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
        dtype = _model_float_dtype(model)
        if X.is_floating_point() and dtype is not None:
            X = X.to(dtype)
        covs = {n: StreamingCovariance(device=device) for n, _ in chosen}

        def hook_for(name: str, module: nn.Module):  # hooks return None: they must not replace in/outputs
            def pre_hook(mod: nn.Module, args: tuple) -> None:
                covs[name].update(_rows(module, args[0] if args else None, "input", name))

            def hook(mod: nn.Module, args: tuple, out: Any) -> None:
                covs[name].update(_rows(module, out, "output", name))

            return pre_hook if self.side == "input" else hook

        modes = {m: m.training for m in model.modules()}
        handles = []
        try:
            for name, module in chosen:
                register = module.register_forward_pre_hook if self.side == "input" else module.register_forward_hook
                handles.append(register(hook_for(name, module)))
            model.eval()
            with torch.no_grad():
                for batch in X.split(self.batch_size):
                    model(batch.to(device))
        finally:
            for h in handles:
                h.remove()
            for m, training in modes.items():
                m.training = training
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


class TaskSpectrum:
    """Spectra of a data set: inputs (PCA), and the task's directions.

    classification: between-class scatter S_b = sum_c (n_c / n)(mu_c - mu)(mu_c - mu)^T,
        whose spectrum is that of the weighted centred means sqrt(n_c / n)(mu_c - mu)
        (padded with zeros to d); its numerical rank (<= C - 1) counts eigenvalues above
        ``rtol * d * max eigenvalue of Cov(X)`` (Cov(X) = S_w + S_b bounds S_b).
    regression: the target covariance Cov(Y) and the cross-covariance Cov(X, Y) (d, k);
        ``cross_spectrum_`` holds its squared singular values, ``cross_singular_values_``
        the singular values.
    X may be (n, ...); it is flattened to (n, d).
    """

    def __init__(self, task: str = "classification", rtol: float = 1e-10) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if not (isinstance(rtol, numbers.Real) and rtol > 0):
            raise ValueError(f"rtol must be a number > 0, got {rtol!r}")
        self.task, self.rtol = task, rtol

    def fit(self, X: Any, y: Any) -> "TaskSpectrum":
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


def _weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every layer's effective weight: W of nn.Linear / nn.Conv2d, beta W_seed + s B A of a ScaffoldLayer."""
    for n, m in model.named_modules():
        if isinstance(m, ScaffoldLayer):
            yield n, m.merged_weight().detach()
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            yield n, m.weight.detach()


class WeightSpectra:
    """Spectra of weight updates, each reshaped to (d_out, -1).

    kind="adapter": s B A (``layer.delta()``) of every ScaffoldLayer of ``model``.
    kind="delta": Delta W = W_trained - W_init for every nn.Linear / nn.Conv2d (or the
        merged weight of a ScaffoldLayer) present by name in both ``model`` (at init) and
        ``trained``.
    Fitted: ``spectra_`` (name -> Spectrum of squared singular values).
    """

    def __init__(self, kind: str = "adapter") -> None:
        if kind not in WEIGHT_KINDS:
            raise ValueError(f"kind must be one of {WEIGHT_KINDS}, got {kind!r}")
        self.kind = kind

    def fit(self, model: nn.Module, trained: nn.Module | None = None) -> "WeightSpectra":
        spectra: dict[str, Spectrum] = {}
        if self.kind == "adapter":
            if trained is not None:
                raise ValueError("kind='adapter' reads the adapters of one model; trained is only for kind='delta'")
            for n, m in scaffold_layers(model):
                delta = m.delta().detach()
                spectra[n] = Spectrum.from_matrix(delta.reshape(delta.shape[0], -1))
            if not spectra:
                raise ValueError("kind='adapter' needs a scaffolded model; this one has no ScaffoldLayer")
        else:
            if trained is None:
                raise ValueError("kind='delta' needs fit(model_at_init, trained)")
            init, after = dict(_weights(model)), dict(_weights(trained))
            common = [n for n in init if n in after]
            if not common:
                raise ValueError(f"no nn.Linear / nn.Conv2d layer name is in both models; "
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


class IntrinsicDimension:
    """Intrinsic dimension of a point cloud by scikit-dimension.

    method: "twonn" (skdim.id.TwoNN, Facco et al. 2017) or "mle" (skdim.id.MLE,
    Levina & Bickel 2004). fit(X) flattens X to (n, d) and uses ``n_samples`` rows drawn
    without replacement by numpy's Generator(random_state) (all rows if n <= n_samples
    or n_samples is None). TwoNN needs distinct points. Fitted: ``dimension_``, ``n_samples_``.
    """

    def __init__(self, method: str = "twonn", n_samples: int | None = 2000, random_state: int = 0) -> None:
        if method not in ID_METHODS:
            raise ValueError(f"method must be one of {ID_METHODS}, got {method!r}")
        if n_samples is not None and (isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 3):
            raise ValueError(f"n_samples must be an int >= 3 or None, got {n_samples!r}")
        self.method, self.n_samples, self.random_state = method, n_samples, random_state

    def fit(self, X: Any) -> "IntrinsicDimension":
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
