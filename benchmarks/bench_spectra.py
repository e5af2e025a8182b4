"""Streaming covariance + eigvalsh vs scikit-learn's full-SVD PCA on the same activations.

    python benchmarks/bench_spectra.py                 # 60000 x 512, batches of 4096
    python benchmarks/bench_spectra.py --n 20000 --d 256

The data look like activations: ReLU of a random projection of inputs with a power-law
spectrum, float32. Ours sees them as a stream of torch batches (StreamingCovariance, float64
accumulation, then eigvalsh of the d x d covariance); scikit-learn gets the whole array in
memory (PCA(svd_solver="full")). Prints both times, their ratio and the largest difference
between the explained-variance ratios. Times are informative only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.decomposition import PCA

from reservoir_depth.spectra import StreamingCovariance


def activations(n: int, d: int, seed: int = 0) -> np.ndarray:
    """ReLU(Z W), Z ~ N(0, diag(i^-1)) in R^d, W Gaussian / sqrt(d): float32 (n, d)."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, d), dtype=np.float32) * (np.arange(1, d + 1, dtype=np.float32) ** -0.5)
    W = rng.standard_normal((d, d), dtype=np.float32) / np.float32(np.sqrt(d))
    return np.maximum(Z @ W, 0)


def ours(X: np.ndarray, batch: int) -> np.ndarray:
    acc = StreamingCovariance()
    for start in range(0, len(X), batch):
        acc.update(torch.from_numpy(X[start:start + batch]))
    return acc.spectrum().explained_variance_ratio


def sklearn_pca(X: np.ndarray) -> np.ndarray:
    return PCA(svd_solver="full").fit(X).explained_variance_ratio_


def timed(f, *args):
    t = time.perf_counter()
    out = f(*args)
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60000, help="rows (default 60000)")
    parser.add_argument("--d", type=int, default=512, help="columns (default 512)")
    parser.add_argument("--batch", type=int, default=4096, help="rows per streamed batch (default 4096)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X = activations(args.n, args.d, args.seed)
    print(f"data: {args.n} x {args.d} float32, batches of {args.batch}, torch threads {torch.get_num_threads()}")
    evr_ours, t_ours = timed(ours, X, args.batch)
    evr_sk, t_sk = timed(sklearn_pca, X)
    k = min(len(evr_ours), len(evr_sk))
    print(f"StreamingCovariance + eigvalsh: {t_ours:8.3f} s")
    print(f"sklearn PCA(svd_solver='full'): {t_sk:8.3f} s")
    print(f"ratio (sklearn / ours):         {t_sk / t_ours:8.2f}")
    print(f"max |explained_variance_ratio difference|: {np.max(np.abs(evr_ours[:k] - evr_sk[:k])):.2e}")


if __name__ == "__main__":
    main()
