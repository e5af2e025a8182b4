"""The task registry (``TASKS``) and the test metrics (``METRICS``): each task's loss, what its
evaluation measures and its headline metric; each metric's direction, unit and the tolerance
of r*(eps) it is read with. ``train.py`` runs the loop with them (and re-exports these names).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


TOLERANCES = {  # how eps of r*(eps) is read: delta = eps, or delta = eps * |full-training mean|
    "absolute": "absolute, in the metric's units",
    "relative": "relative, a fraction of the full-training mean",
}


@dataclass(frozen=True)
class Metric:
    """A test metric as a column of the results frame: its name, its direction (higher_is_better), its
    unit (``unit``, and ``fmt`` / ``scale`` to write a difference in it: accuracy in points, pp), and
    the tolerance of r*(eps) it is read with: ``tolerance`` (a TOLERANCES kind), the default eps
    values a study reports (``eps``) and the headline one (``headline_eps``, among them).

    Accuracy takes an absolute eps (0.01 = 1 accuracy point: a number of test examples); a loss,
    bits per character or NRMSE has no natural absolute scale across tasks, so it takes a relative
    eps (0.05 = within 5% of full training)."""

    name: str
    higher_is_better: bool
    unit: str
    fmt: str
    scale: float = 1.0
    tolerance: str = "relative"
    eps: tuple[float, ...] = (0.02, 0.05, 0.1)
    headline_eps: float = 0.05

    def __post_init__(self) -> None:
        if self.tolerance not in TOLERANCES:
            raise ValueError(f"metric {self.name!r}: tolerance must be one of {tuple(TOLERANCES)}, "
                             f"got {self.tolerance!r}")
        if self.headline_eps not in self.eps:
            raise ValueError(f"metric {self.name!r}: headline_eps {self.headline_eps} is not among eps {self.eps}")

    def points(self, v: float) -> str:
        """A difference ``v`` in the metric's units, as reports write it ("1.00 pp", "0.05 loss units")."""
        return self.fmt.format(self.scale * v)

    def eps_text(self, eps: float, relative: bool) -> str:
        """eps as a report states it: "0.01 (1.00 pp, absolute)", "0.05 (5% of full training, relative)"."""
        if relative:
            return f"{eps:g} ({100 * eps:g}% of full training, relative)"
        return f"{eps:g} ({self.points(eps)}, absolute)"


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("test_acc", True, "accuracy as a fraction: 0.01 = 1 accuracy point (pp)", "{:.2f} pp", 100.0,
           tolerance="absolute", eps=(0.005, 0.01, 0.02), headline_eps=0.01),
    Metric("test_bpc", False, "bits per character", "{:.4g} bits per character"),
    Metric("test_nrmse", False, "NRMSE, teacher-forced (RMSE / std of the target)", "{:.4g} NRMSE"),
    Metric("test_nrmse_free", False, "NRMSE, free-running (RMSE / std of the target)", "{:.4g} NRMSE"),
    Metric("test_loss", False, "loss units", "{:.4g} loss units"),
)}


def metric_of(name: str) -> Metric:
    """The registered metric ``name`` (METRICS); a clear error names the allowed ones."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; allowed: {', '.join(METRICS)}")
    return METRICS[name]


class Task:
    """A training task: its loss and what evaluation measures (one entry of ``TASKS``).

    ``headline`` is the metric a study of the task ranks by (r*, reports, adaptive search), one of
    ``measures``, the test metrics its runs record (METRICS).

    ``loss(out, y, reduction, washout)`` is the training loss (``reduction`` "mean" or "sum");
    ``sums(out, y, washout)`` what one test batch adds up; ``metrics(sums, y, washout)`` the
    test metrics from the sums over the whole test split (``y``: all its targets), named
    ``test_<key>`` in the epoch rows; ``throughput(X, seconds)`` extra per-epoch training rates.
    """

    name: str = ""
    headline: str = "test_loss"
    measures: tuple[str, ...] = ("test_loss",)
    eval_batch: int | None = 1024  # test windows per evaluation batch (None: the training batch size)

    def check(self, out: torch.Tensor, y: torch.Tensor, model: nn.Module) -> None:
        """Refuse an output whose shape does not fit the targets (``out`` must be ``y``'s shape)."""
        if out.shape != y.shape:
            raise ValueError(f"task {self.name!r}: {type(model).__name__} returned an output of shape "
                             f"{tuple(out.shape)} for targets of shape {tuple(y.shape)}; they must be equal")

    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean", washout: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def sums(self, out: torch.Tensor, y: torch.Tensor, washout: int = 0) -> dict[str, float]:
        return {"loss": self.loss(out, y, reduction="sum", washout=washout).item(), "n": len(y)}

    def metrics(self, sums: dict[str, float], y: torch.Tensor, washout: int = 0) -> dict[str, float]:
        return {"loss": sums["loss"] / sums["n"]}

    def throughput(self, X: torch.Tensor, seconds: float) -> dict[str, float]:
        return {}


class Classification(Task):
    """Cross-entropy of logits (n, C) against labels (n,); test_acc. Inputs are floats or token ids
    (n, T) right-padded with pad_id: the model handles the padding."""

    name = "classification"
    headline, measures = "test_acc", ("test_loss", "test_acc")

    def check(self, out, y, model) -> None:
        if out.shape[:-1] != y.shape:
            raise ValueError(f"task {self.name!r}: {type(model).__name__} returned logits of shape "
                             f"{tuple(out.shape)} for labels of shape {tuple(y.shape)}; logits must be "
                             f"({', '.join(map(str, y.shape))}, n_classes)")
        top = int(y.max()) if y.numel() else -1
        if top >= out.shape[-1]:
            raise ValueError(f"task {self.name!r}: {type(model).__name__} returned {out.shape[-1]} logits per "
                             f"{'position' if y.dim() > 1 else 'sample'}, but a label is {top}; the model's n_out "
                             f"must be the data set's n_out (classes, or vocab_size for lm)")

    def loss(self, out, y, reduction="mean", washout=0):
        return F.cross_entropy(out.float(), y, reduction=reduction)

    def sums(self, out, y, washout=0):
        return {**super().sums(out, y), "correct": (out.argmax(-1) == y).sum().item()}

    def metrics(self, sums, y, washout=0):
        return {"loss": sums["loss"] / sums["n"], "acc": sums["correct"] / sums["n"]}


class Regression(Task):
    """Squared error summed over outputs and averaged over samples (so one missing planted
    direction costs strength^2, Prop. 4b)."""

    name = "regression"

    def loss(self, out, y, reduction="mean", washout=0):
        se = (out.float() - y).pow(2).sum(-1)
        return se.mean() if reduction == "mean" else se.sum()


class LanguageModelling(Classification):
    """Next-token cross-entropy over every position: logits (n, T, V) against y (n, T), y[:, t] the
    token after X[:, t]. test_loss in nats per token, test_bpc = test_loss / ln 2 (bits per
    character for a character vocabulary); tokens_per_s = training tokens per second of the epoch."""

    name = "lm"
    headline, measures = "test_bpc", ("test_loss", "test_bpc")
    eval_batch = None  # logits are (B, T, V): evaluate in batches of the training size, which fit

    def loss(self, out, y, reduction="mean", washout=0):
        return F.cross_entropy(out.float().flatten(0, -2), y.flatten(), reduction=reduction)

    def sums(self, out, y, washout=0):
        return {"loss": self.loss(out, y, reduction="sum").item(), "n": y.numel()}

    def metrics(self, sums, y, washout=0):
        loss = sums["loss"] / sums["n"]
        return {"loss": loss, "bpc": loss / math.log(2)}

    def throughput(self, X, seconds):
        return {"tokens_per_s": X.numel() / seconds if seconds > 0 else float("nan")}


class Forecasting(Task):
    """One-step-ahead prediction: out (n, T, d_out) against y (n, T, d_out), y[:, t] = series[t + 1].

    The first ``washout`` steps of every window are excluded. test_loss (and the training loss) is
    the MSE: squared error averaged over windows, steps t >= washout and output dimensions alike.
    NRMSE = sqrt(MSE) / std(y), std over the same entries (all windows, steps t >= washout and
    output dimensions pooled, population std of the test targets). test_nrmse: teacher-forced
    (the model reads the true X); test_nrmse_free: free-running (see ``free_run``).
    Predicting the targets exactly gives 0, predicting their mean 1.
    """

    name = "forecasting"
    headline, measures = "test_nrmse", ("test_loss", "test_nrmse", "test_nrmse_free")

    def loss(self, out, y, reduction="mean", washout=0):
        se = (out.to(torch.promote_types(out.dtype, torch.float32))[:, washout:] - y[:, washout:]).pow(2)
        return se.mean() if reduction == "mean" else se.sum()

    def sums(self, out, y, washout=0):
        return {"loss": self.loss(out, y, reduction="sum", washout=washout).item(), "n": y[:, washout:].numel()}

    def metrics(self, sums, y, washout=0):
        mse = sums["loss"] / sums["n"]
        return {"loss": mse, "nrmse": math.sqrt(mse) / target_std(y, washout)}


TASKS: dict[str, Task] = {t.name: t for t in (Classification(), Regression(), LanguageModelling(), Forecasting())}


def task_of(name: str) -> Task:
    """The registered task ``name``; a clear error names the allowed ones."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {tuple(TASKS)}, got {name!r}")
    return TASKS[name]


def task_of_columns(recorded) -> Task:
    """The task whose runs recorded the metrics ``recorded`` (column names with a value): of the tasks
    whose ``measures`` all appear, the one that measures the most (regression, which measures only the
    loss, when no other fits). How a report, which never loads data, knows its study's task."""
    fits = [t for t in TASKS.values() if set(t.measures) - {"test_nrmse_free"} <= set(recorded)]
    return max(fits, key=lambda t: len(t.measures), default=TASKS["regression"])


def loss_fn(task: str, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean", washout: int = 0) -> torch.Tensor:
    """The training loss of ``task`` (see TASKS): cross-entropy for classification (and per token for
    lm); for regression the squared error summed over outputs and averaged over samples; for
    forecasting the MSE over steps t >= washout."""
    return task_of(task).loss(out, y, reduction=reduction, washout=washout)


def target_std(y: torch.Tensor, washout: int = 0) -> float:
    """std(y) over every window, step t >= washout and output dimension (the NRMSE's denominator);
    a constant target is refused (NRMSE is undefined there)."""
    sd = float(y[:, washout:].double().std(unbiased=False))
    if not sd > 0:
        raise ValueError(f"the test targets after the washout ({washout} steps) have std {sd}; NRMSE = RMSE / std "
                         f"is undefined for a constant target")
    return sd
