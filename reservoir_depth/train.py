"""Device-agnostic training loop: AdamW over the trainable set, per-epoch evaluation.

Works for a LottaLoRA model (only A, B, beta and declared extras have
requires_grad) and for a plain model (full training) alike. The device is chosen
automatically (CUDA if present), with bf16 autocast on CUDA. On the CPU a run is
deterministic for a given seed: batches are shuffled by a seeded generator and
dropout draws from a seeded, restored global RNG.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data.dataset import check_dataset
from .distributions import torch_rng
from .scaffold import advance, betas, count_parameters


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast, CUDA only
    progress: bool = True
    beta_every: int = 0  # also record beta every n optimiser steps (0: per epoch only)

    def __post_init__(self) -> None:
        for k in ("epochs", "batch_size"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")


@dataclass
class History:
    """What a run measured: one row per epoch (epoch 0 = before training), beta trajectories."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    beta_steps: list[dict[str, Any]] = field(default_factory=list)
    trainable: int = 0
    total: int = 0
    device: str = "cpu"

    @property
    def final(self) -> dict[str, Any]:
        return self.epochs[-1]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.epochs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str = "auto") -> torch.device:
    """"auto": CUDA when available, else the CPU; any other string is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def loss_fn(task: str, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for classification; for regression the squared error summed over
    outputs and averaged over samples (so one missing planted direction costs strength^2, Prop. 4b)."""
    if task == "classification":
        return F.cross_entropy(out.float(), y, reduction=reduction)
    if task == "regression":
        se = (out.float() - y).pow(2).sum(-1)
        return se.mean() if reduction == "mean" else se.sum()
    raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1024,
             amp: bool = True, task: str = "classification") -> dict[str, float]:
    """Mean loss (and accuracy, for classification) of ``model`` over (X, y)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    loss_sum, correct = 0.0, 0
    for i in range(0, len(X), batch_size):
        xb, yb = X[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        with torch.autocast("cuda", torch.bfloat16, enabled=amp and dev.type == "cuda"):
            out = model(xb)
        loss_sum += loss_fn(task, out, yb, reduction="sum").item()
        if task == "classification":
            correct += (out.argmax(-1) == yb).sum().item()
    model.train(was_training)
    ev = {"loss": loss_sum / len(X)}
    if task == "classification":
        ev["acc"] = correct / len(X)
    return ev


def train(model: nn.Module, data, config: TrainConfig = TrainConfig()) -> History:
    """Train the parameters of ``model`` that require grad on ``data`` (a data.Dataset).

    ``data`` is checked first (finite tensors, naming the data set and split:
    data.dataset.check_dataset). Raises FloatingPointError on a NaN or inf
    training loss, naming the epoch and step, and on a NaN or inf test loss (a
    non-finite test loss is never recorded as a number).
    """
    check_dataset(data)
    dev = resolve_device(config.device)
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")
    counts = count_parameters(model)
    hist = History(trainable=counts.trainable, total=counts.total, device=str(dev))
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    X, y = data.X_train, data.y_train
    n = len(X)
    use_amp = config.amp and dev.type == "cuda"
    task = getattr(data, "task", "classification")

    def record(epoch: int, train_loss: float, seconds: float) -> None:
        ev = evaluate(model, data.X_test, data.y_test, amp=config.amp, task=task)
        if not math.isfinite(ev["loss"]):
            when = "before training (the model's output at init is not finite)" if epoch == 0 else f"after epoch {epoch}"
            raise FloatingPointError(f"test loss on {getattr(data, 'name', 'the data')!r} is {ev['loss']} {when}; "
                                     f"the test inputs are finite, so the model produced it")
        hist.epochs.append({"epoch": epoch, "train_loss": train_loss, "test_loss": ev["loss"],
                            **({"test_acc": ev["acc"]} if "acc" in ev else {}), "seconds": seconds,
                            **{f"beta/{k}": v for k, v in betas(model).items()}})

    step = 0
    with torch_rng(config.seed):
        record(0, float("nan"), 0.0)
        bar = tqdm(total=config.epochs * math.ceil(n / config.batch_size), disable=not config.progress,
                   desc="train", leave=False, dynamic_ncols=True)
        for epoch in range(1, config.epochs + 1):
            advance(model, epoch=epoch - 1)
            model.train()
            t0, loss_sum = time.perf_counter(), 0.0
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, config.batch_size):
                idx = perm[i:i + config.batch_size]
                xb, yb = X[idx].to(dev, non_blocking=True), y[idx].to(dev, non_blocking=True)
                advance(model, step=step)
                with torch.autocast("cuda", torch.bfloat16, enabled=use_amp):
                    loss = loss_fn(task, model(xb), yb)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {step}; "
                                             f"try a lower lr (now {config.lr:g})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(idx)
                step += 1
                if config.beta_every and step % config.beta_every == 0:
                    hist.beta_steps.append({"step": step, **betas(model)})
                bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss_sum / n:.4f}")
            record(epoch, loss_sum / n, time.perf_counter() - t0)
        bar.close()
    return hist
