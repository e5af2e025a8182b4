"""The Dataset every loader returns and every training run reads: tensors checked at construction.

A :class:`Dataset` refuses non-finite inputs or targets, mismatched lengths and
tensors of the wrong shape or dtype for its task, naming the data set and the
split, so that a NaN in the data is reported as such and never as a training
instability (issue: a NaN test loss passing as a number), and a token id out of
the vocabulary never reaches an embedding lookup.

Build one from tensors, or with :meth:`Dataset.from_loader` from a torch DataLoader or any
iterable of (X, y) batches per split (read into memory once).

Tasks (``TASKS``), with n rows per split:

- ``classification``: y (n,) int64 labels in [0, n_classes); X float (n, ...), or int64
  token ids (n, T) when ``vocab_size`` > 0 (sequence classification: positions holding
  ``pad_id`` are padding, on the right).
- ``regression``: y (n, n_out) float.
- ``lm``: X (n, T) int64 tokens, y (n, T) int64 next tokens (y[:, t] is the token after
  X[:, t]); n_classes = vocab_size.
- ``forecasting``: X (n, T, d) float inputs, y (n, T, d_out) float one-step-ahead targets
  (y[:, t] = series[t + 1]); the first ``washout`` steps of every window are excluded from
  loss and metrics; n_classes = 0.
- ``node-classification``: X float (n, N, F + N), one graph per row (node features, then the
  adjacency with self-loops marking the real nodes: ``data/graphs.py``), y (n, N) int64 node
  labels in [0, n_classes), -1 on padding nodes.
"""

from __future__ import annotations

import numbers

from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, Callable, Iterable

import numpy as np
import torch

TASKS = ("classification", "regression", "lm", "forecasting", "node-classification")


@dataclass
class Dataset:
    """Train and test tensors of one task (see the module doc for each task's shapes).

    Construction runs :func:`check_dataset`.
    """

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int  # 0 for regression and forecasting; vocab_size for lm
    task: str = "classification"  # one of TASKS
    vocab_size: int = 0  # > 0: X holds int64 token ids in [0, vocab_size)
    pad_id: int | None = None  # the padding token of right-padded token sequences
    washout: int = 0  # forecasting: leading steps of each window left out of loss and metrics
    bayes: dict | None = None  # the Bayes-optimal predictor's test metrics, where known (a planted teacher's own)

    def __post_init__(self) -> None:
        check_dataset(self)

    @classmethod
    def from_loader(cls, name: str, train_batches: Iterable[Any], test_batches: Iterable[Any], n_classes: int,
                    task: str = "classification", **fields: Any) -> "Dataset":
        """A Dataset from a torch DataLoader, or any iterable, of (X, y) batches per split.

        The batches are read once and concatenated into tensors, so this is for data that fits in
        memory (the trainer shuffles and batches the rows itself, with its own seeded generator).
        Every batch of a split must have the same dtypes and the same shape past the batch
        dimension; a split with no batch, an item that is not an (X, y) pair, or X and y of
        different lengths are refused, naming the split and the batch. ``fields`` are the other
        Dataset fields (vocab_size, pad_id, washout); the Dataset's checks then apply as usual.
        """
        return cls(name, *_materialise(name, "train", train_batches), *_materialise(name, "test", test_batches),
                   n_classes, task, **fields)

    @property
    def d_in(self) -> int:
        """vocab_size for token inputs; d for forecasting (X (n, T, d)); else prod(X.shape[1:])."""
        if self.vocab_size > 0:
            return int(self.vocab_size)
        if self.task == "forecasting":
            return int(self.X_train.shape[-1])
        return int(np.prod(self.X_train.shape[1:]))

    @property
    def n_out(self) -> int:
        """n_classes for classification and lm; y.shape[-1] for regression and forecasting."""
        return self.n_classes if self.task in ("classification", "lm", "node-classification") \
            else int(self.y_train.shape[-1])

    def validation(self, fraction: float = 0.1, seed: int = 0) -> "Dataset":
        """A Dataset whose test split is a validation split carved from this one's training split, for
        choosing hyper-parameters without touching the test split.

        Rows (classification, regression) are drawn at random with ``seed``; windows of the sequence tasks
        (lm, forecasting) overlap in time, so the validation split is the last ``fraction`` of the windows,
        and the windows before it that share a time step with it (input or one-step target) are dropped.
        The overlap is read off the windows themselves (the smallest shift s with X[1, :T-s] = X[0, s:]),
        which can only overestimate it.
        """
        if isinstance(fraction, bool) or not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
            raise ValueError(f"validation fraction must be a number in (0, 1), got {fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"validation seed (the split's random draw) must be an int >= 0, got {seed!r}")
        n = len(self.X_train)
        n_val = max(1, round(fraction * n))
        if self.task in ("lm", "forecasting"):
            T = self.X_train.shape[1]
            stride = next((s for s in range(1, T) if n > 1 and torch.equal(self.X_train[1, :T - s],
                                                                             self.X_train[0, s:])), T)
            n_fit = n - n_val - T // stride
            fit, val = torch.arange(max(n_fit, 0)), torch.arange(n - n_val, n)
        else:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
            n_fit = n - n_val
            fit, val = perm[n_val:], perm[:n_val]
        if n_fit < 1:
            raise ValueError(f"dataset {self.name!r}: a validation fraction of {fraction!r} of its {n} training rows "
                             f"leaves no row to train on; allowed: a fraction that leaves at least one")
        return replace(self, name=f"{self.name}[validation {fraction:g}, seed {seed}]",
                       X_train=self.X_train[fit], y_train=self.y_train[fit],
                       X_test=self.X_train[val], y_test=self.y_train[val])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.X_train.shape)}, test={tuple(self.X_test.shape)}, "
                f"{self.task}, n_out={self.n_out})")


def _materialise(name: str, split: str, batches: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate a split's (X, y) batches into (X, y) tensors on the CPU (see Dataset.from_loader)."""
    where = f"dataset {name!r}, {split} split"
    if isinstance(batches, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{where}: expected an iterable of (X, y) batches (a DataLoader, a list, a generator), "
                        f"got a single {type(batches).__name__}; build the Dataset from tensors directly")
    Xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for i, batch in enumerate(batches):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            got = f"a {len(batch)}-item {type(batch).__name__}" if isinstance(batch, (tuple, list)) else \
                f"a {type(batch).__name__}"
            raise ValueError(f"{where}: batch {i} is {got}; each batch must be an (X, y) pair")
        X, y = (torch.as_tensor(t).detach().cpu() for t in batch)
        if X.dim() == 0 or y.dim() == 0 or len(X) != len(y):
            raise ValueError(f"{where}: batch {i} has X of shape {_shape(X)} and y of shape {_shape(y)}; "
                             f"both need the same number of rows (the first dimension)")
        if Xs:
            for key, t, first in (("X", X, Xs[0]), ("y", y, ys[0])):
                if t.shape[1:] != first.shape[1:] or t.dtype != first.dtype:
                    raise ValueError(f"{where}: batch {i} has {key} {_dtype(t)} of shape {_shape(t)}, but batch 0 "
                                     f"{_dtype(first)} of shape {_shape(first)}; every batch must match past the "
                                     f"batch dimension (pad sequences to one length)")
        Xs.append(X)
        ys.append(y)
    if not Xs:
        raise ValueError(f"{where}: the loader yielded no batch (an empty data set, or a generator already "
                         f"used up: pass a fresh one per split)")
    return torch.cat(Xs), torch.cat(ys)


def positive_int(key: str, v: Any) -> int:
    """``v`` as an int, refusing anything but an int >= 1 (a bool, a float, zero, a negative)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{key} must be an int >= 1, got {v!r}")
    return int(v)


def windows(inputs: np.ndarray, targets: np.ndarray, window: int, stride: int, name: str, split: str,
            unit: str = "steps") -> tuple[np.ndarray, np.ndarray]:
    """The one-step-ahead windows of the lm and forecasting tasks: X = inputs[s : s + T] and
    Y = targets[s + 1 : s + T + 1] (y[:, t] = series[t + 1]) for s = 0, stride, 2 stride, ... within the part."""
    L = len(inputs)
    if L < window + 1:
        raise ValueError(f"dataset {name!r}, {split} split: n_{split} = {L} {unit} hold no window of {window} + 1 "
                         f"{unit}; allowed: n_{split} >= window + 1 = {window + 1}")
    starts = np.arange(0, L - window, stride)
    idx = starts[:, None] + np.arange(window)
    return inputs[idx], targets[idx + 1]


def _check_finite(name: str, split: str, key: str, t: Any) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"dataset {name!r}, {split} split: {key} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex():
        bad = ~torch.isfinite(t)
        n_bad = int(bad.sum())
        if n_bad:
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"dataset {name!r}, {split} split: {key} holds {n_bad} non-finite value(s) (NaN or inf), "
                             f"the first at index {first}; clean or impute the data before training")


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _refuse_outside(where: str, key: str, t: torch.Tensor, what: str, upper: int, upper_name: str) -> None:
    """Refuse an integer tensor holding values outside [0, upper), naming the first one and its index."""
    bad = (t < 0) | (t >= upper)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{where}: {key} holds {what} {int(t[first])} at index {first}; "
                         f"allowed: 0 <= {'id' if what == 'token id' else what} < {upper_name} = {upper}")


def _tokens(where: str, key: str, t: torch.Tensor, vocab_size: int, shape: str = "(n, T)") -> None:
    if t.dtype != torch.int64 or t.dim() != 2:
        raise ValueError(f"{where}: {key} must be int64 token ids of shape {shape}, "
                         f"got {_dtype(t)} of shape {_shape(t)}")
    _refuse_outside(where, key, t, "token id", vocab_size, "vocab_size")


def _check_classification(d: Any, where: str, split: str, X: torch.Tensor, y: torch.Tensor) -> None:
    if d.vocab_size > 0:
        _tokens(where, f"X_{split}", X, d.vocab_size)
    if y.dtype != torch.int64 or y.dim() != 1:
        raise ValueError(f"{where}: y_{split} must be int64 class labels of shape ({len(X)},), "
                         f"got {_dtype(y)} of shape {_shape(y)}")
    if d.n_classes is not None:
        _refuse_outside(where, f"y_{split}", y, "label", d.n_classes, "n_classes")


def _check_regression(d: Any, where: str, split: str, X: torch.Tensor, y: torch.Tensor) -> None:
    if not y.is_floating_point() or y.dim() != 2:
        raise ValueError(f"{where}: y_{split} must be float of shape ({len(X)}, n_out), "
                         f"got {_dtype(y)} of shape {_shape(y)}")


def _check_lm(d: Any, where: str, split: str, X: torch.Tensor, y: torch.Tensor) -> None:
    _tokens(where, f"X_{split}", X, d.vocab_size)
    _tokens(where, f"y_{split}", y, d.vocab_size, shape=_shape(X))
    if y.shape != X.shape:
        raise ValueError(f"{where}: y_{split} must be int64 token ids of shape {_shape(X)}, "
                         f"got {_dtype(y)} of shape {_shape(y)}")


def _check_forecasting(d: Any, where: str, split: str, X: torch.Tensor, y: torch.Tensor) -> None:
    if not X.is_floating_point() or X.dim() != 3:
        raise ValueError(f"{where}: X_{split} must be float of shape (n, T, d), got {_dtype(X)} of shape {_shape(X)}")
    if not y.is_floating_point() or y.dim() != 3 or y.shape[:2] != X.shape[:2]:
        raise ValueError(f"{where}: y_{split} must be float of shape ({X.shape[0]}, {X.shape[1]}, d_out) like "
                         f"X_{split}, got {_dtype(y)} of shape {_shape(y)}")
    if X.shape[1] <= d.washout:
        raise ValueError(f"{where}: windows of X_{split} have {X.shape[1]} steps, not more than the washout "
                         f"{d.washout}; allowed: washout < {X.shape[1]} (shorten the washout or lengthen the windows)")


def _check_nodes(d: Any, where: str, split: str, X: torch.Tensor, y: torch.Tensor) -> None:
    if not X.is_floating_point() or X.dim() != 3 or X.shape[2] <= X.shape[1]:
        raise ValueError(f"{where}: X_{split} must be float graphs of shape (n, N, F + N), F >= 1, "
                         f"got {_dtype(X)} of shape {_shape(X)}")
    if y.dtype != torch.int64 or y.shape != X.shape[:2]:
        raise ValueError(f"{where}: y_{split} must be int64 node labels of shape {tuple(X.shape[:2])}, "
                         f"got {_dtype(y)} of shape {_shape(y)}")
    bad = (y < -1) | (y >= (d.n_classes if d.n_classes is not None else torch.iinfo(torch.int64).max))
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{where}: y_{split} holds node label {int(y[first])} at index {first}; allowed: "
                         f"0 <= label < n_classes = {d.n_classes}, or -1 for a padding node")


# task -> its per-split check of X and y (shapes, dtypes, token ids and labels in range)
TASK_CHECKS: dict[str, Callable[..., None]] = {
    "classification": _check_classification,
    "regression": _check_regression,
    "lm": _check_lm,
    "forecasting": _check_forecasting,
    "node-classification": _check_nodes,
}


def _check_fields(d: Any, name: str, task: str) -> None:
    """The scalar fields: vocab_size, pad_id, washout and n_classes as the task needs them."""
    vocab, pad, washout, n_classes = d.vocab_size, d.pad_id, d.washout, d.n_classes
    if isinstance(vocab, bool) or not isinstance(vocab, (int, np.integer)) or vocab < 0:
        raise ValueError(f"dataset {name!r}: vocab_size must be an int >= 0, got {vocab!r}")
    if isinstance(washout, bool) or not isinstance(washout, (int, np.integer)) or washout < 0:
        raise ValueError(f"dataset {name!r}: washout must be an int >= 0, got {washout!r}")
    if washout and task != "forecasting":
        raise ValueError(f"dataset {name!r}: washout = {washout} applies only to task 'forecasting', not {task!r}")
    if pad is not None:
        if not vocab:
            raise ValueError(f"dataset {name!r}: pad_id = {pad!r} needs token inputs (vocab_size > 0, got 0)")
        if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or not 0 <= pad < vocab:
            raise ValueError(f"dataset {name!r}: pad_id = {pad!r} is outside the vocabulary; "
                             f"allowed: 0 <= pad_id < vocab_size = {vocab}")
    if task == "lm" and not vocab:
        raise ValueError(f"dataset {name!r}: task 'lm' needs vocab_size > 0, got {vocab}")
    if task == "lm" and n_classes != vocab:
        raise ValueError(f"dataset {name!r}: task 'lm' needs n_classes = vocab_size = {vocab}, got {n_classes}")
    if task == "forecasting" and n_classes not in (0, None):
        raise ValueError(f"dataset {name!r}: task 'forecasting' needs n_classes = 0, got {n_classes}")


def check_dataset(d: Any) -> None:
    """Refuse what a training run cannot honour, naming the data set, the split, the value and what is allowed.

    Refused: an unknown task; non-finite X or y; X and y of different lengths; X or y of the wrong
    shape or dtype for the task; token ids outside [0, vocab_size); labels outside [0, n_classes);
    a pad_id outside the vocabulary; a forecasting window not longer than the washout; train and
    test targets of different widths. Works on any object with ``name``, ``X_train``, ``y_train``,
    ``X_test``, ``y_test`` (``task``, ``vocab_size``, ``pad_id`` and ``washout`` default to
    "classification", 0, None and 0; without ``n_classes`` labels are not range-checked).
    """
    name, task = getattr(d, "name", "?"), getattr(d, "task", "classification")
    if task not in TASKS:
        raise ValueError(f"dataset {name!r}: task must be one of {TASKS}, got {task!r}")
    # the scalar fields, read the same way from a Dataset or a duck (n_classes None: labels not range-checked)
    view = SimpleNamespace(**{k: getattr(d, k, default) for k, default in
                              (("n_classes", None), ("vocab_size", 0), ("pad_id", None), ("washout", 0))})
    _check_fields(view, name, task)
    out = {}
    for split in ("train", "test"):
        X, y = getattr(d, f"X_{split}"), getattr(d, f"y_{split}")
        where = f"dataset {name!r}, {split} split"
        _check_finite(name, split, f"X_{split}", X)
        _check_finite(name, split, f"y_{split}", y)
        if len(X) != len(y):
            raise ValueError(f"{where}: X_{split} has {len(X)} rows but y_{split} {len(y)}")
        TASK_CHECKS[task](view, where, split, X, y)
        out[split] = y.shape[-1] if y.dim() > 1 else None
    if task in ("regression", "forecasting") and out["train"] != out["test"]:
        raise ValueError(f"dataset {name!r}, test split: y_test has {out['test']} output(s) per step but "
                         f"y_train {out['train']}")
