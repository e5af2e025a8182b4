"""Training step of a model built several ways, side by side in one run.

--model llama (the default): the toolkit's `llama` family (token embedding, pre-norm blocks:
RMSNorm, causal attention with rotary positions through F.scaled_dot_product_attention,
SwiGLU MLP; final RMSNorm, an untied head; presets tiny, cpu = its "3m" size and 150m = its
"150m" size, here with a vocabulary of 256 / 32000) built from one seed; --model mlp: the toolkit's
medium MLP (784 -> 512 -> 256 -> 128 -> 64 -> 10, ReLU, no dropout; batch 128, the
Fashion-MNIST studies' shape). Each trained one AdamW step at a time:

    full   every weight trains
    ours   reservoir_depth.scaffold: y = beta W_seed x + s B A x on the q, k, v, o
           and MLP projections (the MLP: its hidden layers) (r = 8, alpha = 16), the
           fused Linear path
    plain  the same scaffolded model through generic autograd (ScaffoldLayer.forward,
           eq. 1 as a straightforward PyTorch implementation writes it)
    peft   peft's LoRA on the same layers (r = 8, lora_alpha = 16), base frozen

Embedding, norms and head train in every variant. With --compile
each variant is also run under torch.compile ("+compile", each block compiled: PyTorch's
regional compilation; the MLP whole; a failure is reported as a row). --seed-dtype
bfloat16 holds W_seed of ours and plain in bf16 (scaffold.set_seed_dtype). Variants
run interleaved over rounds; the step time is the median of the per-step times after
warm-up. Ratios are to full training in the same run: step time; peak allocated memory
(CUDA: over the timed steps; CPU: over one more step, the tensors that live between steps
plus the profiler's record of allocations and frees); and the activation bytes autograd
saves for backward (not seen under torch.compile).

    python benchmarks/bench_lm.py --preset cpu --device cpu --threads 1
    python benchmarks/bench_lm.py --preset 150m --compile --json lm_150m.json
    python benchmarks/bench_lm.py --model mlp --device cpu --threads 1 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

import _measure  # benchmarks/_measure.py
from reservoir_depth.distributions import torch_rng
from reservoir_depth.models import build as build_arch
from reservoir_depth.models import llama
from reservoir_depth.scaffold import ScaffoldConfig, ScaffoldLayer, ScaffoldLinear, matches, scaffold, set_seed_dtype
from reservoir_depth.study import versions as study_versions


# -- the model -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LMConfig:
    vocab: int
    d: int
    n_layers: int
    n_heads: int
    hidden: int  # SwiGLU hidden width
    context: int
    batch: int


PRESETS = {
    "tiny": LMConfig(vocab=256, d=128, n_layers=2, n_heads=4, hidden=352, context=64, batch=8),
    "cpu": LMConfig(vocab=256, d=256, n_layers=4, n_heads=4, hidden=688, context=128, batch=16),  # llama "3m"
    "150m": LMConfig(vocab=32000, d=1024, n_layers=12, n_heads=16, hidden=2752, context=512, batch=32),  # "150m"
}


@dataclass(frozen=True)
class MLPConfig:
    """The toolkit's MLP family (reservoir_depth.models.MLP) at one size; dropout off."""

    d_in: int
    hidden: str
    n_out: int
    batch: int


MLP_PRESETS = {"medium": MLPConfig(d_in=784, hidden="medium", n_out=10, batch=128)}
RANK, ALPHA = 8, 16.0


# -- the variants ----------------------------------------------------------------------------
VARIANTS = ("full", "ours", "plain", "peft")


class PlainScaffoldLinear(ScaffoldLinear):
    """ScaffoldLinear through the generic autograd path (the baseline). A class of its
    own, not a patched method, so that torch.compile never reuses the fused path's graph."""

    forward = ScaffoldLayer.forward


def _targets(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(adapted layers, other trained modules): the family's own scaffold_targets and scaffold_trainable
    (the llama built with adapters="all": q, k, v, o, gate, up, down of every block; embedding, norms, head)."""
    return tuple(model.scaffold_targets), tuple(model.scaffold_trainable)


def _ours(model: nn.Module) -> nn.Module:
    targets, trainable = _targets(model)
    return scaffold(model, ScaffoldConfig(target_modules=targets, trainable=trainable, r=RANK, alpha=ALPHA))


def _plain(model: nn.Module) -> nn.Module:
    return _plain_of(_ours(model))


def _plain_of(model: nn.Module) -> nn.Module:
    """A copy of a scaffolded model whose ScaffoldLinear layers take the generic autograd path."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if type(m) is ScaffoldLinear:
            m.__class__ = PlainScaffoldLinear
    return model


def _peft(model: nn.Module) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model  # a benchmark-only dependency

    targets, trainable = _targets(model)
    targets = "|".join(f"(?:{p})" for p in targets)  # peft takes one str as a regex (full match): ours' layers
    model = inject_adapter_in_model(LoraConfig(target_modules=targets, r=RANK, lora_alpha=ALPHA,
                                               lora_dropout=0.0, bias="none"), model)
    for n, p in model.named_parameters():  # the same trainable set as ours: adapters + trainable modules
        p.requires_grad_("lora_" in n)
    for n, m in model.named_modules():
        if n and matches(n, trainable):
            for p in m.parameters():
                p.requires_grad_(True)
    return model


BUILDERS = {"full": lambda m: m, "ours": _ours, "plain": _plain, "peft": _peft}


def base_model(c: LMConfig | MLPConfig) -> nn.Module:
    """The model every variant starts from (draws from torch's global RNG: call under torch_rng)."""
    if isinstance(c, MLPConfig):
        return build_arch("mlp", d_in=c.d_in, n_out=c.n_out, hidden=c.hidden, dropout=0.0)
    return build_arch("llama", d_in=c.vocab, n_out=c.vocab, size=None, context=c.context, adapters="all",
                      d_model=c.d, layers=c.n_layers, heads=c.n_heads, d_ff=c.hidden)


def build(variant: str, c: LMConfig | MLPConfig, dev: torch.device | str = "cpu") -> nn.Module:
    """The model of ``variant`` ("full", "ours", "plain", "peft"), every one from seed 0."""
    with torch_rng(0):
        model = base_model(c)
    return BUILDERS[variant](model).to(dev)


def compile_blocks(model: nn.Module) -> nn.Module:
    """torch.compile each block of the LM (regional compilation: one graph serves every block, so
    compiling a 12-layer model costs about one block's compile time); the MLP as a whole."""
    for block in model.blocks if isinstance(model, llama.Llama) else [model]:
        block.compile()
    return model


def adapter_parameters(model: nn.Module) -> int:
    """Trained LoRA factors A, B (ours and peft name them lora_A / lora_B)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)


def expected_adapter_parameters(c: LMConfig, r: int = RANK) -> int:
    """r (d_in + d_out) per adapted projection: 4 attention (d x d) and 3 MLP (d x hidden) per block."""
    return c.n_layers * r * (4 * 2 * c.d + 3 * (c.d + c.hidden))


def frozen_dtypes(model: nn.Module) -> str:
    """dtypes of the frozen backbone weights (W_seed buffers, frozen parameters)."""
    ts = [p for p in model.parameters() if not p.requires_grad]
    ts += [m.W_seed for m in model.modules() if isinstance(m, ScaffoldLayer)]
    return ",".join(sorted({str(t.dtype).removeprefix("torch.") for t in ts})) or "-"


# -- measurement ------------------------------------------------------------------------------
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _loss(model, x, y, amp: bool, dev):
    with torch.autocast(dev.type, torch.bfloat16, enabled=amp):
        logits = model(x)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def saved_bytes(model, x, y, amp: bool, dev) -> int:
    """Bytes autograd keeps for backward in one loss computation (_measure.saved_bytes)."""
    return _measure.saved_bytes(model, lambda: _loss(model, x, y, amp, dev))


def run_variant(model, x, y, dev, warmup: int, steps: int, amp: bool) -> tuple[list[float], float]:
    """Per-step times (s) of forward + backward + AdamW step after ``warmup`` steps, and the peak
    allocated memory: on CUDA over the timed steps, on the CPU over one more step (_measure.peak_step_bytes)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = _loss(model, x, y, amp, dev)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        _sync(dev)
        t0 = time.perf_counter()
        loss = step()
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"non-finite loss {loss.item()} at step {i}")
    if dev.type == "cuda":
        peak = float(torch.cuda.max_memory_allocated())
    else:
        del loss
        alive = [*model.parameters(), *model.buffers(), x, y]
        alive += [p.grad for p in model.parameters() if p.grad is not None]
        alive += [t for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor)]
        peak = float(_measure.peak_step_bytes(alive, step))
    del opt
    return times, peak


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _strict_compile():
    """Context: a compiled graph that would fall back to eager (recompile limit hit) raises
    instead, so a "+compile" row never reports an eager run."""
    cfg = torch._dynamo.config
    flag = next((f for f in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit") if hasattr(cfg, f)), None)
    return cfg.patch(**{flag: True}) if flag else contextlib.nullcontext()


def _rounds(names, proto, times, info, x, y, dev, warmup, steps, rounds, amp) -> None:
    for _ in range(rounds):  # interleaved, so drift in machine load hits every variant alike
        for name in names:
            if "error" in info[name]:
                continue
            variant, compiled = name.removesuffix("+compile"), name.endswith("+compile")
            model = copy.deepcopy(proto[variant]).to(dev)
            try:
                ts, peak = run_variant(compile_blocks(model) if compiled else model, x, y, dev, warmup, steps, amp)
            except Exception as e:  # a compile failure is a result, not the end of the run
                if not compiled:
                    raise
                msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                info[name] = {"error": f"{type(e).__name__}: {msg}"}
                del model
                _free(dev)
                continue
            times[name] += ts
            info[name]["peak"] = max(info[name].get("peak", -math.inf), peak)
            if "saved" not in info[name] and not compiled:  # hooks do not see inside compiled graphs
                info[name]["saved"] = saved_bytes(model, x, y, amp, dev)
            info[name]["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            info[name]["adapter"] = adapter_parameters(model)
            info[name]["frozen_dtype"] = frozen_dtypes(model)
            del model
            _free(dev)


def inputs(c: LMConfig | MLPConfig, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, int, str]:
    """(x, y, items per step, their unit): a batch of tokens, or of 784-pixel images and labels."""
    g = torch.Generator().manual_seed(0)
    if isinstance(c, MLPConfig):
        x = torch.randn(c.batch, c.d_in, generator=g).to(dev)
        return x, torch.randint(0, c.n_out, (c.batch,), generator=g).to(dev), c.batch, "samples"
    tokens = torch.randint(0, c.vocab, (c.batch, c.context + 1), generator=g).to(dev)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(), c.batch * c.context, "tokens"


def benchmark(c: LMConfig | MLPConfig, dev: torch.device, variants: list[str], compile_: bool, warmup: int,
              steps: int, rounds: int, amp: bool, seed_dtype: torch.dtype | None = None) -> list[dict[str, Any]]:
    """One row per variant (and per "+compile" variant): median step time, tokens (samples) per s, memory
    and their ratios to full training measured in the same run. ``seed_dtype``: W_seed of ours and plain
    held in it (set_seed_dtype)."""
    x, y, items, unit = inputs(c, dev)
    names = [v + s for s in ("", "+compile") if s == "" or compile_ for v in variants]
    times: dict[str, list[float]] = {n: [] for n in names}
    info: dict[str, dict[str, Any]] = {n: {} for n in names}
    proto: dict[str, nn.Module] = {}  # built once on the CPU (drawing W_seed is the slow part), copied per run
    for v in variants:
        proto[v] = _plain_of(proto["ours"]) if v == "plain" and "ours" in proto else build(v, c)
        if v in ("ours", "plain") and seed_dtype is not None:
            set_seed_dtype(proto[v], seed_dtype)
    with _strict_compile():
        _rounds(names, proto, times, info, x, y, dev, warmup, steps, rounds, amp)
    full = statistics.median(times["full"])
    ref = info["full"]
    rows = []
    for name in names:
        if "error" in info[name]:
            rows.append({"variant": name, "error": info[name]["error"]})
            continue
        t = statistics.median(times[name])
        saved = info[name].get("saved")
        rows.append({"variant": name, "ms_per_step": 1e3 * t, f"{unit}_per_s": items / t,
                     "time_vs_full": t / full, "peak_mib": info[name]["peak"] / 2**20,
                     "peak_vs_full": info[name]["peak"] / ref["peak"],
                     "saved_mib": None if saved is None else saved / 2**20,
                     "saved_vs_full": None if saved is None else saved / ref["saved"],
                     "trainable": info[name]["trainable"], "adapter": info[name]["adapter"],
                     "frozen_dtype": info[name]["frozen_dtype"], "n_steps": len(times[name])})
    return rows


def _num(v: float | None, fmt: str, unit: str = "") -> str:
    return "n/a" if v is None else f"{v:{fmt}}{unit}"


def markdown(rows: list[dict[str, Any]]) -> str:
    unit = next((k.removesuffix("_per_s") for r in rows for k in r if k.endswith("_per_s")), "tokens")
    head = (f"| variant | ms/step | {unit}/s | time vs full | peak MiB | peak vs full | saved for backward MiB | "
            "saved vs full | trainable | frozen dtype |")
    lines = [head, "|" + "---|" * (head.count(" | ") + 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error'].replace('|', '/')} |" + "  |" * 8)
        else:
            lines.append(f"| {r['variant']} | {r['ms_per_step']:.1f} | {r[unit + '_per_s']:,.0f} | "
                         f"{r['time_vs_full']:.2f}x | {r['peak_mib']:.1f} | {r['peak_vs_full']:.2f}x | "
                         f"{_num(r['saved_mib'], '.1f')} | {_num(r['saved_vs_full'], '.2f', 'x')} | "
                         f"{r['trainable']:,} | {r['frozen_dtype']} |")
    return "\n".join(lines)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("llama", "mlp"), default="llama")
    p.add_argument("--preset", default=None, help=f"llama: {', '.join(sorted(PRESETS))} (default cpu); "
                                                  f"mlp: {', '.join(MLP_PRESETS)} (the default)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant and round")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant and round")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--compile", action="store_true", help="also run each variant under torch.compile")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA, off for CPU)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed-dtype", choices=("bfloat16", "float16"), default=None,
                   help="hold W_seed of ours and plain in this dtype (scaffold.set_seed_dtype)")
    a = p.parse_args(argv)
    presets: dict[str, Any] = PRESETS if a.model == "llama" else MLP_PRESETS
    a.preset = a.preset if a.preset is not None else ("cpu" if a.model == "llama" else "medium")
    if a.preset not in presets:
        p.error(f"--preset {a.preset!r} is not one of --model {a.model}'s: {', '.join(sorted(presets))}")
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or len(set(variants)) != len(variants):
        p.error(f"--variants {a.variants!r}: each of {', '.join(VARIANTS)} at most once (got {bad or 'repeats'})")
    if "full" not in variants:
        p.error(f"--variants {a.variants!r} must include 'full': every ratio is to full training")
    big = a.preset == "150m"
    steps = a.steps if a.steps is not None else (10 if big else 5)
    warmup = a.warmup if a.warmup is not None else (3 if big else 2)
    rounds = a.rounds if a.rounds is not None else (2 if big else 3)
    for flag, v, lo in (("--steps", steps, 1), ("--warmup", warmup, 0), ("--rounds", rounds, 1), ("--threads", a.threads, 1)):
        if v is not None and v < lo:
            p.error(f"{flag} must be >= {lo}, got {v}")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    dev = _device(a.device)
    amp = dev.type == "cuda" if a.amp is None else a.amp
    c = presets[a.preset]
    seed_dtype = None if a.seed_dtype is None else getattr(torch, a.seed_dtype)
    rows = benchmark(c, dev, variants, a.compile, warmup, steps, rounds, amp, seed_dtype)
    with torch_rng(0):
        ref = base_model(c)
    n_total = sum(q.numel() for q in ref.parameters())
    n_blocks = sum(q.numel() for q in (ref.blocks if a.model == "llama" else ref.layers).parameters())
    del ref
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    memory = ("peak: allocated over the timed steps (CUDA)" if dev.type == "cuda" else
              "peak: allocated in one step, live tensors + the profiler's allocations (CPU)") + \
        "; saved: activation bytes autograd keeps for backward (not under torch.compile)"
    command = "python " + " ".join(shlex.quote(s) for s in [sys.argv[0] if argv is None else "benchmarks/bench_lm.py",
                                                            *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}")
    print(f"device: {card}; torch {torch.__version__}; bf16 autocast: {amp}")
    if a.model == "llama":
        print(f"model: the llama family, preset {a.preset}: {asdict(c)}; {n_total / 1e6:.1f}M parameters "
              f"({n_blocks / 1e6:.1f}M in the blocks, {(n_total - n_blocks) / 1e6:.1f}M embedding, norm and head); "
              f"adapters r = {RANK}, alpha = {ALPHA:g} on q, k, v, o, gate, up and down of every block")
    else:
        print(f"model: MLP, preset {a.preset}: {asdict(c)}; {n_total / 1e6:.2f}M parameters "
              f"({n_blocks / 1e6:.2f}M in the hidden layers); adapters r = {RANK}, alpha = {ALPHA:g} on the "
              f"hidden layers, head trained")
    if seed_dtype is not None:
        print(f"W_seed of ours and plain held in {a.seed_dtype}")
    print(f"median of {steps} steps x {rounds} rounds after {warmup} warm-up steps; memory: {memory}")
    print(markdown(rows))
    if a.json is not None:
        from importlib.metadata import version

        versions = {**study_versions(), "peft": version("peft")}
        a.json.write_text(json.dumps({"command": command, "device": card, "torch": torch.__version__, "amp": amp,
                                      "versions": versions,
                                      "model": a.model, "seed_dtype": a.seed_dtype,
                                      "preset": a.preset, "config": asdict(c), "parameters": n_total,
                                      "block_parameters": n_blocks, "r": RANK, "alpha": ALPHA, "memory": memory,
                                      "steps": steps, "warmup": warmup, "rounds": rounds, "rows": rows},
                                     indent=2, sort_keys=True) + "\n")
    return rows


if __name__ == "__main__":
    main()
