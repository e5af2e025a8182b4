"""Runs trained together: the runs of a study that share data, architecture and batch schedule train as
one vectorised model, each run a lane of stacked tensors.

Which runs (``group_key``): the same data set, architecture and TrainConfig but for lr and weight_decay
(so the same seed: the same batches, and through the same seeded global RNG the same dropout masks),
on the CPU, an ``mlp`` whose layers are nn.Linear (full training, the twin, a LottaLoRA head) or
static-schedule ScaffoldLinear (LottaLoRA at any rank). Every layer computes eq. (1) for all lanes g at
once, with batched products over lanes:

    y_g = beta_g W_g x_g + s_g B_g (A_g x_g) + b_g

A plain layer's lane has beta_g = 1 (not trained) and no adapter. Lanes whose W trains (full, twin, a
head) and lanes whose W is W_seed are separate stacks, so no weight gradient is computed for W_seed;
adapters are stacked per rank bucket (ranks within a factor of 4), A and B zero-padded to the bucket's
largest rank. The padded rows of A and columns of B get exactly zero gradients (their products meet the
other factor's zeros), so under AdamW they stay zero and each lane computes what its run computes alone;
only the rounding of the batched products differs (tests/test_group.py: the same metrics within float
tolerance and the same r*). AdamW runs stacked over lanes with each lane's own lr and weight decay,
elementwise as torch.optim.AdamW's for-loop path computes it; a tensor a lane does not train (a frozen
seeded bias, beta of a plain layer) gets lr 0 there, which leaves it bit for bit.

A run whose loss or test loss is not finite fails alone, with the error it raises alone; the others go on.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .data.dataset import check_dataset
from .distributions import torch_rng
from .models.mlp import MLP
from .scaffold import ScaffoldLinear, betas, count_parameters
from .train import History, TrainConfig, resolve_device, task_of

GROUPED_ARCHS = ("mlp",)  # families whose instances GroupedMLP stacks
GROUPED_TASKS = ("classification", "regression")
PER_LANE = ("lr", "weight_decay")  # TrainConfig fields that may differ between the lanes of a group
NOT_SCHEDULE = ("progress", "log_dir")  # fields that change nothing a lane computes


def group_key(run) -> str | None:
    """The key runs trained together share (a study.Run), or None when the run trains alone: a family
    outside GROUPED_ARCHS, a destabilised schedule, torch.compile, a held-lower W_seed, a ridge readout,
    per-step beta records, a TensorBoard log or a device other than the CPU."""
    if run.arch.get("name") not in GROUPED_ARCHS:
        return None
    cfg = TrainConfig(**{**run.train, "seed": run.seed})
    if (cfg.compile or cfg.seed_dtype is not None or cfg.readout != "gradient" or cfg.beta_every
            or cfg.log_dir is not None or resolve_device(cfg.device).type != "cpu"):
        return None
    if run.method != "full" and run.scaffold.get("schedule", "static") != "static":
        return None
    schedule = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in PER_LANE + NOT_SCHEDULE}
    ds = run.dataset if isinstance(run.dataset, str) else dict(run.dataset)
    return json.dumps({"study": run.study, "dataset": ds, "arch": dict(run.arch), "train": schedule},
                      sort_keys=True, default=str)


def groups(runs: Sequence[Any]) -> list[list[Any]]:
    """``runs`` as units of work: the runs of one group_key together (in order of first appearance), every
    run with no key alone."""
    units: list[list[Any]] = []
    by_key: dict[str, list[Any]] = {}
    for run in runs:
        key = group_key(run)
        if key is None:
            units.append([run])
        elif key in by_key:
            by_key[key].append(run)
        else:
            by_key[key] = [run]
            units.append(by_key[key])
    return units


# ----------------------------------------------------------------------------- the stacked model

def _bucket(r: int) -> int:
    """Adapters of ranks in one bucket (1-3, 4-15, 16-63, ...) are padded to the largest and stacked."""
    return -1 if r == 0 else (r.bit_length() - 1) // 2


@dataclass
class _Lane:
    """One run's layer as the group reads it: W (frozen W_seed or a trained weight), beta (None: a plain
    layer), A, B, s, bias (None: no bias) and which of them train."""

    W: torch.Tensor
    W_trains: bool
    beta: torch.Tensor | None
    A: torch.Tensor | None
    B: torch.Tensor | None
    s: float
    bias: torch.Tensor | None
    bias_trains: bool

    @property
    def r(self) -> int:
        return 0 if self.A is None else int(self.A.shape[0])

    @classmethod
    def of(cls, layer: nn.Module, name: str) -> "_Lane":
        if type(layer) is nn.Linear:
            b = layer.bias
            return cls(layer.weight, layer.weight.requires_grad, None, None, None, 0.0, b,
                       b is not None and b.requires_grad)
        if type(layer) is ScaffoldLinear:
            if layer.config.schedule != "static" or layer.seed_dtype is not None:
                raise ValueError(f"layer {name!r}: schedule {layer.config.schedule!r} / seed dtype "
                                 f"{layer.seed_dtype} cannot train in a group (static, parameter dtype only)")
            b = layer.bias
            return cls(layer.W_seed, False, layer.beta, layer.lora_A if layer.r else None,
                       layer.lora_B if layer.r else None, layer.s, b, b is not None and b.requires_grad)
        raise ValueError(f"layer {name!r} is a {type(layer).__name__}; a group stacks nn.Linear and ScaffoldLinear")


def _parts(x: torch.Tensor, spans: Sequence[tuple], G: int) -> Sequence[torch.Tensor]:
    """x for each span (start, stop, ...) of lanes: a shared (N, d) x expanded, a stacked one split."""
    if x.dim() == 2:
        return [x.expand(b - a, *x.shape) for a, b, *_ in spans]
    return x.split([b - a for a, b, *_ in spans]) if len(spans) > 1 else [x]


def _segments(keys: Sequence[Any]) -> list[tuple[int, int, Any]]:
    """Maximal runs of equal keys: (start, stop, key)."""
    out: list[tuple[int, int, Any]] = []
    for g, k in enumerate(keys):
        if out and out[-1][2] == k:
            out[-1] = (out[-1][0], g + 1, k)
        else:
            out.append((g, g + 1, k))
    return out


class _Stack:
    """A stacked tensor (lanes first) and the learning rate and weight decay of each of its lanes
    (lr 0 where the lane does not train it)."""

    def __init__(self, value: torch.Tensor, lr: Sequence[float], wd: Sequence[float]) -> None:
        self.value = value.detach().clone().requires_grad_(any(lr))
        self.lr, self.wd = list(lr), list(wd)


class GroupedLinear:
    """Eq. (1) of one layer for G lanes: W stacked per segment of lanes whose W trains alike, beta (G,),
    adapters per rank bucket (zero-padded), bias (G, 1, d_out)."""

    def __init__(self, lanes: Sequence[_Lane], lrs: Sequence[float], wds: Sequence[float]) -> None:
        G = len(lanes)
        self.lanes = lanes
        d_out, d_in = lanes[0].W.shape
        if any(tuple(l.W.shape) != (d_out, d_in) for l in lanes):
            raise ValueError(f"lanes of a layer differ in shape: {[tuple(l.W.shape) for l in lanes]}")
        zero = [0.0] * G
        self.base = [(a, b, _Stack(torch.stack([l.W for l in lanes[a:b]]), lrs[a:b] if t else zero[a:b], wds[a:b]))
                     for a, b, t in _segments([l.W_trains for l in lanes])]
        self.beta = None
        if any(l.beta is not None for l in lanes):
            vals = torch.stack([l.beta.detach() if l.beta is not None else torch.ones((), dtype=l.W.dtype)
                                for l in lanes])
            self.beta = _Stack(vals.view(G, 1, 1), [lr if l.beta is not None and l.beta.requires_grad else 0.0
                                                    for l, lr in zip(lanes, lrs)], wds)
        self.adapters = []
        for a, b, k in _segments([_bucket(l.r) for l in lanes]):
            if k == -1:
                continue
            R = max(l.r for l in lanes[a:b])
            A = torch.zeros(b - a, R, d_in, dtype=lanes[a].W.dtype)
            B = torch.zeros(b - a, d_out, R, dtype=lanes[a].W.dtype)
            for i, l in enumerate(lanes[a:b]):
                A[i, :l.r], B[i, :, :l.r] = l.A.detach(), l.B.detach()
            s = torch.tensor([l.s for l in lanes[a:b]], dtype=A.dtype).view(-1, 1, 1)
            self.adapters.append((a, b, _Stack(A, lrs[a:b], wds[a:b]), _Stack(B, lrs[a:b], wds[a:b]), s))
        self.bias = None
        if any(l.bias is not None for l in lanes):
            vals = torch.stack([l.bias.detach() if l.bias is not None else torch.zeros(d_out, dtype=l.W.dtype)
                                for l in lanes])
            self.bias = _Stack(vals.view(G, 1, d_out), [lr if l.bias_trains else 0.0 for l, lr in zip(lanes, lrs)],
                               wds)

    def stacks(self) -> list[_Stack]:
        return [st for *_, st in self.base] + [x for x in (self.beta, self.bias) if x is not None] + \
            [st for *_, A, B, s in self.adapters for st in (A, B)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, d_in) shared by every lane (a first layer) or (G, N, d_in); returns (G, N, d_out).
        Lanes are taken apart with split (whose backward is one cat), not slices (each of whose backwards
        would fill a zero tensor of the whole stack)."""
        G = len(self.lanes)
        xs = _parts(x, self.base, G)
        parts = [torch.bmm(xb, st.value.transpose(1, 2)) for xb, (_, _, st) in zip(xs, self.base)]
        h = parts[0] if len(parts) == 1 else torch.cat(parts)
        if self.beta is not None:
            h = h * self.beta.value if self.bias is None else torch.addcmul(self.bias.value, h, self.beta.value)
        elif self.bias is not None:
            h = h + self.bias.value
        if not self.adapters:
            return h
        spans, done = [], 0
        for a, b, *_ in self.adapters:
            if a > done:
                spans.append((done, a, None))
            spans.append((a, b, _))
            done = b
        if done < G:
            spans.append((done, G, None))
        hs, xs = h.split([b - a for a, b, _ in spans]), _parts(x, spans, G)
        adapters = iter(self.adapters)
        out = []
        for hb, xb, (a, b, tag) in zip(hs, xs, spans):
            if tag is None:
                out.append(hb)
                continue
            _, _, A, B, s = next(adapters)
            u = torch.bmm(xb, A.value.transpose(1, 2))  # A x: (lanes, N, R)
            out.append(torch.baddbmm(hb, u, (B.value * s).transpose(1, 2)))  # + s B (A x)
        return torch.cat(out)

    def write_back(self) -> None:
        """Copy each lane's trained values into its run's own tensors."""
        with torch.no_grad():
            for a, b, st in self.base:
                for i, l in enumerate(self.lanes[a:b]):
                    if l.W_trains:
                        l.W.copy_(st.value[i])
            for g, l in enumerate(self.lanes):
                if l.beta is not None:
                    l.beta.copy_(self.beta.value[g, 0, 0])
                if l.bias is not None and l.bias_trains:
                    l.bias.copy_(self.bias.value[g, 0])
            for a, b, A, B, _ in self.adapters:
                for i, l in enumerate(self.lanes[a:b]):
                    l.A.copy_(A.value[i, :l.r])
                    l.B.copy_(B.value[i, :, :l.r])


class GroupedMLP:
    """The MLP family (models.mlp.MLP: flatten, [Linear, activation, Dropout] * depth, head) for G lanes.
    Dropout draws one mask per layer and step, of one run's shape, from the global RNG, as each run alone
    draws it (the same seed gives every lane the same masks)."""

    def __init__(self, models: Sequence[nn.Module], lrs: Sequence[float], wds: Sequence[float]) -> None:
        first = models[0]
        for m in models:
            if type(m) is not MLP:
                raise ValueError(f"a group stacks models.mlp.MLP instances, got {type(m).__name__}")
            if (len(m.layers), type(m.act), m.drop.p) != (len(first.layers), type(first.act), first.drop.p):
                raise ValueError("the models of a group differ in depth, activation or dropout")
        names = [f"layers.{i}" for i in range(len(first.layers))] + ["head"]
        self.layers = [GroupedLinear([_Lane.of(m.get_submodule(n), n) for m in models], lrs, wds) for n in names]
        self.act, self.p = first.act, float(first.drop.p)
        covered = {id(t) for layer in self.layers for l in layer.lanes
                   for t in (l.W, l.beta, l.A, l.B, l.bias) if t is not None}
        for m in models:
            left = [n for n, p in m.named_parameters() if p.requires_grad and id(p) not in covered]
            if left:
                raise ValueError(f"trainable parameters a group does not stack: {left}")

    def stacks(self) -> list[_Stack]:
        return [st for layer in self.layers for st in layer.stacks()]

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
            if train and self.p > 0:  # the mask F.dropout draws for one run's (N, d) activations
                x = x * torch.dropout(torch.ones(x.shape[1:], dtype=x.dtype), self.p, True)
        return self.layers[-1](x)

    def write_back(self) -> None:
        for layer in self.layers:
            layer.write_back()


class StackedAdamW:
    """torch.optim.AdamW (decoupled weight decay, betas (0.9, 0.999), eps 1e-8) over stacked tensors, each
    lane with its own lr and weight decay: the elementwise operations of torch's for-loop implementation,
    in its order, with the per-lane scalars as (G, 1, ...) float32 tensors."""

    def __init__(self, stacks: Sequence[_Stack], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.stacks = [st for st in stacks if st.value.requires_grad]
        self.beta1, self.beta2, self.eps, self.step_t = betas[0], betas[1], eps, 0
        self.m = [torch.zeros_like(st.value) for st in self.stacks]
        self.v = [torch.zeros_like(st.value) for st in self.stacks]

        def lanes(vals, st):
            return torch.tensor(vals, dtype=st.value.dtype).view(-1, *(1,) * (st.value.dim() - 1))

        self.decay = [lanes([1 - lr * wd for lr, wd in zip(st.lr, st.wd)], st) for st in self.stacks]
        self.lr = [st.lr for st in self.stacks]
        self._lanes = lanes

    def zero_grad(self) -> None:
        for st in self.stacks:
            st.value.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.step_t += 1
        bc1, bc2 = 1 - self.beta1 ** self.step_t, 1 - self.beta2 ** self.step_t
        bc2_sqrt = bc2 ** 0.5
        for st, m, v, decay, lr in zip(self.stacks, self.m, self.v, self.decay, self.lr):
            p, grad = st.value, st.value.grad
            if grad is None:
                grad = torch.zeros_like(p)
            p.mul_(decay)
            m.lerp_(grad, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            p.add_(m.mul(self._lanes([-(x / bc1) for x in lr], st)).div_(denom))


# ----------------------------------------------------------------------------- training

@torch.no_grad()
def _evaluate(net: GroupedMLP, X: torch.Tensor, y: torch.Tensor, batch_size: int, task, alive: Sequence[int]):
    """Each live lane's test metrics, as train.evaluate computes them for its run alone."""
    sums: dict[int, dict[str, float]] = {g: {} for g in alive}
    for i in range(0, len(X), batch_size):
        xb, yb = X[i:i + batch_size], y[i:i + batch_size]
        out = net(xb, train=False)
        for g in alive:
            for k, v in task.sums(out[g], yb).items():
                sums[g][k] = sums[g].get(k, 0) + v
    return {g: task.metrics(sums[g], y) for g in alive}


def train_group(models: Sequence[nn.Module], data, configs: Sequence[TrainConfig]) -> list[History | Exception]:
    """Train ``models`` (one per run, each as ``train.train`` would alone) together on ``data``: one History
    per model, or the exception that run raises (a non-finite loss or test loss) while the others go on.
    Trained values are written back into each model. Raises ValueError when the runs cannot train as a
    group (see group_key; the models must be MLPs of the same shape on the CPU)."""
    check_dataset(data)
    t = task_of(getattr(data, "task", "classification"))
    if t.name not in GROUPED_TASKS:
        raise ValueError(f"task {t.name!r} does not train in a group (allowed: {GROUPED_TASKS})")
    c0 = configs[0]
    same = {f.name for f in fields(c0)} - set(PER_LANE) - set(NOT_SCHEDULE)
    for c in configs:
        diff = [k for k in same if getattr(c, k) != getattr(c0, k)]
        if diff:
            raise ValueError(f"the runs of a group differ in {diff}: only {PER_LANE} may")
    if resolve_device(c0.device).type != "cpu" or c0.compile or c0.seed_dtype or c0.beta_every \
            or c0.readout != "gradient" or c0.log_dir is not None:
        raise ValueError("a group trains on the CPU, without compile, seed_dtype, beta_every, a ridge readout or a log")
    for m in models:
        m.to("cpu").train()
    net = GroupedMLP(models, [c.lr for c in configs], [c.weight_decay for c in configs])
    opt = StackedAdamW(net.stacks())
    G = len(models)
    hists = [History(trainable=(n := count_parameters(m)).trainable, total=n.total, device="cpu") for m in models]
    errors: dict[int, Exception] = {}
    X, y = data.X_train, data.y_train
    n, bs = len(X), c0.batch_size
    eval_bs = t.eval_batch or bs
    name = getattr(data, "name", "the data")
    gen = torch.Generator().manual_seed(c0.seed)

    def alive() -> list[int]:
        return [g for g in range(G) if g not in errors]

    def record(epoch: int, losses: Sequence[float], seconds: float) -> None:
        net.write_back()
        evs = _evaluate(net, data.X_test, data.y_test, eval_bs, t, alive())
        for g, ev in evs.items():
            if not math.isfinite(ev["loss"]):
                when = "before training (the model's output at init is not finite)" if epoch == 0 \
                    else f"after epoch {epoch}"
                errors[g] = FloatingPointError(f"test loss on {name!r} is {ev['loss']} {when}; the test inputs are "
                                               f"finite, so the model produced it")
                continue
            hists[g].epochs.append({"epoch": epoch, "train_loss": losses[g], **{f"test_{k}": v for k, v in ev.items()},
                                    "seconds": seconds, **t.throughput(X, seconds),
                                    **{f"beta/{k}": v for k, v in betas(models[g]).items()}})

    step = 0
    with torch_rng(c0.seed):
        record(0, [float("nan")] * G, 0.0)
        for epoch in range(1, c0.epochs + 1):
            if not alive():
                break
            t0, loss_sum = time.perf_counter(), [0.0] * G
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, bs):
                idx = perm[i:i + bs]
                xb, yb = X[idx], y[idx]
                out = net(xb, train=True)
                live = alive()
                lanes = out.unbind(0)
                losses = [t.loss(lanes[g], yb) for g in live]
                values = torch.stack(losses).detach().tolist()
                for g, v in zip(live, values):
                    if not math.isfinite(v):
                        errors[g] = FloatingPointError(f"loss is {v} at epoch {epoch}, step {step}; "
                                                       f"try a lower lr (now {configs[g].lr:g})")
                kept = [loss for g, loss in zip(live, losses) if g not in errors]
                if not kept:
                    break
                opt.zero_grad()
                torch.stack(kept).sum().backward()
                opt.step()
                for g, v in zip(live, values):
                    loss_sum[g] += v * len(idx)
                step += 1
            record(epoch, [s / n for s in loss_sum], time.perf_counter() - t0)
    net.write_back()
    return [errors.get(g, hists[g]) for g in range(G)]
