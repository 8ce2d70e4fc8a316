"""Dynamic steerable convolutions (Jacobsen et al., BMVC 2017; docs/methods/structured.md,
sections 3 and 4).

``y = W steer(Phi(x); pose(Phi(x))) + b``: the input's responses to a fixed Gaussian-derivative
frame (orders ``min_order..order``, sigma fixed) are turned, at every pixel, by the steering
matrices of a pose that a small network estimates from the responses themselves, then mixed by a
1x1 conv ``W`` (the canonical appearance). Every pixel gets its own rotated copy of the same
filters. The pose network's last conv starts at zero, so a new layer starts as the static frame
conv ``F.conv2d(x, sum_m W[:, (c, m)] phi_m)``: a converted conv starts from its projection.

Pose modes (the thesis's optional step 3 decides between them; the names are ours):

- ``mode="angle"``: one angle per pose group, ``theta = pi tanh(p)``, gates ``cos^(n-k) sin^k``.
- ``mode="free"``: the network gives the gates of every order directly, as offsets from the
  identity's gates (``a_{n,0} = 1 + tanh(p)``, ``a_{n,k} = tanh(p)``; inferred, so that a zero
  network is the identity).

``pose="per_in"``: one pose per input channel (the thesis's default); ``"shared"``: one per pixel.
Axis convention: :mod:`reverso.nn.steering`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reverso.errors import OptionError
from reverso.names import STEERABLE_MODES, STEERABLE_POSES

from . import fused_steer
from .config import Configurable
from .filters import FixedBuffers
from .gaussian import gaussian_basis_2d, grid, radius_for
from .padding import output_size
from .pointwise import pointwise_conv
from .steering import angle_gates, rotate_responses, steer_responses, steering_terms

torch.fx.wrap("pointwise_conv")  # one call in a traced graph: its route reads the device


class DynamicSteerableConv2d(Configurable, FixedBuffers, nn.Module):
    """A conv whose Gaussian-derivative filters are turned per pixel by an estimated pose.

    ``kernel_size`` is the frame's grid (default the paper's ``2 ceil(2 sigma) + 1``), ``padding``
    defaults to half of it (sizes kept at stride 1). The pose network is three convs at the
    output resolution, tanh between: 1x1 ``C M -> hidden``, then 3x3 ``hidden -> hidden`` and
    3x3 ``hidden -> groups x gates`` (the thesis: three layers, 8-16 units, tanh; the kernel sizes
    are ours).
    ``forward(x, pose=None)`` takes an explicit pose field instead: ``theta`` of shape
    ``(B, G, H', W')`` in angle mode, the gates ``(B, G, K, H', W')`` in free mode (K gates per
    pixel, order by order, ``n + 1`` each), where G is C_in (``per_in``) or 1 (``shared``).

    ``pose_net[0]`` and ``mix`` are ``nn.Conv2d`` modules for their parameters (and state_dict
    keys), but the forward reads their weights directly: the first pose layer folded into a conv
    of the input, ``mix`` as :func:`~reverso.nn.pointwise.pointwise_conv`. Forward hooks on those
    two submodules therefore do not run.

    ``fused = True`` (on a layer, or on the class) runs angle mode's frame conv and steering as
    fused Triton kernels on CUDA tensors (:mod:`reverso.nn.fused_steer`): the same values, the
    frame responses never written to memory. Opt-in until it is measured faster than the PyTorch
    route on a GPU (docs/structured_layers.md, Performance).
    """

    #: run the frame conv and the angle steering in fused Triton kernels where they can run
    fused: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        order: int = 2,
        sigma: float = 1.0,
        kernel_size: int | None = None,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = True,
        pose: str = "per_in",
        mode: str = "angle",
        hidden: int = 16,
        min_order: int = 0,
    ):
        super().__init__()
        if pose not in STEERABLE_POSES or mode not in STEERABLE_MODES:
            raise OptionError(
                f"pose must be one of {STEERABLE_POSES} and mode one of {STEERABLE_MODES}"
            )
        if not 0 <= min_order <= order or order < 1:
            raise OptionError(
                f"need 0 <= min_order <= order and order >= 1, got {min_order}, {order}"
            )
        size = kernel_size or 2 * radius_for(sigma) + 1
        if size % 2 == 0:
            raise OptionError(f"the frame's grid must have an odd size, got {size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.order, self.min_order = order, min_order
        # the frame is state (a conversion picks its scale per layer): saved with its scale
        self.sigma = float(sigma)
        self.register_buffer("frame_sigma", torch.tensor(self.sigma))
        self.kernel_size, self.stride = size, int(stride)
        self.padding = size // 2 if padding is None else int(padding)
        self.pose_mode, self.mode = pose, mode
        self._plan = steering_terms(min_order, order)  # constants: no graph break when compiled
        self.register_buffer("atoms", self.frame().float())
        self.register_fixed_buffers()
        m = self.atoms.shape[0]
        self.groups = in_channels if pose == "per_in" else 1
        self.num_gates = self.identity_gates.numel()  # gates per pose group, all orders
        per_group = 1 if mode == "angle" else self.num_gates
        self.pose_net = nn.Sequential(  # the first layer mixes the responses at each pixel,
            nn.Conv2d(in_channels * m, hidden, 1),
            nn.Tanh(),  # the next two see 5x5 around it
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(hidden, self.groups * per_group, 3, padding=1),
        )
        self.register_load_state_dict_post_hook(_refit_frame)
        nn.init.zeros_(self.pose_net[-1].weight)
        nn.init.zeros_(self.pose_net[-1].bias)
        self.mix = nn.Conv2d(in_channels * m, out_channels, 1, bias=bias)  # W, channels (c, m)

    def config(self) -> dict:
        """The constructor's arguments (``sigma`` the frame's current scale) and ``fused`` when
        set on this layer (None: the class's setting)."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "order": self.order,
            "sigma": self.sigma,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "bias": self.mix.bias is not None,
            "pose": self.pose_mode,
            "mode": self.mode,
            "hidden": self.pose_net[0].out_channels,
            "min_order": self.min_order,
            "fused": self.__dict__.get("fused"),
        }

    @classmethod
    def from_config(cls, config: dict) -> DynamicSteerableConv2d:
        """A fresh layer (new weights, the pose network at zero) with the settings of ``config``."""
        config = dict(config)
        fused = config.pop("fused", None)
        layer = cls(**config)
        if fused is not None:
            layer.fused = fused
        return layer

    def frame(self) -> torch.Tensor:
        """``(M, s, s)`` float64: the Gaussian-derivative blocks min_order..order at sigma."""
        return steerable_frame(self.order, self.sigma, self.kernel_size, self.min_order)

    def init_non_persistent_buffers(self) -> None:
        """After ``to_empty()``: the frame from the layer's sigma (a state_dict loaded
        afterwards brings its own)."""
        super().init_non_persistent_buffers()
        with torch.no_grad():
            self.atoms.copy_(self.frame())
            self.frame_sigma.fill_(self.sigma)

    def fixed_buffers(self) -> dict[str, torch.Tensor]:
        # free mode's gates at the identity, kept on the module's device (no copy per forward),
        # and the fused kernels' tables from the frame at sigma (reverso.nn.fused_steer); the
        # PyTorch route's steering matrices are Python constants (reverso.nn.steering)
        orders = range(max(1, self.min_order), self.order + 1)
        taps, a, turned, rows = fused_steer.tables(self.frame(), self._plan)
        return {
            "identity_gates": torch.cat([torch.eye(1, n + 1)[0] for n in orders]),
            "steer_taps": taps,
            "steer_a": a,
            "steer_turned": turned,
            "steer_rows": rows,
        }

    # -- pieces ------------------------------------------------------------------------------
    def frame_responses(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, M, H', W')``: each input channel against each frame atom (cross-correlation)."""
        c, m, s = self.in_channels, self.atoms.shape[0], self.kernel_size
        weight = self.atoms.to(x.dtype).unsqueeze(1).repeat(c, 1, 1, 1)  # (C M, 1, s, s)
        z = F.conv2d(x, weight.view(c * m, 1, s, s), None, self.stride, self.padding, 1, c)
        return z.unflatten(1, (c, m))

    def estimate_pose(self, x: torch.Tensor) -> torch.Tensor:
        """The pose the network estimates for ``x``: ``theta (B, G, H', W')`` in angle mode, the
        gates ``(B, G, K, H', W')`` in free mode (what ``forward(x, pose=...)`` takes).

        The network's first layer, a 1x1 conv ``V`` on the frame responses, is linear in them, so
        it runs as one conv of the input with the folded kernel ``sum_m V[:, (c, m)] phi_m``: the
        same values, without reading the ``C M`` response maps (nor their gradient) a second time.
        """
        first = self.pose_net[0]
        c, m = self.in_channels, self.atoms.shape[0]
        atoms = self.atoms.to(first.weight.dtype)
        kernel = torch.einsum("hcm,myx->hcyx", first.weight.view(-1, c, m), atoms)
        p = F.conv2d(x, kernel, first.bias, self.stride, self.padding)
        for layer in list(self.pose_net)[1:]:  # each an installed module (a slice is not)
            p = layer(p)
        if self.mode == "angle":
            return math.pi * torch.tanh(p)  # (B, G, H', W')
        offsets = torch.tanh(p).unflatten(1, (self.groups, self.num_gates))
        return offsets + self.identity_gates.to(p.dtype).view(1, 1, -1, 1, 1)

    def gates(self, pose: torch.Tensor) -> list[torch.Tensor]:
        """Per steered order: the ``(B, G, n + 1, H', W')`` gates of a pose (``theta`` in angle
        mode, the gates themselves in free mode)."""
        if self.mode == "free":
            return list(pose.split([n + 1 for n, _, _ in self._plan], dim=2))
        return [torch.stack(a, dim=2) for a in angle_gates(pose, self._plan)]

    def steer(self, z: torch.Tensor, gates: list[torch.Tensor]) -> torch.Tensor:
        """``z~[c, n] = sum_k a_{n,k} A_{n,k} z[c, n]`` for every steered order; order 0 passes
        (:func:`reverso.nn.steering.steer_responses`)."""
        return steer_responses(z, gates, self._plan)

    def forward(self, x: torch.Tensor, pose: torch.Tensor | None = None) -> torch.Tensor:
        pose = self.estimate_pose(x) if pose is None else pose
        if self._runs_fused(x, pose):
            tables = (self.steer_taps, self.steer_a, self.steer_turned, self.steer_rows)
            steered = fused_steer.frame_steer(
                x, pose, tables, self.atoms.shape[0], self.stride, self.padding
            )
        elif self.mode == "angle":  # the same as steer(z, gates(pose)), with a cheaper backward
            steered = rotate_responses(self.frame_responses(x), pose, self._plan)
        else:
            steered = self.steer(self.frame_responses(x), self.gates(pose))
        return pointwise_conv(steered.flatten(1, 2), self.mix.weight, self.mix.bias)

    def _runs_fused(self, x: torch.Tensor, pose: torch.Tensor) -> bool:
        """Angle mode, a fused-capable input (:func:`fused_steer.available`) and a pose field of
        exactly ``(B, G, H', W')``; anything else (a broadcast pose, float64) runs in PyTorch."""
        if not (self.fused and self.mode == "angle" and fused_steer.available(x)):
            return False
        k, s, p = self.kernel_size, self.stride, self.padding
        size = [output_size(n, k, s, p, p) for n in x.shape[-2:]]
        return tuple(pose.shape) == (x.shape[0], self.groups, *size)

    # -- the static conv it starts from ------------------------------------------------------
    def effective_weight(self) -> torch.Tensor:
        """The kernel of the unsteered layer (pose 0): ``(C_out, C_in, s, s)``."""
        w = self.mix.weight.view(self.out_channels, self.in_channels, -1)
        return torch.einsum("ocm,myx->ocyx", w, self.atoms.to(w.dtype))

    def load_kernels(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> float:
        """Set W to the least-squares projection of ``weight`` on the frame; the relative error
        (NaN for a weight on the meta device)."""
        from .frames import project_kernels

        if weight.is_meta:
            return float("nan")
        coeff, error = project_kernels(self.atoms, weight)
        with torch.no_grad():
            self.mix.weight.copy_(coeff.reshape(self.mix.weight.shape))
            if self.mix.bias is not None:
                self.mix.bias.copy_(bias if bias is not None else torch.zeros_like(self.mix.bias))
        return error

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, order={self.order}, sigma={self.sigma:g}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, pose={self.pose_mode!r}, "
            f"mode={self.mode!r}"
        )


def steerable_frame(order: int, sigma: float, size: int, min_order: int = 0) -> torch.Tensor:
    """``(M, size, size)`` float64: the Gaussian-derivative blocks ``min_order..order`` at
    ``sigma``, block by block as they are steered (the frame of a :class:`DynamicSteerableConv2d`)."""
    atoms = gaussian_basis_2d(sigma, order, grid(size // 2, dtype=torch.float64))
    return atoms[min_order * (min_order + 1) // 2 :]


def _refit_frame(module: DynamicSteerableConv2d, _incompatible_keys) -> None:
    if module.frame_sigma.device.type != "meta":  # the loaded frame's scale, and its tables
        module.sigma = float(module.frame_sigma)
        FixedBuffers.init_non_persistent_buffers(module)


def gradient_pose(z: torch.Tensor) -> torch.Tensor:
    """The oracle pose ``atan2(-Phi_y, Phi_x)`` from frame responses ``(B, C, M, H, W)`` whose
    first-order pair sits at atoms 1, 2 (``min_order=0``): it turns that pair into
    ``(|grad|, 0)``, the largest response over all rotations."""
    return torch.atan2(-z[:, :, 2], z[:, :, 1])
