"""Shared by the CUDA tests: a block in which any host synchronisation is an error."""

import contextlib

import torch


@contextlib.contextmanager
def no_host_sync():
    """Run the block with ``torch.cuda.set_sync_debug_mode("error")``: a host sync raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
