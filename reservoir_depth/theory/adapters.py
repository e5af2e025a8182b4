"""Numerical predictions for the adapters on a frozen scaffold (theory/04, theory/05).

Prop. 4  rank bounds: an adapter needs at most rank(Delta W P_S), S the span of the
         layer's inputs (4a); a planted rank-k teacher has r* = k with loss
         L(r) = sum_{i > r} sigma_i^2 for isotropic inputs (4b, Eckart-Young); a
         linear scaffold layer under a trainable C-way softmax head needs rank <= C - 1 (4c).
Prop. 5  beta under resampling: with W_seed redrawn every step (E W = 0), the
         expected gradient on beta is kappa * beta, so SGD gives
         E beta_t = beta_0 (1 - lr kappa)^t, kappa = 2 sigma^2 d_out E||x||^2.
"""

from __future__ import annotations

import numpy as np

Array = np.ndarray


def numerical_rank(M: Array, rtol: float = 1e-10) -> int:
    """Number of singular values above rtol * max(shape) * sigma_max."""
    s = np.linalg.svd(np.atleast_2d(M), compute_uv=False)
    return int(np.sum(s > rtol * max(M.shape) * (s[0] if s.size else 0.0))) if s.size and s[0] > 0 else 0


def input_projector(X: Array, rtol: float = 1e-10) -> Array:
    """P_S: the orthogonal projector onto the span S of the rows of X (n, d)."""
    U, s, Vt = np.linalg.svd(np.asarray(X, float), full_matrices=False)
    keep = s > rtol * max(X.shape) * (s[0] if s.size else 0.0)
    V = Vt[keep].T
    return V @ V.T


def minimal_adapter(dW: Array, X: Array, rtol: float = 1e-10) -> tuple[Array, Array]:
    """Prop. 4a: (B, A) of rank r = rank(dW P_S) with B A x = dW x for every x in S = span(X).

    r <= min(rank dW, dim S): an adapter never needs more rank than the data subspace.
    """
    D = np.asarray(dW, float) @ input_projector(X, rtol)
    U, s, Vt = np.linalg.svd(D, full_matrices=False)
    r = numerical_rank(D, rtol)
    return U[:, :r] * s[:r], Vt[:r]


def planted_loss(r: int | Array, singular_values: Array) -> Array:
    """Prop. 4b: best rank-r loss on a planted update with isotropic inputs (x ~ N(0, I)),
    squared error summed over outputs: L(r) = sum_{i > r} sigma_i^2 (Eckart-Young)."""
    s2 = np.sort(np.asarray(singular_values, float))[::-1] ** 2
    tail = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]])  # tail[j] = sum_{i >= j} s2[i]
    return tail[np.minimum(np.asarray(r), len(s2))]


def head_adapter(H: Array, W_seed: Array, W: Array) -> Array:
    """Prop. 4c: Delta W of rank <= C - 1 such that the head H (C, m) on the scaffold
    W_seed + Delta W gives the same softmax as H on a fully trained W.

    Delta W = Ht^+ Ht (W - W_seed), Ht = (I - 11^T / C) H: logits then differ from
    H W x by a multiple of 1, to which softmax is blind.
    """
    C = H.shape[0]
    Ht = (np.eye(C) - np.full((C, C), 1.0 / C)) @ np.asarray(H, float)
    return np.linalg.pinv(Ht) @ Ht @ (np.asarray(W, float) - np.asarray(W_seed, float))


def kappa_resampled(X: Array, d_out: int, sigma2: float) -> float:
    """Prop. 5: drift coefficient of beta when W_seed (entries iid, mean 0, variance sigma2)
    is redrawn every step, for L = mean_i ||y_hat_i - y_i||^2:

        E_W[dL/dbeta] = 2 beta E_W mean_i ||W x_i||^2 = kappa beta,  kappa = 2 sigma2 d_out mean_i ||x_i||^2.
    """
    X = np.asarray(X, float).reshape(len(X), -1)
    return 2.0 * sigma2 * d_out * float(np.mean(np.sum(X**2, axis=1)))


def beta_sgd_trajectory(beta0: float, kappa: float, lr: float, steps: int) -> Array:
    """Prop. 5: E beta_t = beta_0 (1 - lr kappa)^t under SGD (exact for the expectation:
    beta_t and the adapters are independent of the fresh W_t)."""
    if not 0 < lr * kappa < 2:
        raise ValueError(f"lr * kappa = {lr * kappa:g} must lie in (0, 2) for the mean to contract")
    return beta0 * (1.0 - lr * kappa) ** np.arange(steps + 1)
