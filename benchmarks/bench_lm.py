"""Training step of a Llama-style LM built several ways, side by side in one run.

The same decoder LM (token embedding, pre-norm blocks: RMSNorm, causal attention
with rotary positions through F.scaled_dot_product_attention, SwiGLU MLP; final
RMSNorm, lm_head) built from one seed, trained one AdamW step at a time:

    full   every weight trains
    ours   reservoir_depth.scaffold: y = beta W_seed x + s B A x on the q, k, v, o
           and MLP projections (r = 8, alpha = 16), the fused Linear path
    plain  the same scaffolded model through generic autograd (ScaffoldLayer.forward,
           eq. 1 as a straightforward PyTorch implementation writes it)
    peft   peft's LoRA on the same projections (r = 8, lora_alpha = 16), base frozen

Embedding, norms and lm_head train in every variant. With --compile each variant is
also run under torch.compile ("+compile", each block compiled: PyTorch's regional
compilation; a failure is reported as a row). Variants
run interleaved over rounds; the step time is the median of the per-step times after
warm-up. Ratios are to full training in the same run: step time, and memory: peak
allocated memory on CUDA, activation bytes saved for backward on CPU.

    python benchmarks/bench_lm.py --preset cpu --device cpu --threads 1
    python benchmarks/bench_lm.py --preset 150m --compile --json lm_150m.json
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
from reservoir_depth.scaffold import ScaffoldConfig, ScaffoldLayer, ScaffoldLinear, matches, scaffold


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
    "cpu": LMConfig(vocab=256, d=256, n_layers=4, n_heads=4, hidden=704, context=128, batch=16),
    "150m": LMConfig(vocab=32000, d=1024, n_layers=12, n_heads=16, hidden=2816, context=512, batch=32),
}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRAINABLE = ("embed", r".*norm", "lm_head")  # trained in every variant besides the adapters
RANK, ALPHA = 8, 16.0


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight.to(x.dtype)


def rotate(x, cos, sin):
    """Rotary positions (rotate-half form) on (B, heads, T, head_dim)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.h = c.n_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(c.d, c.d, bias=False) for _ in range(4))

    def forward(self, x, cos, sin):
        B, T, d = x.shape
        q, k, v = (p(x).view(B, T, self.h, d // self.h).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rotate(q, cos.to(q.dtype), sin.to(q.dtype)), rotate(k, cos.to(k.dtype), sin.to(k.dtype))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, d))


class MLP(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(c.d, c.hidden, bias=False), nn.Linear(c.d, c.hidden, bias=False)
        self.down_proj = nn.Linear(c.hidden, c.d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        self.attn_norm, self.attn, self.mlp_norm, self.mlp = RMSNorm(c.d), Attention(c), RMSNorm(c.d), MLP(c)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class LM(nn.Module):
    """A compact Llama-style decoder: logits (B, T, vocab) from tokens (B, T)."""

    def __init__(self, c: LMConfig) -> None:
        super().__init__()
        if c.d % c.n_heads or (c.d // c.n_heads) % 2:
            raise ValueError(f"d={c.d} must split into {c.n_heads} heads of even width")
        self.embed = nn.Embedding(c.vocab, c.d)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm, self.lm_head = RMSNorm(c.d), nn.Linear(c.d, c.vocab, bias=False)
        hd = c.d // c.n_heads
        freq = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        angle = torch.outer(torch.arange(c.context, dtype=torch.float64), freq)
        self.register_buffer("cos", angle.cos().float(), persistent=False)
        self.register_buffer("sin", angle.sin().float(), persistent=False)

    def forward(self, tokens):
        T = tokens.shape[1]
        x = self.embed(tokens)
        cos, sin = self.cos[:T], self.sin[:T]
        for block in self.layers:
            x = block(x, cos, sin)
        return self.lm_head(self.norm(x))


# -- the variants ----------------------------------------------------------------------------
VARIANTS = ("full", "ours", "plain", "peft")


class PlainScaffoldLinear(ScaffoldLinear):
    """ScaffoldLinear through the generic autograd path (the baseline). A class of its
    own, not a patched method, so that torch.compile never reuses the fused path's graph."""

    forward = ScaffoldLayer.forward


def _ours(model: nn.Module) -> nn.Module:
    return scaffold(model, ScaffoldConfig(target_modules=PROJECTIONS, trainable=TRAINABLE, r=RANK, alpha=ALPHA))


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

    model = inject_adapter_in_model(LoraConfig(target_modules=list(PROJECTIONS), r=RANK, lora_alpha=ALPHA,
                                               lora_dropout=0.0, bias="none"), model)
    for n, p in model.named_parameters():  # the same trainable set as ours: adapters + TRAINABLE modules
        p.requires_grad_("lora_" in n)
    for n, m in model.named_modules():
        if n and matches(n, TRAINABLE):
            for p in m.parameters():
                p.requires_grad_(True)
    return model


BUILDERS = {"full": lambda m: m, "ours": _ours, "plain": _plain, "peft": _peft}


def build(variant: str, c: LMConfig, dev: torch.device | str = "cpu") -> nn.Module:
    """The LM of ``variant`` ("full", "ours", "plain", "peft"), every one from seed 0."""
    with torch_rng(0):
        model = LM(c)
    return BUILDERS[variant](model).to(dev)


def compile_blocks(model: nn.Module) -> nn.Module:
    """torch.compile each block (regional compilation: one graph serves every block, so
    compiling a 12-layer model costs about one block's compile time)."""
    for block in model.layers:
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
    """Per-step times (s) of forward + backward + AdamW step after ``warmup`` steps, and the
    peak allocated CUDA memory over them (nan on CPU)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        _sync(dev)
        t0 = time.perf_counter()
        loss = _loss(model, x, y, amp, dev)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"non-finite loss {loss.item()} at step {i}")
    peak = float(torch.cuda.max_memory_allocated()) if dev.type == "cuda" else math.nan
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
            if "saved" not in info[name] and dev.type == "cpu" and not compiled:  # hooks do not see inside compiled graphs
                info[name]["saved"] = saved_bytes(model, x, y, amp, dev)
            info[name]["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            info[name]["adapter"] = adapter_parameters(model)
            info[name]["frozen_dtype"] = frozen_dtypes(model)
            del model
            _free(dev)


def benchmark(c: LMConfig, dev: torch.device, variants: list[str], compile_: bool, warmup: int, steps: int,
              rounds: int, amp: bool) -> list[dict[str, Any]]:
    """One row per variant (and per "+compile" variant): median step time, tokens/s, memory and
    their ratios to full training measured in the same run."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, c.vocab, (c.batch, c.context + 1), generator=g).to(dev)
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    names = [v + s for s in ("", "+compile") if s == "" or compile_ for v in variants]
    times: dict[str, list[float]] = {n: [] for n in names}
    info: dict[str, dict[str, Any]] = {n: {} for n in names}
    proto: dict[str, nn.Module] = {}  # built once on the CPU (drawing W_seed is the slow part), copied per run
    for v in variants:
        proto[v] = _plain_of(proto["ours"]) if v == "plain" and "ours" in proto else build(v, c)
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
        mem = info[name]["peak"] if dev.type == "cuda" else info[name].get("saved")
        mem_full = ref["peak"] if dev.type == "cuda" else ref.get("saved")
        rows.append({"variant": name, "ms_per_step": 1e3 * t, "tokens_per_s": c.batch * c.context / t,
                     "time_vs_full": t / full, "memory_mib": None if mem is None else mem / 2**20,
                     "memory_vs_full": None if mem is None else mem / mem_full,
                     "trainable": info[name]["trainable"], "adapter": info[name]["adapter"],
                     "frozen_dtype": info[name]["frozen_dtype"], "n_steps": len(times[name])})
    return rows


def _num(v: float | None, fmt: str, unit: str = "") -> str:
    return "n/a" if v is None else f"{v:{fmt}}{unit}"


def markdown(rows: list[dict[str, Any]], memory: str) -> str:
    head = f"| variant | ms/step | tokens/s | time vs full | {memory} MiB | memory vs full | trainable | frozen dtype |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error'].replace('|', '/')} |  |  |  |  |  |  |")
        else:
            lines.append(f"| {r['variant']} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:,.0f} | "
                         f"{r['time_vs_full']:.2f}x | {_num(r['memory_mib'], '.1f')} | {_num(r['memory_vs_full'], '.2f', 'x')} | "
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
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
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
    a = p.parse_args(argv)
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
    c = PRESETS[a.preset]
    rows = benchmark(c, dev, variants, a.compile, warmup, steps, rounds, amp)
    with torch_rng(0):
        ref = LM(c)
    n_total = sum(q.numel() for q in ref.parameters())
    n_blocks = sum(q.numel() for q in ref.layers.parameters())
    del ref
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    memory = "peak allocated" if dev.type == "cuda" else "saved for backward"
    command = "python " + " ".join(shlex.quote(s) for s in [sys.argv[0] if argv is None else "benchmarks/bench_lm.py",
                                                            *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}")
    print(f"device: {card}; torch {torch.__version__}; bf16 autocast: {amp}")
    print(f"model: Llama-style LM, preset {a.preset}: {asdict(c)}; {n_total / 1e6:.1f}M parameters "
          f"({n_blocks / 1e6:.1f}M in the blocks, {(n_total - n_blocks) / 1e6:.1f}M embedding, norm and lm_head); "
          f"adapters r = {RANK}, alpha = {ALPHA:g} on {', '.join(PROJECTIONS)}")
    print(f"median of {steps} steps x {rounds} rounds after {warmup} warm-up steps; memory: {memory}")
    print(markdown(rows, memory))
    if a.json is not None:
        a.json.write_text(json.dumps({"command": command, "device": card, "torch": torch.__version__, "amp": amp,
                                      "preset": a.preset, "config": asdict(c), "parameters": n_total,
                                      "block_parameters": n_blocks, "r": RANK, "alpha": ALPHA, "memory": memory,
                                      "steps": steps, "warmup": warmup, "rounds": rounds, "rows": rows},
                                     indent=2, sort_keys=True) + "\n")
    return rows


if __name__ == "__main__":
    main()
