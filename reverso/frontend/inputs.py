"""Inputs for a traced model: meta examples for shape propagation, random ones for runs, and
the model and dtype a GraphModule was traced from."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from reverso.ir.edit import model_device, model_dtype


def example_input(
    input_size: tuple[int, int, int], batch: int = 2, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A meta tensor of the given (C, H, W) size; batch 2 keeps batch-statistics layers happy."""
    return torch.empty((batch, *input_size), device="meta", dtype=dtype)


def random_input(
    model: nn.Module, input_size, n: int = 2, *, normal: bool = False, generator=None
) -> torch.Tensor:
    """``n`` random inputs of ``input_size`` (C, H, W) for ``model``, on its device and in its
    dtype: uniform in [0, 1), or standard normal; drawn on the CPU (with ``generator``)."""
    x = (torch.randn if normal else torch.rand)((n, *input_size), generator=generator)
    return x.to(device=model_device(model), dtype=model_dtype(model))


def traced_root(gm: fx.GraphModule) -> nn.Module:
    """The model ``gm`` was traced from (its containers keep their types; the GraphModule's are
    plain Modules), or ``gm`` itself."""
    return gm.meta.get("root", gm)


def traced_dtype(gm: fx.GraphModule) -> torch.dtype:
    """The floating dtype of the model ``gm`` was traced from."""
    return gm.meta.get("dtype", torch.float32)
