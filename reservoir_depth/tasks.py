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
    ``counted``: the metric is a fraction of test examples (accuracy), so a difference can be stated in
    examples and a margin below one example per seed is a tie (``is_tie``).

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
    counted: bool = False

    def __post_init__(self) -> None:
        if self.tolerance not in TOLERANCES:
            raise ValueError(f"metric {self.name!r}: tolerance must be one of {tuple(TOLERANCES)}, "
                             f"got {self.tolerance!r}")
        if self.headline_eps not in self.eps:
            raise ValueError(f"metric {self.name!r}: headline_eps {self.headline_eps} is not among eps {self.eps}")

    def points(self, v: float) -> str:
        """A difference ``v`` in the metric's units, as reports write it ("1.00 pp", "0.05 loss units")."""
        return self.fmt.format(self.scale * v)

    def is_tie(self, margin: float, n_test: int | None) -> bool:
        """Whether r* clears its threshold by less than one test example per seed (margin < 1 / n_test): a
        tie, not a saturation. Only a counted metric (accuracy) with n_test recorded can be a tie."""
        return self.counted and n_test is not None and math.isfinite(margin) and margin < 1 / n_test

    def eps_text(self, eps: float, relative: bool) -> str:
        """eps as a report states it: "0.01 (1.00 pp, absolute)", "0.05 (5% of full training, relative)"."""
        if relative:
            return f"{eps:g} ({100 * eps:g}% of full training, relative)"
        return f"{eps:g} ({self.points(eps)}, absolute)"


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("test_acc", True, "accuracy as a fraction: 0.01 = 1 accuracy point (pp)", "{:.2f} pp", 100.0,
           tolerance="absolute", eps=(0.005, 0.01, 0.02), headline_eps=0.01, counted=True),
    Metric("test_bacc", True, "balanced accuracy as a fraction (mean of the per-class accuracies): 0.01 = 1 point (pp)",
           "{:.2f} pp", 100.0, tolerance="absolute", eps=(0.005, 0.01, 0.02), headline_eps=0.01),
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
    rates: tuple[str, ...] = ()  # the keys ``throughput`` returns
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

    def null(self, d) -> dict[str, float]:
        """The test metrics of the null model, the best constant predictor fitted on the training split (the
        bottom of the recovery scale, report.recovery_levels): for a loss-only task, predicting the mean
        training target."""
        y_bar = d.y_train.double().mean(0)
        return {"test_loss": float((d.y_test.double() - y_bar).pow(2).reshape(len(d.y_test), -1).sum(-1).mean())}


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

    def null(self, d) -> dict[str, float]:
        """The majority training class (test_acc) and the training class frequencies p, add-one smoothed
        (test_loss = -mean log p[y]): a classifier that ignores its input."""
        p = _frequencies(d.y_train, d.n_classes)
        y = d.y_test.reshape(-1)
        return {"test_acc": float((y == int(p.argmax())).double().mean()), "test_loss": float(-p[y].log().mean())}


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
    rates = ("tokens_per_s",)
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

    def null(self, d) -> dict[str, float]:
        """The unigram model: training-token frequencies, add-one smoothed, for every next token."""
        p = _frequencies(d.y_train, d.n_classes)
        loss = float(-p[d.y_test.reshape(-1)].log().mean())
        return {"test_loss": loss, "test_bpc": loss / math.log(2)}


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

    def null(self, d) -> dict[str, float]:
        """One step ahead, the better (lower test MSE) of the mean forecast (the training targets' mean after the
        washout) and, for an autonomous series, persistence (y_t predicted as x_t); free-running, the mean
        forecast."""
        w, sd = d.washout, target_std(d.y_test, d.washout)
        y = d.y_test[:, w:].double()
        mean = float((d.y_train[:, w:].double().mean((0, 1)) - y).pow(2).mean())
        mse = min(mean, float((d.X_test[:, w:].double() - y).pow(2).mean())) if autonomous(d.X_test, d.y_test) else mean
        # free-running, a constant is all a predictor without its own input can hold: the mean forecast
        return {"test_loss": mse, "test_nrmse": math.sqrt(mse) / sd, "test_nrmse_free": math.sqrt(mean) / sd}


class NodeClassification(Classification):
    """Class-weighted cross-entropy of node logits (n, N, C) against node labels (n, N), padding nodes
    (label -1) left out; as Dwivedi et al. train PATTERN and CLUSTER, class c weighs (V - V_c) / V in
    a batch of V real nodes, V_c of them in class c (a weighted sum over nodes, divided by V for
    "mean": test_loss is the weighted loss per node). test_acc: the fraction of real nodes classified right; test_bacc (the headline): the
    mean over classes of the per-class accuracy, Dwivedi et al.'s "weighted accuracy" for PATTERN
    and CLUSTER (it does not reward predicting the majority class)."""

    name = "node-classification"
    headline, measures = "test_bacc", ("test_loss", "test_acc", "test_bacc")
    eval_batch = 256  # graphs: X is (n, N, F + N)

    def loss(self, out, y, reduction="mean", washout=0):
        y = y.flatten()
        counts = torch.bincount(y[y >= 0], minlength=out.shape[-1]).float()
        V = counts.sum()
        weight = (V - counts) / V.clamp_min(1)
        loss = F.cross_entropy(out.float().flatten(0, -2), y, weight=weight, ignore_index=-1, reduction="sum")
        return loss / V.clamp_min(1) if reduction == "mean" else loss

    def sums(self, out, y, washout=0):
        real, pred = y >= 0, out.argmax(-1)
        C = out.shape[-1]
        per_class = {f"count_{c}": (y == c).sum().item() for c in range(C)}
        hits = {f"hits_{c}": ((y == c) & (pred == c)).sum().item() for c in range(C)}
        return {"loss": self.loss(out, y, reduction="sum").item(), "n": real.sum().item(),
                "correct": (real & (pred == y)).sum().item(), **per_class, **hits}

    def metrics(self, sums, y, washout=0):
        classes = [k[len("count_"):] for k in sums if k.startswith("count_") and sums[k] > 0]
        return {"loss": sums["loss"] / sums["n"], "acc": sums["correct"] / sums["n"],
                "bacc": sum(sums[f"hits_{c}"] / sums[f"count_{c}"] for c in classes) / len(classes)}

    def null(self, d) -> dict[str, float]:
        """A constant predictor of the real (non-padding) training nodes' add-one smoothed class frequencies: its
        test_acc (the majority class), test_bacc (1 / the number of classes in the test split: one class's
        recall is 1, the others' 0) and its class-weighted test_loss."""
        real = d.y_train[d.y_train >= 0]
        p = _frequencies(real, d.n_classes)
        y = d.y_test
        out = p.log().float().expand(*y.shape, len(p))
        present = torch.unique(y[y >= 0])
        return {"test_acc": float((y[y >= 0] == int(p.argmax())).double().mean()),
                "test_bacc": 1.0 / len(present), "test_loss": float(self.loss(out, y))}


TASKS: dict[str, Task] = {t.name: t for t in (Classification(), Regression(), LanguageModelling(), Forecasting(),
                                              NodeClassification())}


def task_of(name: str) -> Task:
    """The registered task ``name``; a clear error names the allowed ones."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {tuple(TASKS)}, got {name!r}")
    return TASKS[name]


def _frequencies(y: torch.Tensor, n: int) -> torch.Tensor:
    """Add-one smoothed frequencies of the n labels in ``y`` (float64)."""
    return (torch.bincount(y.reshape(-1).long(), minlength=n).double() + 1) / (y.numel() + n)


def autonomous(X: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether a series' inputs are its own past targets (X[:, t + 1] == y[:, t]), so that a
    prediction of y[:, t] can be fed back as x_{t+1} (not so for a driven system such as NARMA)."""
    return X.shape[-1] == y.shape[-1] and (X.shape[1] < 2 or torch.allclose(X[:, 1:], y[:, :-1], rtol=1e-5,
                                                                             atol=1e-6))


def stored_metrics() -> tuple[str, ...]:
    """What a run stores of its final epoch (sweep.execute): every test metric of METRICS, the training loss
    and every task's training rates, read from the registries at call time (a metric added to METRICS is
    stored by the next run without another list to update)."""
    return ("train_loss", *METRICS, *dict.fromkeys(k for t in TASKS.values() for k in t.rates))


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
