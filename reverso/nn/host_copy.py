"""A device scalar the host reads one step late, without ever waiting for the device."""

from __future__ import annotations

import torch


class LaggedHostCopy:
    """``read(value)`` returns ``value`` as a Python float: at once for a CPU tensor; for a CUDA
    tensor, the value of an earlier call whose non-blocking copy into pinned memory has landed
    (its event has completed), and None until one has. Each CUDA call starts the next copy when
    the last one has landed. Nothing here synchronises host and device. Other devices: None."""

    def __init__(self):
        self.pending: tuple[torch.Tensor, torch.cuda.Event] | None = None

    def read(self, value: torch.Tensor) -> float | None:
        value = value.detach()
        if value.device.type == "cpu":
            return float(value)
        if value.device.type != "cuda":
            return None
        known = None
        if self.pending is not None:
            host, landed = self.pending
            if not landed.query():
                return None  # the last copy is still on its way
            known = float(host)
        else:  # in the value's dtype: the copy converts nothing, so it stays asynchronous
            host = torch.empty((), dtype=value.dtype, pin_memory=True)
        host.copy_(value, non_blocking=True)
        landed = torch.cuda.Event()
        landed.record()
        self.pending = (host, landed)
        return known

    def forget(self) -> None:
        self.pending = None

    def __deepcopy__(self, memo) -> LaggedHostCopy:
        return LaggedHostCopy()  # a CUDA event neither copies nor pickles

    def __reduce__(self):
        return (LaggedHostCopy, ())
