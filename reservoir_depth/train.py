"""Device-agnostic training loop: AdamW over the trainable set, per-epoch evaluation.

Works for a LottaLoRA model (only A, B, beta and declared extras have
requires_grad) and for a plain model (full training) alike. The device is chosen
automatically (CUDA if present), with bf16 autocast on CUDA. On the CPU a run is
deterministic for a given seed: batches are shuffled by a seeded generator and
dropout draws from a seeded, restored global RNG.

The loss and the test metrics come from the data set's task, one entry of the ``TASKS``
registry (``tasks.py``, re-exported here): classification (float inputs or padded token
ids), regression, next-token language modelling ("lm": nats per token, bits per character,
tokens/s) and forecasting (MSE after the washout, teacher-forced and free-running NRMSE).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .checks import check_folder
from .data.dataset import check_dataset
from .distributions import torch_rng
from .identity import NOT_IDENTITY, added
from . import distributed
from .readout import READOUTS, check_ridge, fit_readout, readout_of
from .scaffold import advance, betas, count_parameters, set_seed_dtype
from .tasks import Task, autonomous, task_of


SEED_DTYPES = (None, "bfloat16", "float16")
TRAIN_DTYPES = ("float32", "float64")  # TrainConfig.dtype


@dataclass(frozen=True)
class TrainConfig:
    """How ``train`` fits the trainable set (A, B, beta and the declared extras) with AdamW.

    The defaults, the one set every entry point uses (``reservoir-depth train`` generates its flags, their
    defaults and help from these fields): epochs=20, lr=0.001, weight_decay=0.01, batch_size=128, seed=0,
    device="auto" (CUDA when present), amp=True (bf16 autocast, CUDA only). A study's ``[train]`` table
    overrides fields by name (the default study sets epochs = 30, lr = 1e-3, batch_size = 64); the fields it
    leaves out take these defaults. A run id hashes the resolved config (run.Run.config, every default
    filled in), so a change of a default here changes the ids of stored runs that relied on it.

    epochs: passes over the training split (0, with the ridge readout: the closed-form readout alone).
    lr, weight_decay: AdamW's learning rate and decoupled weight decay.
    batch_size: training examples per optimiser step.
    seed: seeds the shuffling and dropout (and, on the command line, the root seed of W_seed and A).
    device: "auto" (CUDA when present) or a torch device ("cpu", "cuda:1", ...).
    amp: bf16 autocast, CUDA only.
    progress: a progress bar per epoch.
    beta_every: also record beta every n optimiser steps (0: per epoch only).
    free_run: forecasting: also measure the free-running NRMSE (test_nrmse_free) through model.step; None:
        when the series is autonomous (its inputs are its own past, X[:, t + 1] = y[:, t]), not for a
        driven one (NARMA).
    log_dir: TensorBoard event files (per-step loss, every key of the epoch rows, beta per layer) under this
        folder; None: no logging and no tensorboard import. Needs `pip install tensorboard`; see TensorBoardLog.
    seed_dtype: hold every scaffold's W_seed in this dtype while training (scaffold.set_seed_dtype):
        "bfloat16" under CUDA's bf16 autocast saves the per-step cast of W_seed and half its memory; None:
        the parameter dtype.
    compile: run the training forward and backward under torch.compile (evaluation stays eager): on the CPU
        a LottaLoRA LM step went from 0.85x to 0.78x of full training (docs/guide.md#performance). Needs a
        working compiler (a C++ toolchain on the CPU, Triton on CUDA); results differ from eager in rounding.
    readout: "ridge": the model's readout (the reservoir family's) is not trained by AdamW but solved in
        closed form, lambda = ``ridge`` (readout.fit_readout), before epoch 0 and after every epoch; epoch 0
        is then an echo-state network. A model with nothing else to train stops there (no epoch loop).
    ridge: lambda of the ridge readout.
    dtype: the parameters' and the data's dtype while training and evaluating: "float64" for a reservoir whose
        one-step error is near float32's resolution (a Lorenz ESN: 8.3e-7 NRMSE in float32, 2.1e-7 in
        float64); it turns CUDA's bf16 autocast off.
    """

    CHOICES: ClassVar[dict[str, tuple]] = {"seed_dtype": SEED_DTYPES, "readout": READOUTS,
                                           "dtype": TRAIN_DTYPES}  # the allowed values
    COUNTS: ClassVar[tuple[str, ...]] = ("batch_size",)  # ints >= 1 (epochs may be 0 with the ridge readout)

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    progress: bool = field(default=True, metadata=NOT_IDENTITY)
    beta_every: int = 0
    free_run: bool | None = field(default=None, metadata=added(None))
    log_dir: str | None = field(default=None, metadata=NOT_IDENTITY)
    seed_dtype: str | None = field(default=None, metadata=added(None))
    compile: bool = field(default=False, metadata=added(False))
    readout: str = field(default="gradient", metadata=added("gradient"))
    ridge: float = field(default=1e-6, metadata=added(1e-6))
    dtype: str = field(default="float32", metadata=added("float32"))

    def __post_init__(self) -> None:
        for k in self.COUNTS:
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)!r}")
        if self.epochs < (0 if self.readout == "ridge" else 1):
            allowed = ">= 0 (0: the ridge readout alone, an echo-state network)" if self.readout == "ridge" else \
                ">= 1 (epochs = 0 fits nothing with readout='gradient'; readout='ridge' allows it)"
            raise ValueError(f"epochs must be {allowed}, got {self.epochs!r}")
        if self.dtype not in TRAIN_DTYPES:
            raise ValueError(f"dtype must be one of {TRAIN_DTYPES}, got {self.dtype!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.free_run is not None and not isinstance(self.free_run, bool):
            raise ValueError(f"free_run must be True, False or None (when the series is autonomous), "
                             f"got {self.free_run!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        check_ridge(self.ridge)
        if self.seed_dtype not in SEED_DTYPES:
            raise ValueError(f"seed_dtype must be one of {SEED_DTYPES}, got {self.seed_dtype!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device must be 'auto' or a torch device ('cpu', 'cuda', 'cuda:1', 'mps', ...), "
                                 f"got {self.device!r}") from None
        if self.log_dir is not None and (not isinstance(self.log_dir, (str, os.PathLike)) or not str(self.log_dir)):
            raise ValueError(f"log_dir must be a folder path (str or os.PathLike) or None (no logging), "
                             f"got {self.log_dir!r}")
        if self.log_dir is not None:
            check_folder(self.log_dir, "log_dir")


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


class TensorBoardLog:
    """A run's scalars as TensorBoard event files under ``log_dir`` (torch.utils.tensorboard.SummaryWriter).

    Tags: ``step/train_loss`` (each optimiser step's batch loss; under torchrun rank 0's share of
    the batch), ``step/beta/<layer>`` (with TrainConfig.beta_every), ``epoch/<key>`` for every
    key of an epoch row (train_loss, test_*, seconds, beta/<layer>, ...; step = the epoch) and
    whatever a caller adds with ``scalars`` (a sweep's ``spectra/...`` measures). Non-finite values
    (epoch 0 has no train_loss: NaN) are not written. Read them with ``tensorboard --logdir DIR``.
    Needs the tensorboard package (``pip install tensorboard``); an ImportError says so.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.writer = self.check()(log_dir=str(log_dir))

    @staticmethod
    def check():
        """torch's SummaryWriter; an ImportError naming ``pip install tensorboard`` when it is missing."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("logging (TrainConfig.log_dir, --log-dir) writes TensorBoard event files and needs "
                              "the tensorboard package: pip install tensorboard (or pip install "
                              "'reservoir-depth[log]')") from e
        return SummaryWriter

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        """``prefix/<key>`` = value at ``step``, for every finite number among ``values``."""
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def epoch(self, row: Mapping[str, Any]) -> None:
        self.scalars("epoch", {k: v for k, v in row.items() if k != "epoch"}, row["epoch"])

    def hparams(self, values: Mapping[str, Any], metrics: Sequence[str]) -> None:
        """The run's hyperparameters (TensorBoard's HParams tab), judged by the scalar tags ``metrics``;
        a value other than a number, bool or str is written as its JSON text."""
        from torch.utils.tensorboard.summary import hparams  # tensorboard is optional (check())

        plain = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v, sort_keys=True)
                 for k, v in values.items()}
        for summary in hparams(plain, dict.fromkeys(metrics, 0.0)):
            self.writer.file_writer.add_summary(summary)

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NoLog(TensorBoardLog):
    """No logging (TrainConfig.log_dir None, or a process other than rank 0): nothing imported or written."""

    def __init__(self) -> None:
        pass

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        pass

    def hparams(self, values: Mapping[str, Any], metrics: Sequence[str]) -> None:
        pass

    def close(self) -> None:
        pass


def hparams_of(config: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """A run's hyperparameters: the TrainConfig's fields (less progress and log_dir) and the model's
    ScaffoldConfig (r, alpha, the spec of W_seed, ...) when it is scaffolded."""
    out = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in ("progress", "log_dir")}
    scaffolded = getattr(model, "scaffold_config", None)
    return {**out, **(scaffolded.to_dict() if scaffolded is not None else {})}


def resolve_device(device: str = "auto") -> torch.device:
    """"auto": CUDA when available, else the CPU; any other string is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def output_of(out: Any, model: nn.Module) -> torch.Tensor:
    """The tensor a task reads from a model's output: the output itself, or its ``.logits`` (a
    transformers ModelOutput); anything else is refused, naming the model and the type."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise ValueError(f"{type(model).__name__} returned a {type(out).__name__}; the trainer needs a tensor, or an "
                     f"object with a .logits tensor (a transformers ModelOutput)")


OFF = "or set free_run = False (TrainConfig, or [train] of a study)"


def check_free_run(model: nn.Module, X: torch.Tensor, y: torch.Tensor, name: str = "the data") -> None:
    """Free-running needs ``model.step(x_t, state)`` and an autonomous series (see ``autonomous``)."""
    if not autonomous(X, y):
        raise ValueError(f"dataset {name!r}: its inputs are not the series' own past (X[:, t + 1] != y[:, t]; X "
                         f"{tuple(X.shape)}, y {tuple(y.shape)}), so predictions cannot be fed back as inputs and "
                         f"free-running is undefined (e.g. a driven system such as NARMA); {OFF}")
    if not callable(getattr(model, "step", None)):
        raise TypeError(f"{type(model).__name__} has no step(x_t, state) -> (y_t, state) method, which the "
                        f"free-running evaluation (test_nrmse_free) needs; add one, {OFF}")


def solved_readout(model: nn.Module, task: Task, config: TrainConfig) -> list[nn.Parameter]:
    """The readout's parameters that TrainConfig.readout = "ridge" solves in closed form (none for "gradient");
    a ValueError when the task or the model cannot take it (sweep.check_study asks before any run)."""
    if config.readout == "gradient":
        return []
    if task.name != "forecasting":
        raise ValueError(f"readout={config.readout!r} fits a least-squares readout of reservoir states and is for "
                         f"the forecasting task; this data set's task is {task.name!r}: use readout='gradient'")
    return list(readout_of(model).parameters())


@torch.no_grad()
def free_run(model: nn.Module, X: torch.Tensor, washout: int = 0) -> torch.Tensor:
    """Free-running predictions (n, T, d_out) through ``model.step``: steps t < max(washout, 1) read
    the true x_t (teacher forcing warms the state up), every later step reads the model's own
    previous prediction as x_t. Compare with y over steps t >= washout."""
    state, prev, outs = None, None, []
    for t in range(X.shape[1]):
        x_t = X[:, t] if t < max(washout, 1) else prev
        prev, state = model.step(x_t, state)
        outs.append(prev)
    return torch.stack(outs, 1)


@torch.no_grad()
def generate(model: nn.Module, warmup: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Closed-loop forecast (n, n_steps, d_out) through ``model.step``: the warmup (n, T_w, d_in), T_w >= 1, is read
    teacher-forced, then each prediction is fed back as the next input; output k forecasts the step k + 1 after
    the warmup. ``free_run`` over the warmup padded by n_steps - 1 steps, read from its last warmup step."""
    if warmup.dim() != 3 or warmup.shape[1] < 1:
        raise ValueError(f"warmup must be (n, T_w >= 1, d_in), got shape {tuple(warmup.shape)}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}")
    if not callable(getattr(model, "step", None)):
        raise TypeError(f"{type(model).__name__} has no step(x_t, state) -> (y_t, state) method; generate needs one")
    n, T, d = warmup.shape
    first, _ = model.step(warmup[:, 0], None)
    if first.shape[-1] != d:
        raise ValueError(f"the model predicts {first.shape[-1]} outputs but reads {d} inputs: a closed loop feeds "
                         f"predictions back as inputs, so they must match (a series forecast from its own past)")
    X = torch.cat([warmup, warmup.new_zeros(n, n_steps - 1, d)], 1)
    return free_run(model, X, T)[:, T - 1:]


@torch.no_grad()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1024,
             amp: bool = True, task: str = "classification", washout: int = 0,
             free: bool = False) -> dict[str, float]:
    """The test metrics of ``task`` (see TASKS) of ``model`` over (X, y): mean loss, and accuracy
    (classification), bpc (lm), nrmse (forecasting; ``free``: also nrmse_free, free-running)."""
    t = task_of(task)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    sums: dict[str, float] = {}
    free_sums: dict[str, float] = {}
    for i in range(0, len(X), batch_size):
        xb, yb = X[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        with torch.autocast("cuda", torch.bfloat16, enabled=amp and dev.type == "cuda"):
            out = output_of(model(xb), model)
            pred_free = free_run(model, xb, washout) if free else None
        t.check(out, yb, model)
        for k, v in t.sums(out, yb, washout).items():
            sums[k] = sums.get(k, 0) + v
        if free:
            t.check(pred_free, yb, model)
            for k, v in t.sums(pred_free, yb, washout).items():
                free_sums[k] = free_sums.get(k, 0) + v
    model.train(was_training)
    ev = t.metrics(sums, y, washout)
    if free:
        ev["nrmse_free"] = t.metrics(free_sums, y, washout)["nrmse"]
    return ev


def input_mismatch(model: nn.Module, data, error: Exception) -> ValueError | None:
    """A ValueError naming the model's first layer with an input size (``in_features``) and the data's
    input shape, when they disagree (the ``error`` the first forward raised is kept as its cause);
    None when they agree or the model has no such layer (the error is then the model's own)."""
    name, layer = next(((n, m) for n, m in model.named_modules()  # the first module holding weights of its own
                        if isinstance(getattr(m, "in_features", None), int) or next(m.parameters(recurse=False), None) is not None),
                       (None, None))
    if not isinstance(getattr(layer, "in_features", None), int) or not torch.is_floating_point(data.X_train):
        return None
    shape = tuple(data.X_train.shape[1:])
    if layer.in_features in (shape[-1:] + (math.prod(shape),)):
        return None
    out = ValueError(f"the model's first layer {name!r} ({type(layer).__name__}) takes {layer.in_features} input "
                     f"features, but {getattr(data, 'name', 'the data')!r} has inputs of shape {shape} per example "
                     f"({math.prod(shape)} features flattened): build the model for d_in={math.prod(shape)} "
                     f"({type(error).__name__}: {str(error).splitlines()[0]})")
    out.__cause__ = error
    return out


def _as_dtype(data, dtype: torch.dtype):
    """A copy of ``data`` whose floating tensors (X and y of both splits) are of ``dtype`` (token ids stay)."""
    out = copy.copy(data)
    for k in ("X_train", "y_train", "X_test", "y_test"):
        if getattr(data, k).is_floating_point():
            setattr(out, k, getattr(data, k).to(dtype))
    return out


def adamw(params: Sequence[torch.Tensor], lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """The trainer's AdamW. On the CPU its foreach path (torch's default only on accelerators): one call per
    operation over every tensor, so the many small tensors of a LottaLoRA model (A, B, beta per layer) cost a
    step no more Python than full training's few; on the CPU it computes the for-loop path's numbers bit for
    bit (tests/test_group.py)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                             foreach=True if torch.device(device).type == "cpu" else None)


def train(model: nn.Module, data, config: TrainConfig = TrainConfig(),
          hparams: Mapping[str, Any] | None = None) -> History:
    """Train the parameters of ``model`` that require grad on ``data`` (a data.Dataset).

    The loss and the test metrics are those of ``data.task`` (TASKS): one row per epoch with
    train_loss, test_loss and test_acc (classification), test_bpc and tokens_per_s (lm), test_nrmse
    and test_nrmse_free (forecasting, over steps t >= data.washout; see TrainConfig.free_run).
    ``data`` is checked first (finite tensors, naming the data set and split:
    data.dataset.check_dataset); free-running forecasting needs ``model.step`` (check_free_run).
    Raises FloatingPointError on a NaN or inf training loss, naming the epoch and step, and on a
    NaN or inf test loss (a non-finite test loss is never recorded as a number).
    With ``config.log_dir``, the run is also written as TensorBoard events (TensorBoardLog; under
    torchrun by rank 0 alone) with its hyperparameters (hparams_of, and ``hparams``: a sweep's study,
    method, ...), judged by the epoch rows' train_loss and test metrics.
    """
    check_dataset(data)
    t = task_of(getattr(data, "task", "classification"))
    washout = int(getattr(data, "washout", 0) or 0)
    free = t.name == "forecasting" and (config.free_run if config.free_run is not None
                                        else autonomous(data.X_test, data.y_test))
    if free:
        check_free_run(model, data.X_test, data.y_test, getattr(data, "name", "the data"))
    dev = distributed.local_device(resolve_device(config.device))
    distributed.init_from_env(dev)  # under torchrun: join the process group (gloo / NCCL)
    rank, world = distributed.world()
    if config.batch_size < world:
        raise ValueError(f"batch_size {config.batch_size} is smaller than the {world} processes sharing each batch")
    model.to(dev)
    dtype = getattr(torch, config.dtype)
    if config.dtype != "float32":
        model.to(dtype)
        data = _as_dtype(data, dtype)
    if config.seed_dtype is not None:
        set_seed_dtype(model, getattr(torch, config.seed_dtype))
    solved = solved_readout(model, t, config)
    params = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in solved)]
    if not params and not solved:
        raise ValueError("the model has no trainable parameter")
    net = distributed.wrap(model, dev)  # DDP over the trainable tensors, or the model itself
    if config.compile:
        net = torch.compile(net)
    counts = count_parameters(model)
    hist = History(trainable=counts.trainable, total=counts.total, device=str(dev))
    opt = adamw(params, config.lr, config.weight_decay, dev) if params else None
    gen = torch.Generator().manual_seed(config.seed)
    X, y = data.X_train, data.y_train
    n = len(X)
    use_amp = config.amp and dev.type == "cuda" and config.dtype == "float32"

    def record(epoch: int, train_loss: float, seconds: float) -> None:
        if solved:
            fit_readout(model, X, y, config.ridge, washout, t.eval_batch or config.batch_size)
        ev = evaluate(model, data.X_test, data.y_test, batch_size=t.eval_batch or config.batch_size, amp=use_amp,
                      task=t.name, washout=washout, free=free)
        if not math.isfinite(ev["loss"]):
            when = "before training (the model's output at init is not finite)" if epoch == 0 else f"after epoch {epoch}"
            raise FloatingPointError(f"test loss on {getattr(data, 'name', 'the data')!r} is {ev['loss']} {when}; "
                                     f"the test inputs are finite, so the model produced it")
        hist.epochs.append({"epoch": epoch, "train_loss": train_loss, **{f"test_{k}": v for k, v in ev.items()},
                            "seconds": seconds, **t.throughput(X, seconds),
                            **{f"beta/{k}": v for k, v in betas(model).items()}})
        log.epoch(hist.epochs[-1])

    step = 0
    log = TensorBoardLog(config.log_dir) if config.log_dir is not None and distributed.is_main() else NoLog()
    with torch_rng(config.seed), log:
        try:
            record(0, float("nan"), 0.0)  # the model's first forward
        except RuntimeError as e:
            raise input_mismatch(model, data, e) or e
        log.hparams({**hparams_of(config, model), **(hparams or {})},
                    [f"epoch/{k}" for k in hist.epochs[0] if k == "train_loss" or k.startswith("test_")])
        bar = tqdm(total=config.epochs * math.ceil(n / config.batch_size), disable=not config.progress or rank > 0,
                   desc="train", leave=False, dynamic_ncols=True)
        for epoch in range(1, config.epochs + 1 if params else 1):
            advance(model, epoch=epoch - 1)
            model.train()
            t0, loss_sum = time.perf_counter(), 0.0
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, config.batch_size):
                idx = perm[i:i + config.batch_size]
                if len(idx) < world:  # a last batch with fewer rows than processes is skipped by all
                    continue
                mine, weight = distributed.shard(idx)  # this process's rows of the global batch
                xb, yb = X[mine].to(dev, non_blocking=True), y[mine].to(dev, non_blocking=True)
                advance(model, step=step)
                with torch.autocast("cuda", torch.bfloat16, enabled=use_amp):
                    loss = t.loss(output_of(net(xb), model), yb, washout=washout)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {step}; "
                                             f"try a lower lr (now {config.lr:g})")
                opt.zero_grad(set_to_none=True)
                (loss * weight if world > 1 else loss).backward()
                opt.step()
                batch_loss = loss.item()
                loss_sum += batch_loss * len(mine)
                step += 1
                log.scalars("step", {"train_loss": batch_loss}, step)
                if config.beta_every and step % config.beta_every == 0:
                    beta = betas(model)
                    hist.beta_steps.append({"step": step, **beta})
                    log.scalars("step/beta", beta, step)
                bar.update()
            loss_sum = distributed.total(loss_sum, dev)  # over the processes (itself with one)
            bar.set_postfix(epoch=epoch, loss=f"{loss_sum / n:.4g}")
            record(epoch, loss_sum / n, time.perf_counter() - t0)
        bar.close()
    return hist
