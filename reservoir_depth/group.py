"""Runs trained together: the runs of a study that share data, architecture and batch schedule train as
one vectorised model, each run a lane of stacked tensors, each lane's numbers bit for bit its run's alone.

Which runs (``group_key``): the same data set, architecture and TrainConfig but for lr and weight_decay
(so the same seed: the same batches, and through the same seeded global RNG the same dropout masks),
on the CPU, an ``mlp`` whose layers are nn.Linear (full training, the twin, a LottaLoRA head) or
static-schedule ScaffoldLinear (LottaLoRA at any rank). Every layer computes eq. (1),

    y_g = beta_g W_g x_g + s_g B_g (A_g x_g) + b_g,

for segments of lanes that compute alike (a plain Linear; a scaffold at r = 0; a scaffold at one rank r
and scale s): one batched product (bmm) per product the run alone computes, in the same orientation, and
per lane where a lane's own scalar enters a product (beta in the fused addmm). torch's CPU bmm computes
each lane as mm computes it alone, so a lane's forward, gradients and AdamW step (StackedAdamW: torch's
for-loop AdamW, elementwise, per-lane lr and weight decay) are bit for bit those of its run alone
(tests/test_group.py checks every stored metric and history). Ranks are not padded: a zero-padded rank
would change the length of the sums over r, and with it their rounding.

A run whose loss or test loss is not finite fails alone, with the error it raises alone; the others go on.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch
from torch import nn

from .data.dataset import check_dataset
from .distributions import torch_rng
from .models.mlp import MLP
from .scaffold import ScaffoldLinear, betas, count_parameters
from .tasks import task_of
from .train import History, TrainConfig, resolve_device

GROUPED_ARCHS = ("mlp",)  # families whose instances GroupedMLP stacks
GROUPED_TASKS = ("classification", "regression")
PER_LANE = ("lr", "weight_decay")  # TrainConfig fields that may differ between the lanes of a group
NOT_SCHEDULE = ("progress", "log_dir")  # fields that change nothing a lane computes


def group_key(run) -> str | None:
    """The key runs trained together share (a study.Run), or None when the run trains alone: a family
    outside GROUPED_ARCHS, a destabilised schedule, torch.compile, a held-lower W_seed, a ridge readout,
    per-step beta records, a TensorBoard log, a device other than the CPU or a dtype other than float32 (the
    stacked model trains in float32)."""
    if run.arch.get("name") not in GROUPED_ARCHS:
        return None
    try:
        cfg = TrainConfig(**{**run.train, "seed": run.seed})
    except (TypeError, ValueError):  # a config the run itself refuses: it trains (and fails) alone
        return None
    if (cfg.compile or cfg.seed_dtype is not None or cfg.readout != "gradient" or cfg.beta_every
            or cfg.log_dir is not None or resolve_device(cfg.device).type != "cpu" or cfg.dtype != "float32"):
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
            if layer.settings.schedule != "static" or layer.seed_dtype is not None:
                raise ValueError(f"layer {name!r}: schedule {layer.settings.schedule!r} / seed dtype "
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


class _LottaLinearStack(torch.autograd.Function):
    """scaffold/fused.py's _LottaLinear for the G lanes of one segment (one rank r, one s), op for op:
    each of its products is a bmm whose lane is the mm a run alone computes; alone's addmm(t, m1, m2,
    beta=beta, alpha=s) is baddbmm(beta t, m1, m2, alpha=s) (torch's CPU addmm scales t first: the same
    bits), and beta's gradient a dot per lane, so every lane's numbers are bit for bit those of its run
    alone. CPU, float32, no autocast (group_key's conditions)."""

    @staticmethod
    def forward(ctx, x, W, beta, A, B, bias, s: float):
        G, N, d_in = x.shape
        u = torch.bmm(A, x.transpose(1, 2)).transpose(1, 2)  # A x as (r, n) products
        need_x = ctx.needs_input_grad[0]
        h = None
        if need_x and N >= d_in:  # W_eff = beta W + s B A, then one product
            W_eff = torch.baddbmm(W * beta.view(G, 1, 1), B, A, alpha=s)
            y = torch.bmm(x, W_eff.transpose(1, 2)) if bias is None else \
                torch.baddbmm(bias.unsqueeze(1), x, W_eff.transpose(1, 2))
        else:  # beta h + s u B^T: alone one addmm with beta; its bits are (beta h) + s u B^T's (test_group)
            h = torch.bmm(x, W.transpose(1, 2))
            y = torch.baddbmm(h * beta.view(G, 1, 1), u, B.transpose(1, 2), alpha=s)
            if bias is not None:
                y += bias.unsqueeze(1)
        kept = () if need_x else (h,)
        ctx.save_for_backward(x, W, beta, A, B, u, *kept)
        ctx.s, ctx.has_bias = s, bias is not None and ctx.needs_input_grad[5]
        return y

    @staticmethod
    def backward(ctx, g):
        x, W, beta, A, B, u, *h = ctx.saved_tensors
        s, G = ctx.s, x.shape[0]
        gW = None if h else torch.bmm(g, W)
        gB = torch.bmm(B.transpose(1, 2), g.transpose(1, 2)).transpose(1, 2)  # g B as (r, n) products
        grad_B = torch.bmm(u.transpose(1, 2), g).mul_(s).transpose(1, 2).contiguous()
        grad_bias = torch.stack([g[i].sum(0) for i in range(G)]) if ctx.has_bias else None
        if h:
            grad_beta = torch.stack([torch.dot(g[i].reshape(-1), h[0][i].reshape(-1)) for i in range(G)])
        else:
            grad_beta = torch.stack([torch.dot(gW[i].reshape(-1), x[i].reshape(-1)) for i in range(G)])
        grad_A = torch.bmm(s * gB.transpose(1, 2), x)
        grad_x = None if h else torch.baddbmm(gW * beta.view(G, 1, 1), gB, A, alpha=s)
        return grad_x, None, grad_beta, grad_A, grad_B, grad_bias, None


class _LinearStack(torch.autograd.Function):
    """F.linear(x, W, b) (addmm(b, x, W^T)) for G lanes, with the products of addmm's own backward: the
    weight gradient as g^T x (autograd's bmm backward would form x^T g and transpose it, other roundings)."""

    @staticmethod
    def forward(ctx, x, W, bias):
        ctx.save_for_backward(x, W)
        Wt = W.transpose(1, 2)
        return torch.bmm(x, Wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, Wt)

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad
        grad_x = torch.bmm(g, W) if need_x else None
        grad_W = torch.bmm(g.transpose(1, 2), x) if need_W else None
        grad_b = g.sum(1) if need_b else None
        return grad_x, grad_W, grad_b


class _Segment:
    """The lanes [a, b) of a layer that compute alike: ``kind`` "plain" (an nn.Linear: W x + b, W trained
    or not), "seed" (a ScaffoldLinear at r = 0: beta W_seed x + b) or "lotta" (r > 0, one r and s)."""

    def __init__(self, a: int, b: int, key: tuple, lanes: Sequence[_Lane], lrs, wds) -> None:
        self.a, self.b, self.kind, self.lanes = a, b, key[0], lanes
        zero = [0.0] * len(lanes)
        l0 = lanes[0]
        self.W = _Stack(torch.stack([l.W for l in lanes]), lrs if l0.W_trains else zero, wds)
        self.bias = None if l0.bias is None else \
            _Stack(torch.stack([l.bias.detach() for l in lanes]), [lr if l.bias_trains else 0.0
                                                                  for l, lr in zip(lanes, lrs)], wds)
        self.beta = self.A = self.B = None
        if self.kind != "plain":
            self.beta = _Stack(torch.stack([l.beta.detach() for l in lanes]),
                               [lr if l.beta.requires_grad else 0.0 for l, lr in zip(lanes, lrs)], wds)
        if self.kind == "lotta":
            self.A = _Stack(torch.stack([l.A.detach() for l in lanes]), lrs, wds)
            self.B = _Stack(torch.stack([l.B.detach() for l in lanes]), lrs, wds)
            self.s = l0.s

    def stacks(self) -> list[_Stack]:
        return [st for st in (self.W, self.bias, self.beta, self.A, self.B) if st is not None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.value
        W = self.W.value
        if self.kind == "plain":  # F.linear(x, W, b): addmm(b, x, W^T)
            return _LinearStack.apply(x, W, bias)
        if self.kind == "seed":  # ScaffoldLayer.forward at r = 0: F.linear(x, W_seed) * beta + b
            y = torch.bmm(x, W.transpose(1, 2)) * self.beta.value.view(-1, 1, 1)
            return y if bias is None else y + bias.unsqueeze(1)
        return _LottaLinearStack.apply(x, W, self.beta.value, self.A.value, self.B.value, bias, self.s)

    def write_back(self) -> None:
        with torch.no_grad():
            for i, l in enumerate(self.lanes):
                if l.W_trains:
                    l.W.copy_(self.W.value[i])
                if l.bias is not None and l.bias_trains:
                    l.bias.copy_(self.bias.value[i])
                if l.beta is not None:
                    l.beta.copy_(self.beta.value[i])
                if l.A is not None:
                    l.A.copy_(self.A.value[i])
                    l.B.copy_(self.B.value[i])


def _kind(l: _Lane) -> tuple:
    if l.beta is None:
        return ("plain", l.W_trains, l.bias is not None)
    if l.r == 0:
        return ("seed", l.bias is not None)
    return ("lotta", l.r, l.s, l.bias is not None)


class GroupedLinear:
    """One layer for G lanes: segments of lanes that compute alike (_Segment), each one batched product
    (or _LottaLinearStack), their outputs concatenated along the lane axis."""

    def __init__(self, lanes: Sequence[_Lane], lrs: Sequence[float], wds: Sequence[float]) -> None:
        self.lanes = lanes
        shapes = {tuple(l.W.shape) for l in lanes}
        if len(shapes) != 1:
            raise ValueError(f"lanes of a layer differ in shape: {sorted(shapes)}")
        self.segments = [_Segment(a, b, k, lanes[a:b], lrs[a:b], wds[a:b])
                         for a, b, k in _segments([_kind(l) for l in lanes])]

    def stacks(self) -> list[_Stack]:
        return [st for seg in self.segments for st in seg.stacks()]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, d_in) shared by every lane (a first layer) or (G, N, d_in); returns (G, N, d_out).
        Lanes are taken apart with split (whose backward is one cat), not slices (each of whose backwards
        would fill a zero tensor of the whole stack)."""
        spans = [(seg.a, seg.b) for seg in self.segments]
        outs = [seg(xs) for seg, xs in zip(self.segments, _parts(x, spans, len(self.lanes)))]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def write_back(self) -> None:
        """Copy each lane's trained values into its run's own tensors."""
        for seg in self.segments:
            seg.write_back()


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
    in its order, as foreach calls over the stacks (each stack keeps its own memory: the products read
    each lane where they would read it alone), with the per-lane scalars as (G, 1, ...) float32 tensors."""

    def __init__(self, stacks: Sequence[_Stack], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.stacks = [st for st in stacks if st.value.requires_grad]
        self.beta1, self.beta2, self.eps, self.step_t = betas[0], betas[1], eps, 0
        self.m = [torch.zeros_like(st.value) for st in self.stacks]
        self.v = [torch.zeros_like(st.value) for st in self.stacks]
        shape = [(-1, *(1,) * (st.value.dim() - 1)) for st in self.stacks]
        self.decay = [torch.tensor([1 - lr * wd for lr, wd in zip(st.lr, st.wd)], dtype=st.value.dtype).view(s)
                      for st, s in zip(self.stacks, shape)]
        self.lr = torch.tensor([lr for st in self.stacks for lr in st.lr], dtype=torch.float64)
        self.split = ([len(st.lr) for st in self.stacks], shape)

    def zero_grad(self) -> None:
        for st in self.stacks:
            st.value.grad = None

    @torch.no_grad()
    def step(self) -> None:
        if not self.stacks:
            return
        self.step_t += 1
        bc1, bc2 = 1 - self.beta1 ** self.step_t, 1 - self.beta2 ** self.step_t
        bc2_sqrt = bc2 ** 0.5
        ps = [st.value for st in self.stacks]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
        torch._foreach_mul_(ps, self.decay)
        torch._foreach_lerp_(self.m, grads, 1 - self.beta1)
        torch._foreach_mul_(self.v, self.beta2)
        torch._foreach_addcmul_(self.v, grads, grads, value=1 - self.beta2)
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, self.eps)
        sizes, shape = self.split
        step_size = (-(self.lr / bc1)).to(ps[0].dtype).split(sizes)  # -lr / bc1 per lane, as torch's float lr
        update = torch._foreach_mul(self.m, [s.view(v) for s, v in zip(step_size, shape)])
        torch._foreach_div_(update, denom)
        torch._foreach_add_(ps, update)


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
