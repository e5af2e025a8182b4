"""The Dataset every loader returns and every training run reads: tensors checked at construction.

A :class:`Dataset` refuses non-finite inputs or targets and mismatched lengths,
naming the data set and the split, so that a NaN in the data is reported as
such and never as a training instability (issue: a NaN test loss passing as a
number).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

TASKS = ("classification", "regression")


@dataclass
class Dataset:
    """Train and test tensors of one task.

    X: inputs (n, ...) of any floating or integer dtype; y: int64 class labels
    (classification, ``n_classes`` > 0) or float targets (n, n_out) (regression,
    ``n_classes`` = 0). Construction runs :func:`check_dataset`.
    """

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int  # 0 for regression
    task: str = "classification"  # or "regression" (targets y are float, shape (n, n_out))

    def __post_init__(self) -> None:
        check_dataset(self)

    @property
    def d_in(self) -> int:
        return int(np.prod(self.X_train.shape[1:]))

    @property
    def n_out(self) -> int:
        return self.n_classes if self.task == "classification" else int(self.y_train.shape[1])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.X_train.shape)}, test={tuple(self.X_test.shape)}, "
                f"{self.task}, n_out={self.n_out})")


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


def check_dataset(d: Any) -> None:
    """Refuse non-finite X or y, X and y of different lengths, or an unknown task, naming the data set and split.

    Works on any object with ``name``, ``X_train``, ``y_train``, ``X_test``, ``y_test`` (and ``task``).
    """
    name, task = getattr(d, "name", "?"), getattr(d, "task", "classification")
    if task not in TASKS:
        raise ValueError(f"dataset {name!r}: task must be one of {TASKS}, got {task!r}")
    for split in ("train", "test"):
        X, y = getattr(d, f"X_{split}"), getattr(d, f"y_{split}")
        _check_finite(name, split, f"X_{split}", X)
        _check_finite(name, split, f"y_{split}", y)
        if len(X) != len(y):
            raise ValueError(f"dataset {name!r}, {split} split: X_{split} has {len(X)} rows but y_{split} {len(y)}")
