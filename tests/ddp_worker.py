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


def tiny_data():
    """64 + 16 synthetic 1x8x8 images of 2 classes (a bright and a dark half)."""
    from reverso.study.data import Data, TensorImages

    g = torch.Generator().manual_seed(0)
    x = torch.rand(80, 1, 8, 8, generator=g)
    y = (x[:, 0, :, :4].mean((1, 2)) > x[:, 0, :, 4:].mean((1, 2))).long()
    return Data("synthetic", TensorImages(x[:64], y[:64]), TensorImages(x[64:], y[64:]),
                (1, 8, 8), ["left", "right"])  # fmt: skip


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 2),
    )  # fmt: skip


def train_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Run by test_train's data-parallel test: reverso.train under a torchrun-like environment."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    from reverso.study import distributed

    seen, shard = [], distributed.shard
    distributed.shard = lambda index: seen.append(len(part := shard(index))) or part
    try:
        model = tiny_model()
        result = reverso.train(model, tiny_data(), epochs=3, batch_size=16, lr=0.1, progress=False,
                               val_fraction=0.25, checkpoint=os.path.join(out_dir, "ckpt"))  # fmt: skip
        torch.save(
            {k: v for k, v in model.state_dict().items()}, os.path.join(out_dir, f"w{rank}.pt")
        )
        torch.save(result.runs[0].history, os.path.join(out_dir, f"h{rank}.pt"))
        torch.save(sum(seen), os.path.join(out_dir, f"seen{rank}.pt"))  # training samples
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
