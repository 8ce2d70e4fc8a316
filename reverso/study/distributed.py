"""Data-parallel training on torch.distributed (``torchrun --nproc_per_node N``).

When a process group is initialised (torchrun sets the environment; call
``torch.distributed.init_process_group`` yourself, or let :func:`reverso.train` do it when the
environment asks for one), :func:`reverso.train` wraps the network in DistributedDataParallel,
cuts every global batch into one shard per rank (the same shuffled order on every rank: a
distributed sampler), sums the training metrics over the ranks, lets rank 0 alone write
checkpoints (every rank resumes from them) and shows progress on rank 0 only. ``batch_size`` is
the global batch.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def init_from_environment() -> None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...), once."""
    if (
        dist.is_available()
        and not dist.is_initialized()
        and int(os.environ.get("WORLD_SIZE", 1)) > 1
    ):
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """The network as this rank runs it: DistributedDataParallel when there are several ranks."""
    if rank_and_world()[1] == 1:
        return net
    ids = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else None
    )
    return nn.parallel.DistributedDataParallel(net, device_ids=ids)


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's share of one global batch (every rank sees the same global order)."""
    rank, world = rank_and_world()
    return index[rank::world]


def summed(*values: float, device: torch.device) -> list[float]:
    """Each value summed over the ranks."""
    if rank_and_world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()
