"""What makes data-parallel LottaLoRA cheap: bytes all-reduced per step, and the scaffold each rank
regenerates instead of receiving, measured in one 2-process gloo run on the CPU.

    python benchmarks/bench_distributed.py                     # medium MLP and llama 3m, r = 8
    python benchmarks/bench_distributed.py --models llama:30m --rank 16 --nproc 2

For each model it trains ``--steps`` steps under DistributedDataParallel twice, full training
and LottaLoRA (the family's own targets), with a communication hook that counts the bytes of
every gradient bucket DDP all-reduces; it prints bytes per step and their ratio, the bytes a
rank would have to receive to get the frozen backbone instead of regenerating it, and the
seconds it took to regenerate it (scaffold()). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reservoir_depth import distributed
from reservoir_depth.distributions import torch_rng
from reservoir_depth.models import build, scaffold_defaults
from reservoir_depth.scaffold import ScaffoldConfig, scaffold, scaffold_layers

MODELS = {"mlp": ("mlp", {"hidden": "medium"}, "image"), "llama:3m": ("llama", {"size": "3m", "context": 128}, "tokens"),
          "llama:30m": ("llama", {"size": "30m", "context": 128}, "tokens")}


def _model(key: str, lotta: bool, rank: int) -> tuple[torch.nn.Module, float]:
    name, kwargs, _ = MODELS[key]
    d_in, n_out = (784, 10) if name == "mlp" else (65, 65)
    with torch_rng(0):
        model = build(name, d_in=d_in, n_out=n_out, **kwargs)
    t0 = time.perf_counter()
    if lotta:
        model = scaffold(model, ScaffoldConfig(**scaffold_defaults(model), r=rank))
    return model, time.perf_counter() - t0


def _batch(key: str, n: int, step: int):
    g = torch.Generator().manual_seed(step)
    if MODELS[key][2] == "image":
        return torch.randn(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)
    x = torch.randint(0, 65, (n, 128), generator=g)
    return x, torch.roll(x, -1, 1)


def _worker(rank: int, size: int, args, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    rows = []
    for key in args.models:
        for lotta in (False, True):
            model, regen = _model(key, lotta, args.rank)
            frozen = sum(m.W_seed.numel() * m.W_seed.element_size() for _, m in scaffold_layers(model))
            ddp = distributed.wrap(model, torch.device("cpu"))
            counted = [0]

            def hook(state, bucket):
                counted[0] += bucket.buffer().numel() * bucket.buffer().element_size()
                fut = dist.all_reduce(bucket.buffer().div_(size), async_op=True).get_future()
                return fut.then(lambda f: f.value()[0])

            ddp.register_comm_hook(None, hook)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
            for step in range(args.steps):
                x, y = _batch(key, args.batch // size, step * size + rank)
                out_ = ddp(x)
                loss = torch.nn.functional.cross_entropy(out_.reshape(-1, out_.shape[-1]), y.reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
            rows.append((key, "lotta" if lotta else "full", counted[0] / args.steps,
                         distributed.trainable_bytes(model), frozen, regen))
    if rank == 0:
        out.put(rows)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mlp", "llama:3m"], choices=sorted(MODELS))
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    p.add_argument("--nproc", type=int, default=2, help="processes (gloo, CPU)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=16, help="global batch")
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=_worker, args=(r, args.nproc, args, port, out)) for r in range(args.nproc)]
    for proc in procs:
        proc.start()
    rows = out.get(timeout=1800)
    for proc in procs:
        proc.join()
    print(f"{args.nproc} processes (gloo), r = {args.rank}, torch {torch.__version__}, python {sys.version.split()[0]}")
    print(f"{'model':10} {'method':6} {'all-reduced B/step':>19} {'trainable B':>12} {'ratio':>7} "
          f"{'backbone B':>12} {'regen s':>8}")
    full = {}
    for key, method, reduced, trainable, frozen, regen in rows:
        full.setdefault(key, reduced)
        print(f"{key:10} {method:6} {reduced:>19,.0f} {trainable:>12,} {reduced / full[key]:>7.4f} "
              f"{frozen:>12,} {regen:>8.3f}")


if __name__ == "__main__":
    main()
