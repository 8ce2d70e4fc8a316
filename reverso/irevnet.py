"""i-RevNet (Jacobsen et al., ICLR 2018): invertible networks built of coupling blocks.

Every layer of the body is a bijection (or an injection, with zero channels appended), so the
input comes back exactly from the last feature map: ``model.inverse(model.forward_features(x))``.
Resolution drops by the space-to-depth permutation psi(2), never by striding a map away. The
layout follows the authors' code (``models/iRevNet.py``): an input psi, then stages of coupling
blocks whose first block may use psi(2), then BN-ReLU-average-linear. See
docs/methods/irevnet.md.

``create("irevnet_imagenet")`` is the thesis's bijective model (b) (1x1-3x3-1x1 residual
functions, 29,201,092 parameters); ``create("irevnet_cifar")`` the code's CIFAR configuration
(3x3 kernels, injective: 3 channels padded to 32, 6,274,826 parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reverso.errors import OptionError

from .nn.reversible import CouplingBlock, InjectivePad, ReversibleSequence
from .nn.space_to_depth import SpaceToDepth


def residual_function(
    cin: int, cout: int, stride: int, *, first: bool, dropout: float, kernels=(3, 3, 3), mult=4
) -> nn.Sequential:
    """F of a coupling block (docs/methods/irevnet.md, section 2.3): [BN-ReLU] conv, BN-ReLU
    conv, dropout, BN-ReLU conv, no biases, inner width ``cout // mult``; the net's very first F
    has no leading BN-ReLU."""
    mid = max(cout // mult, 1)
    k1, k2, k3 = kernels
    layers: list[nn.Module] = [] if first else [nn.BatchNorm2d(cin), nn.ReLU()]
    layers += [
        nn.Conv2d(cin, mid, k1, stride, padding=k1 // 2, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(),
        nn.Conv2d(mid, mid, k2, padding=k2 // 2, bias=False),
        nn.Dropout(dropout),
        nn.BatchNorm2d(mid),
        nn.ReLU(),
        nn.Conv2d(mid, cout, k3, padding=k3 // 2, bias=False),
    ]
    return nn.Sequential(*layers)


class IRevNet(nn.Module):
    """An i-RevNet: ``stages`` of (blocks, stride, channels per half) after an input psi."""

    def __init__(
        self,
        stages: Sequence[tuple[int, int, int]],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        init_block: int = 2,
        kernels=(3, 3, 3),
        dropout: float = 0.0,
        memory_saving: bool = True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.init_psi = SpaceToDepth(init_block) if init_block > 1 else nn.Identity()
        width = in_chans * max(init_block, 1) ** 2  # both halves
        body: list[nn.Module] = []
        run: list[CouplingBlock] = []
        first = True
        for depth, stride, channels in stages:
            for i in range(depth):
                s = stride if i == 0 else 1
                if s == 1 and width < 2 * channels:  # injective: zeros fill up the pair
                    if run:
                        body.append(ReversibleSequence(run, memory_saving=memory_saving))
                        run = []
                    body.append(InjectivePad(2 * channels - width))
                    width = 2 * channels
                if width // 2 * s * s != channels:
                    raise OptionError(
                        f"a block of stride {s} maps {width // 2} channels per half to "
                        f"{width // 2 * s * s}, not {channels}"
                    )
                f = residual_function(
                    width // 2, channels, s, first=first, dropout=dropout, kernels=kernels
                )
                run.append(CouplingBlock(f, s))
                width, first = 2 * channels, False
        body.append(ReversibleSequence(run, memory_saving=memory_saving))
        self.body = nn.Sequential(*body)
        self.num_features = width
        self.norm = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Phi x: the bijective (or injective) feature map before the head."""
        return self.body(self.init_psi(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.norm(features)).mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def inverse(self, features: torch.Tensor) -> torch.Tensor:
        """Phi^-1 (bijective) or the left inverse Phi^+ (injective): the input back from the
        features. BatchNorm in eval mode (or train mode on the same batch), dropout off."""
        x = features
        for layer in reversed(self.body):
            x = layer.inverse(x)
        return self.init_psi.inverse()(x) if isinstance(self.init_psi, SpaceToDepth) else x


def irevnet_imagenet(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> IRevNet:
    """Model (b) of the thesis: bijective, 100 blocks (6, 16, 72, 6), 1x1-3x3-1x1 F."""
    stages = ((6, 2, 24), (16, 2, 96), (72, 2, 384), (6, 2, 1536))
    return IRevNet(
        stages,
        num_classes=num_classes,
        in_chans=in_chans,
        init_block=2,
        kernels=(1, 3, 1),
        **kwargs,
    )


def irevnet_cifar(num_classes: int = 10, in_chans: int = 3, **kwargs) -> IRevNet:
    """The code's CIFAR configuration: 18 blocks per stage, strides 1 2 2, 3x3 kernels,
    dropout 0.1, no input psi (3 channels zero-padded to 32)."""
    stages = ((18, 1, 16), (18, 2, 64), (18, 2, 256))
    kwargs.setdefault("dropout", 0.1)
    return IRevNet(stages, num_classes=num_classes, in_chans=in_chans, init_block=0, **kwargs)
