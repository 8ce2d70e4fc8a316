"""Fixed 1D filter taps (float64, normalised to sum 1) shared by the pyramid, blur and upsamplers."""

from __future__ import annotations

import math

import torch

from reverso.errors import OptionError


def gaussian_taps(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Sampled Gaussian, half-width ceil(3 sigma) unless given, normalised to sum 1."""
    if sigma <= 0:
        raise OptionError(f"sigma must be positive, got {sigma}")
    radius = math.ceil(3 * sigma) if radius is None else radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-(x**2) / (2 * sigma**2))
    return taps / taps.sum()


def binomial_taps(size: int) -> torch.Tensor:
    """Row ``size - 1`` of Pascal's triangle, normalised: [1], [1, 1], [1, 2, 1], [1, 3, 3, 1], ..."""
    if size < 1:
        raise OptionError(f"filter size must be at least 1, got {size}")
    taps = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=torch.float64)
    return taps / taps.sum()


def triangle_taps(factor: int) -> torch.Tensor:
    """Linear-interpolation taps for upsampling by ``factor``: size 2f-1, peak 1 ([0.5, 1, 0.5] for 2)."""
    up = torch.arange(1, factor + 1, dtype=torch.float64)
    return torch.cat([up, up.flip(0)[1:]]) / factor


class FixedBuffers:
    """Mixin for layers whose fixed filters are non-persistent buffers computed from their
    settings. Such buffers are not in the state_dict, so a layer built on the meta device and
    materialised with ``to_empty()`` gets them back from :meth:`init_non_persistent_buffers`
    (timm's name for the same step); :func:`init_non_persistent_buffers` does a whole model."""

    def fixed_buffers(self) -> dict[str, torch.Tensor]:
        """The buffers' values, computed from the layer's settings."""
        raise NotImplementedError

    def register_fixed_buffers(self) -> None:
        """Register the buffers, computed on the CPU (they are small and read back while a layer
        is built; a layer made on another device is moved with its model)."""
        with torch.device("cpu"):
            values = self.fixed_buffers()
        for name, value in values.items():
            self.register_buffer(name, value, persistent=False)

    def init_non_persistent_buffers(self) -> None:
        """Recompute the fixed buffers on the device and in the dtype they now have."""
        with torch.device("cpu"):
            values = self.fixed_buffers()
        for name, value in values.items():
            old = self._buffers[name]
            self._buffers[name] = value.to(device=old.device, dtype=old.dtype)


def init_non_persistent_buffers(model: torch.nn.Module) -> torch.nn.Module:
    """Recompute the fixed filters of every reverso layer in ``model`` (after ``to_empty()``)."""
    for module in model.modules():
        if isinstance(module, FixedBuffers):
            module.init_non_persistent_buffers()
    return model
