"""Per-layer ranks from a prediction at init, against uniform rank and AdaLoRA, at one adapter budget
(issue "Predict r* before training", item 5).

On each benchmark's own study (data, architecture, [train] and [scaffold] settings) and root seeds SEEDS,
at uniform rank r (RANKS), three ways to spend the same adapter parameters:

- uniform: every scaffold layer at rank r (the study's LottaLoRA run at r);
- allocated: r_l from the GradientSpectrum per-layer values of that seed's model at init
  (predict.allocate_ranks: r_l proportional to the layer's participation ratio, at the budget
  sum_l min(r, min(d_in, d_out)) (d_in + d_out) of uniform r; predict.ranks_config), each layer with
  its own s = alpha / r_l;
- adalora: peft's AdaLoRA on the same frozen random backbone: merge(the scaffolded model at r = 0)
  is the plain model with W = beta W_seed (beta = 1 at init); AdaLoraConfig(init_r = ceil(1.5 r),
  target_r = r, so the final budget is r L singular triplets over the L layers, total_step = the run's
  optimiser steps, tinit / tfinal = TINIT / TFINAL of them, deltaT = DELTA_T, lora_alpha = the study's
  alpha), the head trainable as the study's ``trainable`` leaves it, the same AdamW (lr, weight decay),
  epochs, batch size, batch order and data. peft adds its orthogonality term orth_reg_weight R(P, Q)
  only in AdaLoraModel.forward and only to an output with a ``loss``: PeftModel.forward of a plain
  nn.Module skips AdaLoraModel.forward, so the loss here goes through ``peft_model.base_model`` on a
  module that returns (logits, loss); update_and_allocate(step) follows each optimiser step.

Each run's test accuracy after the last epoch; paired differences (allocated - uniform, adalora -
uniform) over the seeds with a t-interval, and a TOST at MARGIN where the interval holds 0.

    PYTHONPATH=. python experiments/per_layer_ranks.py --out docs/results/per_layer_ranks

Writes table.csv (benchmark, r, method, seed), summary.csv, per_layer_ranks.md, provenance.json; runs
are cached in runs.jsonl (a rerun skips them). One torch thread per run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from _common import parser, write_provenance
from reservoir_depth.distributions import torch_rng
from reservoir_depth.predict import GradientSpectrum, allocate_ranks, init_model, layer_dims, ranks_config
from reservoir_depth.rank import paired_t_power, tost_paired
from reservoir_depth.scaffold import merge, scaffold_layers
from reservoir_depth.study import Study
from reservoir_depth.train import TrainConfig, evaluate, train
from reservoir_depth.tasks import task_of

ROOT = Path(__file__).resolve().parent
BENCHMARKS = ("digits_mlp", "mnist1d_mlp", "mnist5k_mlp", "fashion_mnist_mlp_width_small")
SEEDS = (0, 1, 2)
RANKS = (4, 8)
TINIT, TFINAL, DELTA_T = 0.1, 0.2, 10  # AdaLoRA's schedule: warm-up and final fractions of the steps
MARGIN = 0.01  # TOST margin: the accuracy tolerance of r* (tasks.METRICS, absolute eps = 0.01)


# ----------------------------------------------------------------------------- AdaLoRA on the frozen reservoir

class _WithLoss(nn.Module):
    """``net`` returning (logits, loss) when given targets: the output AdaLoraModel.forward adds
    orth_reg_weight R(P, Q) to."""

    def __init__(self, net: nn.Module, task: str = "classification") -> None:
        super().__init__()
        self.net, self.task = net, task

    def forward(self, x, y=None):
        logits = self.net(x)
        return SimpleNamespace(logits=logits, loss=None if y is None else task_of(self.task).loss(logits, y))


class AdaLora(nn.Module):
    """peft's AdaLoRA on merge(``model``) (``model``: scaffolded at r = 0, so W = beta W_seed): SVD adapters
    P diag(E) Q on each scaffold layer, the trainable non-scaffold parameters of ``model`` (its head)
    trainable, everything else frozen. ``net``: the adapted model (logits); ``loss(x, y)``: the task loss
    plus peft's orthogonality term; ``allocate(step)``: peft's rank update after each optimiser step."""

    def __init__(self, model: nn.Module, r: int, total_step: int, alpha: float, task: str = "classification",
                 init_r: int | None = None) -> None:
        from peft import AdaLoraConfig, get_peft_model  # optional dependency

        super().__init__()
        layers = [n for n, _ in scaffold_layers(model)]
        if any(layer.r for _, layer in scaffold_layers(model)):
            raise ValueError("AdaLora takes the scaffolded model at r = 0 (its merge is the frozen reservoir)")
        scaffold_params = {f"{n}.{p}" for n in layers for p, _ in model.get_submodule(n).named_parameters()}
        head = [n for n, p in model.named_parameters() if p.requires_grad and n not in scaffold_params]
        init_r = math.ceil(1.5 * r) if init_r is None else init_r
        config = AdaLoraConfig(init_r=init_r, target_r=r, total_step=total_step, tinit=int(TINIT * total_step),
                               tfinal=int(TFINAL * total_step), deltaT=DELTA_T, lora_alpha=alpha, lora_dropout=0.0,
                               target_modules=[f"net.{n}" for n in layers])
        self.peft = get_peft_model(_WithLoss(merge(model), task), config)
        for n in head:
            self.net.get_parameter(n).requires_grad_(True)
        self.layers = layers

    @property
    def net(self) -> nn.Module:
        return self.peft.base_model.model.net

    def forward(self, x):
        return self.net(x)

    def loss(self, x, y) -> torch.Tensor:
        return self.peft.base_model(x, y).loss  # AdaLoraModel.forward: + orth_reg_weight R(P, Q)

    def allocate(self, step: int) -> None:
        self.peft.base_model.update_and_allocate(step)

    def kept(self) -> dict[str, int]:
        """Singular triplets each layer keeps (E != 0: the masked ones are zeroed)."""
        return {n: int((self.net.get_submodule(n).lora_E["default"] != 0).sum()) for n in self.layers}


def adalora(model: nn.Module, r: int, total_step: int, alpha: float, task: str = "classification") -> AdaLora:
    return AdaLora(model, r, total_step, alpha, task)


def adalora_loss(net: AdaLora, x, y) -> torch.Tensor:
    return net.loss(x, y)


def train_adalora(net: AdaLora, d, tc: TrainConfig) -> dict[str, float]:
    """train()'s loop (AdamW on the trainable set, the seeded batch order, the seeded global RNG for
    dropout) with the loss through peft and update_and_allocate after each step; the test metrics after
    the last epoch."""
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    X, y, n = d.X_train, d.y_train, len(d.X_train)
    step = 0
    with torch_rng(tc.seed):
        for epoch in range(1, tc.epochs + 1):
            net.train()
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, tc.batch_size):
                idx = perm[i:i + tc.batch_size]
                loss = net.loss(X[idx], y[idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"AdaLoRA loss is {loss.item()} at epoch {epoch}, step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                net.allocate(step)
                step += 1
    return evaluate(net.net, d.X_test, d.y_test, batch_size=tc.batch_size, amp=False, task=d.task)


# ----------------------------------------------------------------------------- the three methods

def _adapter_params(model: nn.Module) -> int:
    return sum(layer.lora_A.numel() + layer.lora_B.numel() for _, layer in scaffold_layers(model))


def _lotta(model, d, tc, ranks) -> dict:
    hist = train(model, d, tc)
    return {"test_acc": hist.epochs[-1]["test_acc"], "trainable": hist.trainable,
            "adapter_params": _adapter_params(model), "ranks": ranks}


def run_uniform(study: Study, r: int, seed: int, tc: TrainConfig) -> dict:
    model, d = init_model(study, rank=r, seed=seed)
    return _lotta(model, d, tc, {f"{n}.weight": layer.r for n, layer in scaffold_layers(model)})


def run_allocated(study: Study, r: int, seed: int, tc: TrainConfig) -> dict:
    model0, d = init_model(study, rank=0, seed=seed)
    est = GradientSpectrum().fit(model0, d)
    ranks = allocate_ranks(est.per_layer_, layer_dims(model0), r)
    cfg = ranks_config(ranks)
    model, d = init_model(study, rank=cfg.r, seed=seed, max_rank=cfg.max_rank)
    return {**_lotta(model, d, tc, ranks), "prediction": {k: round(v, 3) for k, v in est.per_layer_.items()}}


def run_adalora(study: Study, r: int, seed: int, tc: TrainConfig) -> dict:
    model0, d = init_model(study, rank=0, seed=seed)
    total = tc.epochs * math.ceil(len(d.X_train) / tc.batch_size)
    net = adalora(model0, r, total, float(study.scaffold.get("alpha", 16.0)), d.task)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    ev = train_adalora(net, d, tc)
    kept = net.kept()
    dims = {n: (m.in_features, m.out_features) for n in net.layers for m in [net.net.get_submodule(n)]}
    return {"test_acc": ev["acc"], "trainable": trainable, "ranks": {f"{n}.weight": k for n, k in kept.items()},
            "adapter_params": sum(k * (dims[n][0] + dims[n][1] + 1) for n, k in kept.items())}


METHODS: dict[str, Callable[[Study, int, int, TrainConfig], dict]] = {
    "uniform": run_uniform, "allocated": run_allocated, "adalora": run_adalora}


def execute(bench: str, r: int, method: str, seed: int) -> dict:
    study = Study.load(ROOT / f"{bench}.toml")
    tc = TrainConfig(**{**study.train, "seed": seed, "progress": False})
    t0 = time.perf_counter()
    row = METHODS[method](study, r, seed, tc)
    return {"benchmark": bench, "r": r, "method": method, "seed": seed, **row,
            "seconds": round(time.perf_counter() - t0, 2)}


# ----------------------------------------------------------------------------- statistics and the page

def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """b - a over the seeds: mean, 95% t-interval (paired, n - 1 df), p of the paired t-test, TOST p at
    MARGIN and the power of the paired t-test at an effect of MARGIN."""
    diff = np.asarray(b, float) - np.asarray(a, float)
    if len(diff) < 2:
        raise ValueError(f"a paired comparison needs >= 2 seeds, got {len(diff)}")
    n, m, sd = len(diff), float(diff.mean()), float(diff.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    p = float(stats.ttest_rel(b, a).pvalue) if sd > 0 else (1.0 if m == 0 else 0.0)
    tost = tost_paired(b, a, MARGIN)
    power = paired_t_power(n, MARGIN / sd) if sd > 0 else math.nan
    return {"n": n, "mean": m, "lo": m - half, "hi": m + half, "p": p, "tost_p": tost.p,
            "equivalent_at": tost.equivalent_at, "power_at_margin": power}


def _span(v) -> str:
    lo, hi = int(min(v)), int(max(v))
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _counts(g: pd.DataFrame, method: str) -> dict:
    """Parameter counts over the seeds (min-max) of uniform and ``method``, and method / uniform in % per
    seed (min-max): trainable (what the optimiser holds) and adapter (in use at the end)."""
    u, m = g[g["method"] == "uniform"].set_index("seed"), g[g["method"] == method].set_index("seed")
    out = {}
    for col, label in (("trainable", "trainable"), ("adapter_params", "adapter")):
        ratio = 100 * m[col] / u.loc[m.index, col]
        out |= {f"{label} uniform": _span(u[col]), label: _span(m[col]),
                f"{label} % of uniform": f"{ratio.min():.1f}" if ratio.min() == ratio.max()
                else f"{ratio.min():.1f}-{ratio.max():.1f}"}
    return out


def _same_ranks(g: pd.DataFrame, method: str) -> int:
    """Seeds where ``method`` ended with the uniform ranks r_l = r on every layer (allocated: then the run
    is the uniform run itself, and the difference is 0 by construction)."""
    u = g[g["method"] == "uniform"].set_index("seed")["ranks"]
    m = g[g["method"] == method].set_index("seed")["ranks"]
    return int((m == u.loc[m.index]).sum())


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, r, comparison), paired by seed; then per r, every benchmark pooled
    ("all": pairs by (benchmark, seed))."""
    pooled = table.assign(seed=table["benchmark"] + ":" + table["seed"].astype(str), benchmark="all")
    rows = []
    for (bench, r), g in pd.concat([table, pooled]).groupby(["benchmark", "r"], sort=False):
        acc = g.pivot(index="seed", columns="method", values="test_acc")
        for method in ("allocated", "adalora"):
            rows.append({"benchmark": bench, "r": r, "comparison": f"{method} - uniform",
                         "uniform acc": float(acc["uniform"].mean()), "acc": float(acc[method].mean()),
                         "same ranks": _same_ranks(g, method),
                         **_counts(g, method), **paired(acc["uniform"].to_numpy(), acc[method].to_numpy())})
    return pd.DataFrame(rows)


def verdict(row) -> str:
    if row["same ranks"] == row["n"]:
        return "the uniform ranks on every seed: the same runs"
    if row["lo"] > 0:
        return "better"
    if row["hi"] < 0:
        return "worse"
    if row["tost_p"] < 0.05:
        return f"equivalent within {MARGIN:g} (TOST)"
    return f"no difference shown, not equivalence (power {row['power_at_margin']:.2f} at {MARGIN:g})"


def page(table: pd.DataFrame, summary: pd.DataFrame, seconds: float) -> str:
    lines = ["# Per-layer ranks from a prediction at init vs uniform rank vs AdaLoRA", "",
             "Regenerate: `PYTHONPATH=. python experiments/per_layer_ranks.py --out docs/results/per_layer_ranks` "
             f"({seconds / 60:.1f} min of one CPU thread).", "",
             f"Benchmarks (each study's own data, architecture, [train] and [scaffold]): {', '.join(BENCHMARKS)}; "
             f"root seeds {list(SEEDS)}; uniform rank r in {list(RANKS)}. Test accuracy after the last epoch.", "",
             "- **uniform**: every scaffold layer at rank r (s = alpha / r).",
             "- **allocated**: `predict.allocate_ranks` of the GradientSpectrum per-layer participation ratios of "
             "that seed's model at init, at the adapter budget of uniform r; `predict.ranks_config` gives each "
             "layer its rank r_l and, by the toolkit's rule, its own scale **s = alpha / r_l** (a layer given "
             "fewer ranks gets a larger s).",
             "- **adalora**: peft's AdaLoRA on merge(the scaffolded model at r = 0) (the same frozen W = W_seed), "
             "init_r = ceil(1.5 r), target_r = r (final budget r L singular triplets), tinit / tfinal = "
             f"{TINIT:g} / {TFINAL:g} of the steps, deltaT = {DELTA_T}, lora_alpha = the study's alpha, peft's "
             "orthogonality term (weight 0.5) in the loss, the head trainable; same AdamW, lr, epochs, batch "
             "size, batch order. It has no beta.", "",
             "Differences are paired by seed (3 seeds; \"all\": 12 or fewer pairs, by benchmark and seed, taken as "
             "independent): mean and 95% t-interval (n - 1 df). `same ranks`: pairs whose method ended with "
             "r_l = r on every layer. Where the interval holds "
             f"0, a TOST at a margin of {MARGIN:g} (1 pp, the r* tolerance of accuracy) and the paired t-test's "
             "power at that margin say how much a \"no difference\" means.", "",
             "Parameter counts: `trainable` is what the optimiser holds (adapters, beta, head; AdaLoRA: its "
             "init_r triplets and the head); `adapter` the adapter parameters in use at the end (AdaLoRA: kept "
             "triplets x (d_in + d_out + 1)).", "",
             "## Paired differences", "",
             "| benchmark | r | comparison | pairs | same ranks | uniform acc | acc | mean diff | 95% CI (paired t) | "
             "TOST p | verdict | trainable (uniform / method, % of uniform) | adapter (uniform / method, % of uniform) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, s in summary.iterrows():
        lines.append(f"| {s['benchmark']} | {s['r']} | {s['comparison']} | {s['n']} | {s['same ranks']} | "
                     f"{s['uniform acc']:.4f} | {s['acc']:.4f} | "
                     f"{s['mean']:+.4f} | [{s['lo']:+.4f}, {s['hi']:+.4f}] | {s['tost_p']:.3f} | {verdict(s)} | "
                     f"{s['trainable uniform']} / {s['trainable']} ({s['trainable % of uniform']} %) | "
                     f"{s['adapter uniform']} / {s['adapter']} ({s['adapter % of uniform']} %) |")
    same = table[table["method"] == "allocated"]["ranks"].to_numpy() == table[table["method"] == "uniform"]["ranks"].to_numpy()
    preds = [json.loads(v) for v in table[table["method"] == "allocated"]["prediction"]]
    spread = max(max(p.values()) / min(p.values()) for p in preds)
    off = summary[(summary["benchmark"] != "all")]
    off = off[[max(abs(float(v) - 100) for v in str(x).split("-")) > 5 for x in off["adapter % of uniform"]]]
    lines += ["", "## Reading", "",
              f"- The allocated ranks equal the uniform ones in {int(same.sum())} of {len(same)} (benchmark, r, seed). "
              f"The layers' participation ratios at init differ by at most {spread:.2f}x within a run, so the proportional targets "
              "t_l lie near r, and the integer step moves them back: the widest layer (784 -> 256 on the MNIST "
              "images: 1,040 parameters a rank) keeps floor(t_l), and the leftover buys the narrow layers' "
              "ranks back. Where an allocation equals uniform the two runs are the same run (difference 0 by "
              "construction), so an \"equivalent\" verdict over such pairs says nothing about the predictor; "
              "read the `same ranks` column first.",
              "- AdaLoRA: the optimiser holds ceil(1.5 r) triplets per layer (about 1.45x uniform's trainable "
              "parameters), and its final r L triplets follow its importance scores, not the parameter count: "
              "the adapter parameters in use at the end differ from uniform's by more than 5 % on "
              + (", ".join(f"{b} r={r}" for b, r in off[["benchmark", "r"]].drop_duplicates().itertuples(index=False))
                 or "no benchmark") + " (on the 784-pixel images it keeps 5-12 triplets on layers.0, 1,041 parameters "
              "each, and 2-8 on the narrower layers; see the ranks per run). AdaLoRA has no beta.",
              "- \"all\" pools the benchmarks (pairs by benchmark and seed, taken as independent)."]
    lines += ["", "## Per run", "", "| benchmark | r | method | seed | test acc | trainable | adapter | ranks |",
              "|---|---|---|---|---|---|---|---|"]
    for _, t in table.iterrows():
        ranks = " ".join(str(v) for v in json.loads(t["ranks"]).values())
        lines.append(f"| {t['benchmark']} | {t['r']} | {t['method']} | {t['seed']} | {t['test_acc']:.4f} | "
                     f"{t['trainable']} | {t['adapter_params']} | {ranks} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = parser(__doc__, out="docs/results/per_layer_ranks")
    p.add_argument("--ranks", type=int, nargs="+", default=list(RANKS), help=f"uniform ranks r (default {RANKS})")
    p.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=BENCHMARKS)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = p.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "runs.jsonl"
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            done[(row["benchmark"], row["r"], row["method"], row["seed"])] = row
    for bench in args.benchmarks:
        for r in args.ranks:
            for seed in args.seeds:
                for method in METHODS:
                    key = (bench, r, method, seed)
                    if key in done:
                        continue
                    row = execute(*key)
                    done[key] = row
                    with cache.open("a") as f:
                        f.write(json.dumps(row, sort_keys=True) + "\n")
                    print(f"{bench} r={r} {method} seed={seed}: acc {row['test_acc']:.4f} "
                          f"trainable {row['trainable']} adapter {row['adapter_params']} ({row['seconds']} s)", flush=True)
    keys = [(b, r, m, s) for b in args.benchmarks for r in args.ranks for s in args.seeds for m in METHODS]
    table = pd.DataFrame([done[k] for k in keys])
    table["ranks"] = [json.dumps(v) for v in table["ranks"]]
    table["prediction"] = [json.dumps(v) if isinstance(v, dict) else "" for v in table.get("prediction", "")]
    table.to_csv(args.out / "table.csv", index=False)
    summary = summarise(table) if len(args.seeds) >= 2 else pd.DataFrame()
    summary.to_csv(args.out / "summary.csv", index=False)
    seconds = float(table["seconds"].sum())
    (args.out / "per_layer_ranks.md").write_text(page(table, summary, seconds))
    write_provenance(args.out, config={"benchmarks": args.benchmarks, "ranks": args.ranks, "methods": list(METHODS),
                                       "tinit": TINIT, "tfinal": TFINAL, "deltaT": DELTA_T, "margin": MARGIN,
                                       "torch_threads": 1},
                     seeds=args.seeds, metrics={"run_seconds": seconds,
                                                **{f"{s['benchmark']} r={s['r']} {s['comparison']}": s["mean"]
                                                   for _, s in summary.iterrows()}})
    print(summary.to_string())


if __name__ == "__main__":
    main()
