"""Training across processes with torchrun: each rank regenerates the scaffold, DDP reduces the rest.

    torchrun --nproc-per-node 2 -m reservoir_depth train --data digits --rank 4

Nothing but trainable tensors crosses processes: every rank builds the same model and
regenerates W_seed from (spec, root seed, layer name) itself, and DistributedDataParallel
all-reduces the gradients of parameters that require grad, which for a LottaLoRA model are
A, B, beta and the declared extras. Each optimiser step takes one global batch of
``batch_size`` examples; rank k trains on rows k, k + N, k + 2N, ... of it, and its loss is
weighted by its share of the batch, so the averaged gradient is the gradient of the global
batch's mean loss: the same step as one process with the same global batch (tested).
Gloo on the CPU, NCCL on CUDA. Rank 0 alone prints and writes files. A script that calls
``train`` under torchrun ends with ``distributed.finish()`` (the CLI does it for you).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process prints and writes files: rank 0 (torchrun's RANK before the group is up)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment); True if joined.

    Gloo for a CPU ``device``, NCCL for CUDA (each rank on cuda:LOCAL_RANK)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def finish(wait: bool = True) -> None:
    """Wait for every rank (``wait``), then take the process group down (nothing outside a group).

    A gloo group still up when the interpreter exits can abort its threads at teardown
    ("terminate called without an active exception"), failing a run that trained fine."""
    if dist.is_available() and dist.is_initialized():
        if wait:  # not after a failure: the other ranks may never reach the barrier
            dist.barrier()
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """cuda:LOCAL_RANK under torchrun on CUDA, else ``device``."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when a process group of several ranks is up, else itself.

    DDP reduces only parameters that require grad (the trainable set). Everything else, the
    buffers (W_seed) and the frozen parameters (a seeded bias, frozen norms), is on DDP's ignore
    list, so it is not even broadcast at start: each rank regenerated it from the seed. (So a
    user model's BatchNorm statistics stay per rank; rank 0's are the ones written.)"""
    rank, size = world()
    if size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, frozen + [n for n, _ in model.named_buffers()])
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard(idx: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This rank's rows of a global batch ``idx`` and the weight of its mean loss.

    The weight, world size x (rows here / rows in the batch), makes DDP's average of the ranks'
    gradients equal the gradient of the global batch's mean loss, even for an uneven last batch."""
    rank, size = world()
    if size == 1:
        return idx, 1.0
    mine = idx[rank::size]
    return mine, size * len(mine) / len(idx)


def total(value: float, device: torch.device) -> float:
    """``value`` summed over the processes (``value`` itself with one)."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def trainable_bytes(model: nn.Module) -> int:
    """Bytes of gradient one step all-reduces: every parameter that requires grad (DDP's buckets)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
