"""Distributed training: two gloo ranks on the CPU, spawned as processes. The workers are
defined here, so the spawned processes import this module (and no other test module)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import reverso
from reverso.study.train import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_data_parallel(tmp_path):

    mp.spawn(worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    g0, g1 = (torch.load(tmp_path / f"grads_{r}.pt") for r in range(2))
    assert g0.numel() > 0 and torch.allclose(g0, g1)  # gradients all-reduced across the two ranks


def test_data_parallel_training_reaches_the_single_process_weights(tmp_path):
    """Two gloo ranks under a torchrun-like environment, each on half of every global batch,
    end with the weights one process reaches with the same global batch; rank 0 alone writes
    the checkpoints, and the summed metrics match."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(train_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    model = tiny_model()
    single = train(
        model, tiny_data(), epochs=3, batch_size=16, lr=0.1, progress=False, val_fraction=0.25
    )
    for rank in range(2):
        weights = torch.load(tmp_path / f"w{rank}.pt")
        assert all(torch.allclose(weights[k], v, atol=1e-5) for k, v in model.state_dict().items())
        history = torch.load(tmp_path / f"h{rank}.pt")
        assert [h["loss"] for h in history] == pytest.approx(
            [h["loss"] for h in single.runs[0].history], rel=1e-4
        )
        # each rank trained on its half of every global batch: 48 training images x 3 epochs / 2
        assert torch.load(tmp_path / f"seen{rank}.pt") == 72
    assert (tmp_path / "ckpt" / "run0.pt").exists()


# -- the workers, run in the spawned processes ---


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # both ranks build identical networks
        td = reverso.topdown(reverso.models.create("resnet32_preact"), input_size=(3, 32, 32))
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
    return Data(
        "synthetic",
        TensorImages(x[:64], y[:64]),
        TensorImages(x[64:], y[64:]),
        (1, 8, 8),
        ["left", "right"],
    )


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )


def train_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Run by test_train's data-parallel test: reverso.train under a torchrun-like environment."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    from reverso.study import distributed

    seen, shard = [], distributed.shard
    distributed.shard = lambda index: seen.append(len(part := shard(index))) or part
    try:
        model = tiny_model()
        result = reverso.train(
            model,
            tiny_data(),
            epochs=3,
            batch_size=16,
            lr=0.1,
            progress=False,
            val_fraction=0.25,
            checkpoint=os.path.join(out_dir, "ckpt"),
        )
        torch.save(
            {k: v for k, v in model.state_dict().items()}, os.path.join(out_dir, f"w{rank}.pt")
        )
        torch.save(result.runs[0].history, os.path.join(out_dir, f"h{rank}.pt"))
        torch.save(sum(seen), os.path.join(out_dir, f"seen{rank}.pt"))  # training samples
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
