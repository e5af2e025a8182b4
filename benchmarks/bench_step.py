"""Training-step time of LottaLoRA vs full training, side by side in one run.

Three variants of the same model, one AdamW step each, timed interleaved over rounds
(median): full training (every weight trains), LottaLoRA with the fused path
(reservoir_depth's default), and LottaLoRA through plain autograd (eq. 1 written as
y = beta * F.linear(x, W) + s * F.linear(F.linear(x, A), B), or with convolutions, as a
straightforward PyTorch / peft-style implementation does). The model: an MLP (width x
depth, batch B), or with --conv a Plain CNN (the `plain` family: a 3x3 stem conv and
--convs 3x3 convs of --channels channels on 28x28 inputs, BatchNorm and the head trained).
Prints the ratios to full training, the activation bytes autograd saves for backward
(any device) and, on CUDA, peak memory. The design target: <= 0.75x of full
training's step time and less peak memory.

    python benchmarks/bench_step.py [--width 2048] [--depth 4] [--batch 512] [--rank 8] [--device auto]
    python benchmarks/bench_step.py --conv [--channels 32] [--convs 4] [--batch 64] --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import _measure  # benchmarks/_measure.py
from reservoir_depth.distributions import torch_rng
from reservoir_depth.models import build
from reservoir_depth.train import adamw
from reservoir_depth.scaffold import ScaffoldConfig, ScaffoldConv, ScaffoldLayer, ScaffoldLinear, scaffold

SIDE = 28  # --conv: 28x28 single-channel inputs


def make(kind: str, a, dev):
    with torch_rng(0):
        if a.conv:
            m = build("plain", d_in=SIDE * SIDE, n_out=10, n=a.convs // 2, channels=(a.channels,))
        else:
            m = build("mlp", d_in=a.width, n_out=10, hidden=[a.width] * a.depth, dropout=0.0)
    if kind != "full":
        m = scaffold(m, ScaffoldConfig(target_modules=m.scaffold_targets, trainable=m.scaffold_trainable, r=a.rank))
    return m.to(dev)


class plain_autograd:
    """Context: ScaffoldLinear and ScaffoldConv take the generic autograd path (the baseline)."""

    def __enter__(self):
        self.saved = {cls: cls.__dict__["forward"] for cls in (ScaffoldLinear, ScaffoldConv)}
        for cls in self.saved:
            cls.forward = ScaffoldLayer.forward

    def __exit__(self, *exc):
        for cls, forward in self.saved.items():
            cls.forward = forward


def saved_bytes(model, x, y, amp: bool, dev) -> int:
    """Bytes autograd keeps for backward in one forward and loss (_measure.saved_bytes)."""

    def forward():
        with torch.autocast("cuda", torch.bfloat16, enabled=amp and dev.type == "cuda"):
            F.cross_entropy(model(x).float(), y)
    return _measure.saved_bytes(model, forward)


def step_time(model, x, y, dev, steps: int, amp: bool) -> tuple[float, int]:
    opt = adamw([p for p in model.parameters() if p.requires_grad], 1e-4, 0.01, dev)  # the trainer's AdamW
    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 2):  # 2 warm-up steps
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", torch.bfloat16, enabled=amp and dev.type == "cuda"):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else -1
    return statistics.median(times), peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=None, help="default 512 (MLP), 64 (--conv)")
    p.add_argument("--conv", action="store_true", help="a Plain CNN instead of the MLP")
    p.add_argument("--channels", type=int, default=32, help="--conv: channels of every conv")
    p.add_argument("--convs", type=int, default=4, help="--conv: 3x3 convs after the stem (even)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", action="store_true")
    a = p.parse_args()
    if a.conv and (a.convs < 2 or a.convs % 2):
        p.error(f"--convs must be even and >= 2, got {a.convs}")
    a.batch = a.batch if a.batch is not None else (64 if a.conv else 512)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if a.device == "auto" else a.device))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, SIDE * SIDE if a.conv else a.width, generator=g).to(dev)
    y = torch.randint(0, 10, (a.batch,), generator=g).to(dev)
    results = {k: [] for k in ("full", "lotta fused", "lotta plain autograd")}
    peaks, saved = {}, {}
    for _ in range(a.rounds):  # interleaved, so drift in machine load hits every variant alike
        for kind in results:
            model = make("full" if kind == "full" else "lotta", a, dev)
            if kind == "lotta plain autograd":
                with plain_autograd():
                    t, peak = step_time(model, x, y, dev, a.steps, not a.no_amp)
            else:
                t, peak = step_time(model, x, y, dev, a.steps, not a.no_amp)
            results[kind].append(t)
            peaks[kind] = peak
            if kind == "lotta plain autograd":
                with plain_autograd():
                    saved[kind] = saved_bytes(model, x, y, not a.no_amp, dev)
            else:
                saved[kind] = saved_bytes(model, x, y, not a.no_amp, dev)
            del model
    what = (f"Plain CNN: stem + {a.convs} 3x3 convs x {a.channels} channels, {SIDE}x{SIDE}" if a.conv
            else f"MLP {a.width} x {a.depth}")
    print(f"device {dev} ({torch.get_num_threads()} threads), {what}, batch {a.batch}, "
          f"r = {a.rank}, amp = {not a.no_amp and dev.type == 'cuda'}, median of {a.steps} steps x {a.rounds} rounds")
    full = statistics.median(results["full"])
    for kind, ts in results.items():
        t = statistics.median(ts)
        mem = f", peak {peaks[kind] / 2**20:.0f} MiB ({peaks[kind] / peaks['full']:.2f}x)" if peaks[kind] > 0 else ""
        print(f"{kind:22s} {1e3 * t:8.1f} ms/step   {t / full:.2f}x full training   saved for backward "
              f"{saved[kind] / 2**20:6.1f} MiB ({saved[kind] / saved['full']:.2f}x){mem}")


if __name__ == "__main__":
    main()
