"""Building a network without allocating its weights.

:func:`reverso.load` builds the network a file's recipe describes before it has compared that
network with the file's tensors, so the build must cost nothing the file does not pay for.
Inside :func:`weightless`, every CPU tensor made by a factory function (``torch.empty``,
``torch.zeros``, ``torch.randn``, ...) of more than :data:`SMALL` elements is made on the meta
device (shapes, no data), even where the builder names the CPU; smaller ones are made for real, so a builder that computes its widths
with small tensors and reads them back (torchvision's RegNets do) still works. What comes out is
then moved to the meta device whole (:func:`to_meta`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from reverso.errors import FileFormatError

#: the most elements a factory call may allocate for real inside :func:`weightless`
SMALL = 4096


@contextlib.contextmanager
def weightless(*, budget: int | None = None) -> Iterator[None]:
    """Make every large tensor on the meta device while the block runs (see the module); with
    ``budget``, refuse (:class:`~reverso.errors.FileFormatError`) a build that makes more tensors
    than that: its time and the Python objects it makes stay bounded too."""
    with _LargeOnMeta(budget):
        yield


def to_meta(module: nn.Module) -> nn.Module:
    """``module`` with every parameter and buffer on the meta device (in place)."""
    return module.to("meta")


class _LargeOnMeta(TorchFunctionMode):
    def __init__(self, budget: int | None = None):
        super().__init__()
        self.budget, self.made = budget, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _device_constructors():
            self.made += 1
            if self.budget is not None and self.made > self.budget:
                raise FileFormatError(
                    f"the recipe builds a network of more than {self.budget} tensors, far more "
                    "than the file holds; refused"
                )
            if str(kwargs.get("device") or "cpu") == "cpu":  # a CPU tensor, asked for or not
                numel = _requested_elements(func.__name__, args, kwargs)
                if numel is None or numel > SMALL:
                    kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _requested_elements(name: str, args: tuple, kwargs: dict) -> int | None:
    """How many elements a factory call asks for; None when it cannot be told cheaply."""
    try:
        if name in ("tensor", "as_tensor", "asarray", "scalar_tensor"):
            return 1 if name == "scalar_tensor" else _data_elements(args[0] if args else None)
        if name in ("arange", "range"):
            numbers = [float(a) for a in args if isinstance(a, (int, float))]
            start, end, step = ([0.0] if len(numbers) == 1 else []) + numbers + [1.0]
            return max(0, math.ceil((end - start) / step)) if step else None
        if name in ("linspace", "logspace"):
            steps = args[2] if len(args) > 2 else kwargs.get("steps")
            return int(steps)
        if name == "eye":
            n = int(args[0])
            return n * int(args[1] if len(args) > 1 else kwargs.get("m", n))
        if name in ("randperm",) or name.endswith("_window"):
            return int(args[0])
        if name == "randint":
            size = kwargs.get("size", args[-1] if args else None)
            return math.prod(int(s) for s in size)
        size = kwargs.get("size", args[0] if len(args) == 1 else args)
        if name in ("full", "empty_strided", "empty_permuted") and args:
            size = args[0]
        if isinstance(size, (int, torch.SymInt)):
            return int(size)
        return math.prod(int(s) for s in size)
    except (TypeError, ValueError, IndexError, OverflowError, ZeroDivisionError):
        return None


def _data_elements(data) -> int | None:
    """The elements of data already in memory (a nested list, an array): a copy of it is small
    enough to make for real when it is small itself."""
    if isinstance(data, (int, float, bool, complex)):
        return 1
    if isinstance(data, torch.Tensor):
        return data.numel()
    size = getattr(data, "size", None)  # numpy arrays
    if isinstance(size, int):
        return size
    if isinstance(data, (list, tuple)):
        return sum(_data_elements(d) or SMALL + 1 for d in data) if len(data) <= SMALL else None
    return None
