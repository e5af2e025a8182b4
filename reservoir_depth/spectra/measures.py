"""Array measures of a variance spectrum, and the covariances they come from.

A variance spectrum ``lam`` (eigenvalues of a covariance, or squared singular
values of a matrix, sorted descending) is summarised by

    explained variance ratio   p_i = lam_i / sum lam                    (PCA; Jolliffe 2002, ch. 6)
    k_tau                      smallest k with sum_{i<=k} p_i >= tau    (components for a fraction tau)
    participation ratio        PR = (sum lam)^2 / sum lam^2, in [1, d]  (Gao et al. 2017)
    entropy effective rank     exp(H(p)), H(p) = -sum p_i log p_i       (Roy & Vetterli 2007)
    stable rank                sum lam / max lam (= ||M||_F^2 / ||M||_2^2 for a matrix M;
                               Rudelson & Vershynin 2007)

All measures are ratios: invariant to rotations of the data and to scaling by c > 0.
A zero spectrum has every measure equal to 0 (no NaN, no warning). ``MEASURES`` is the
table of the scalar measures that ``Spectrum.summary`` reports; ``StreamingCovariance``
accumulates a covariance batch by batch (Chan, Golub & LeVeque 1979).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..checks import is_number

__all__ = [
    "MEASURES", "Spectrum", "StreamingCovariance", "entropy_effective_rank", "explained_variance_ratio", "k_tau",
    "participation_ratio", "stable_rank",
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
    """Smallest k with sum_{i<=k} p_i >= tau, tau in (0, 1]: the principal components that explain a
    fraction tau of the variance (Jolliffe 2002, sec. 6.1); 0 for a zero spectrum."""
    tau = _check_tau(tau)
    a = _clean(lam)
    if a[0] == 0:
        return 0
    cum = np.cumsum(a)
    cum /= cum[-1]  # the last ratio is exactly 1
    return int(np.searchsorted(cum, tau - TAU_RTOL, side="left")) + 1


def participation_ratio(lam: Any) -> float:
    """PR = (sum lam)^2 / sum lam^2, in [1, d] (Gao et al. 2017); 0 for a zero spectrum."""
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
    """sum lam / max lam (= ||M||_F^2 / ||M||_2^2 for lam = sigma(M)^2, Rudelson & Vershynin 2007);
    0 for a zero spectrum."""
    a = _clean(lam)
    return float(a.sum() / a[0]) if a[0] > 0 else 0.0


# The scalar effective-dimension measures, by the column name every table uses: Spectrum.summary
# reports each, so a new measure is one entry here.
MEASURES: dict[str, Callable[[Any], float]] = {
    "participation_ratio": participation_ratio,
    "entropy_rank": entropy_effective_rank,
    "stable_rank": stable_rank,
}


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
        """k_tau for each tau, every measure of ``MEASURES``, the numerical rank and d."""
        out: dict[str, int | float] = {f"k_{tau:g}": self.k_tau(tau) for tau in taus}
        out.update({name: measure(self.eigenvalues) for name, measure in MEASURES.items()})
        out.update(rank=self.rank(), d=self.d)
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
