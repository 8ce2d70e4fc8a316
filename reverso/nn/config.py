"""Layers that can be rebuilt from their settings.

A rewrite that needs a layer at other widths (:mod:`reverso.rewrite.widths`) copies the whole
configuration, changes the widths and builds a fresh layer from it, so no setting is dropped on
the way: ``type(layer).from_config({**layer.config(), "in_channels": 8})``.
"""

from __future__ import annotations

from typing import Any


class Configurable:
    """A layer whose :meth:`config` holds every setting a fresh, equivalent layer needs.

    ``config()`` gives plain values (numbers, strings, booleans, None, lists or tuples of them):
    the constructor's arguments as the layer holds them now, and any setting made after
    construction that its computation reads. ``from_config(config)`` builds a layer with new
    weights from it; ``from_config(layer.config()).config() == layer.config()``.
    """

    def config(self) -> dict[str, Any]:
        """Every setting of this layer (see the class)."""
        raise NotImplementedError(f"{type(self).__name__} does not define config()")

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        """A fresh layer (new weights) with the settings of ``config``."""
        return cls(**config)


def conv2d_config(conv) -> dict[str, Any]:
    """``nn.Conv2d``'s constructor arguments as ``conv`` holds them, but ``device`` and ``dtype``
    (a rebuild places the layer itself): for the conv-like layers' :meth:`Configurable.config`."""
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "groups": conv.groups,
        "bias": conv.bias is not None,
        "padding_mode": conv.padding_mode,
    }
