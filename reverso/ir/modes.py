"""Switching a model to eval mode for a while, every submodule's own mode restored afterwards.

The one way reverso changes modes temporarily (tracing, shape propagation, width repair, the
study tools): ``model.train(flag)`` would reset every submodule, so a BatchNorm the user froze in
eval mode inside a training model would come back in training mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def keeping_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block ``model`` may be switched between train and eval; afterwards every
    submodule has its own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block, every submodule's own mode restored after it."""
    with keeping_modes(model):
        yield model.eval()
