"""The thesis's hierarchical attribute CNNs for CIFAR (docs/methods/hcnn.md, section 5): J = 12,
K = 16.

Layer 1 is a 3x3 conv 3 -> K (BatchNorm, ELU), layer 2 the lift to two attributes
(:class:`~reverso.nn.hierarchical.HLift`, 3x3x11), layers 3-10 factorised hierarchical layers
(:class:`~reverso.nn.hierarchical.HConv2d`, Q = 32, attribute filters 7 x 11 for CIFAR-10 and
11 x 11 for CIFAR-100) with the spatial stride 2 at layers 5 and 9 (the thesis; the authors' code
strides at 4 and 8), layer 11 the same with one output per class, and the readout (eq. 36).
``plus=False`` is the linear HCNN (each layer's full filters ``w_{v_j}`` as parameters). The
normalisations carry no affine parameters and the convs no bias (eq. 37), so the parameter
counts are the thesis's: 97,650 / 344,640 (CIFAR-10) and 250,308 / 887,424 (CIFAR-100).
"""

from __future__ import annotations

from torch import nn

from .nn.hierarchical import HConv2d, HLift, HReadout

#: the layers (of 3-11) whose spatial filters have stride 2 (the thesis's j = 5 and 9)
STRIDED = (5, 9)


def hcnn(
    num_classes: int = 10,
    *,
    plus: bool = True,
    attr_kernel=(7, 11),
    in_chans: int = 3,
    K: int = 16,
    Q: int = 32,
    padding: str = "zeros",
) -> nn.Sequential:
    """The CIFAR HCNN (``plus=True``: the (+) model with ELU between ``h`` and ``g``)."""
    variant = "plus" if plus else "linear"
    layers = [
        nn.Conv2d(in_chans, K, 3, padding=1, bias=False, padding_mode=padding),
        nn.BatchNorm2d(K, affine=False),
        nn.ELU(),
        HLift(K, K, attr_kernel=attr_kernel[1], padding=padding),
    ]
    for j in range(3, 12):
        layers.append(
            HConv2d(
                K // 2,
                K,
                num_classes if j == 11 else K,
                Q=Q,
                attr_kernel=attr_kernel,
                stride=2 if j in STRIDED else 1,
                padding=padding,
                variant=variant,
            )
        )
    layers.append(HReadout(num_classes))
    return nn.Sequential(*layers)


def hcnn_cifar10(num_classes: int = 10, in_chans: int = 3) -> nn.Sequential:
    return hcnn(num_classes, plus=False, in_chans=in_chans)


def hcnn_plus_cifar10(num_classes: int = 10, in_chans: int = 3) -> nn.Sequential:
    return hcnn(num_classes, plus=True, in_chans=in_chans)


def hcnn_cifar100(num_classes: int = 100, in_chans: int = 3) -> nn.Sequential:
    return hcnn(num_classes, plus=False, attr_kernel=(11, 11), in_chans=in_chans)


def hcnn_plus_cifar100(num_classes: int = 100, in_chans: int = 3) -> nn.Sequential:
    return hcnn(num_classes, plus=True, attr_kernel=(11, 11), in_chans=in_chans)
