"""Run by test_network.test_distributed_data_parallel in two spawned processes (gloo, CPU)."""

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from golden_models import ResNet32

import reverso


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # both ranks build identical networks
        td = reverso.topdown(ResNet32(), input_size=(3, 32, 32))
        model = torch.nn.parallel.DistributedDataParallel(td)
        torch.manual_seed(100 + rank)  # but see different data
        x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
        F.cross_entropy(model(x), y).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        torch.save(grads, os.path.join(out_dir, f"grads_{rank}.pt"))
    finally:
        dist.destroy_process_group()
