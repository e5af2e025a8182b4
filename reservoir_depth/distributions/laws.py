"""Laws several families share: Haar matrices, the quantised normal, the Gaussian mixture, He and Glorot stds."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

Array = np.ndarray


def haar_of(g: Array, shape: tuple[int, ...]) -> Array:
    """The Haar (semi-)orthogonal matrix of one (big, small) Gaussian matrix g: QR with sign correction
    (Mezzadri 2007)."""
    rows, cols = shape[0], int(np.prod(shape[1:]))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))
    return (q if rows >= cols else q.T).reshape(shape)


def haar_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The (big, small) shape of the Gaussian matrix whose QR gives a Haar matrix of ``shape``."""
    rows, cols = shape[0], int(np.prod(shape[1:]))
    return max(rows, cols), min(rows, cols)


def quantised_levels(bits: int, clip: float) -> Array:
    """The 2**bits uniform levels on [-clip, clip] of the quantised normal."""
    return np.linspace(-clip, clip, 2**bits)


def quantised_std(bits: int, clip: float) -> float:
    """The std of N(0, 1) rounded to the levels: sqrt(sum_k P(cell k) level_k^2)."""
    levels = quantised_levels(bits, clip)
    step = levels[1] - levels[0]
    edges = np.concatenate([[-np.inf], levels[:-1] + step / 2, [np.inf]])
    p = np.diff(stats.norm.cdf(edges))
    return float(np.sqrt(np.sum(p * levels**2)))


class Mixture:
    """A scipy-like law for a Gaussian mixture (cdf, mean, std)."""

    def __init__(self, means, stds, weights):
        self.means, self.stds = np.asarray(means, float), np.asarray(stds, float)
        self.weights = np.asarray(weights, float) / np.sum(weights)

    def cdf(self, x):
        """P(X <= x) = sum_k w_k Phi((x - mu_k) / s_k)."""
        x = np.asarray(x, float)[..., None]
        return np.sum(self.weights * stats.norm.cdf(x, self.means, self.stds), axis=-1)

    def mean(self):
        """sum_k w_k mu_k."""
        return float(self.weights @ self.means)

    def std(self):
        """sqrt(sum_k w_k (s_k^2 + mu_k^2) - mean^2)."""
        m = self.mean()
        return float(np.sqrt(self.weights @ (self.stds**2 + self.means**2) - m**2))


def kaiming_std(fan_in: int, gain: float) -> float:
    """He et al. 2015: gain / sqrt(fan_in)."""
    return gain / math.sqrt(fan_in)


def xavier_std(fan_in: int, fan_out: int, gain: float) -> float:
    """Glorot & Bengio 2010: gain sqrt(2 / (fan_in + fan_out))."""
    return gain * math.sqrt(2.0 / (fan_in + fan_out))
