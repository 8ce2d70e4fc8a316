"""The papers' bottom-up reference models, as plain PyTorch modules.

These are the models of the top-down paper (docs/methods/topdown.md, section 6): LeNetFC and
NIN-light for MNIST-type data, NIN and a pre-activation ResNet-32 for CIFAR, and the ResNet-18
of the Imagenette experiment (stride-1 3x3 stem and a max-pool). All convs use "same" padding;
following the paper's Keras models, the convs of the plain nets carry a bias. The two i-RevNets
of :mod:`reverso.irevnet` and the hierarchical attribute CNNs of :mod:`reverso.hcnn` are here too.

``create(name)`` builds one by name; the CLI and the demo accept these names next to timm's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from .errors import OptionError
from .hcnn import hcnn_cifar10, hcnn_cifar100, hcnn_plus_cifar10, hcnn_plus_cifar100
from .irevnet import irevnet_cifar, irevnet_imagenet


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class FullyConvClassifier(nn.Sequential):
    """The plain nets' head as the reference code builds it: a 1x1 conv to the class map, BN and
    ReLU (like every other conv), then global average pooling (a softmax follows in the loss)."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__(*conv_bn_relu(cin, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def lenet_fc(num_classes: int = 10, in_chans: int = 1) -> nn.Sequential:
    """LeNetFC: C5/6, MaxPool2 | C5/16, MaxPool2 | C3/32 | C1/classes, BN, ReLU, GAP (7,670)."""
    return nn.Sequential(
        conv_bn_relu(in_chans, 6, 5),
        nn.MaxPool2d(2),
        conv_bn_relu(6, 16, 5),
        nn.MaxPool2d(2),
        conv_bn_relu(16, 32, 3),
        FullyConvClassifier(32, num_classes),
    )


def _nin(widths: tuple[int, int, int, int, int], num_classes: int, in_chans: int) -> nn.Sequential:
    w1, w2, w3, w4, w5 = widths
    return nn.Sequential(
        conv_bn_relu(in_chans, w1, 5),
        conv_bn_relu(w1, w2, 1),
        conv_bn_relu(w2, w3, 1),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Dropout(0.5),
        conv_bn_relu(w3, w4, 5),
        conv_bn_relu(w4, w4, 1),
        conv_bn_relu(w4, w4, 1),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Dropout(0.5),
        conv_bn_relu(w4, w5, 3),
        conv_bn_relu(w5, w5, 1),
        FullyConvClassifier(w5, num_classes),
    )


def nin_light(num_classes: int = 10, in_chans: int = 1) -> nn.Sequential:
    """NIN-light for MNIST: widths 48/40/24, then 48s (62,094 parameters)."""
    return _nin((48, 40, 24, 48, 48), num_classes, in_chans)


def nin(num_classes: int = 10, in_chans: int = 3) -> nn.Sequential:
    """Network-in-Network for CIFAR: widths 192/160/96, then 192s (969,822 parameters)."""
    return _nin((192, 160, 96, 192, 192), num_classes, in_chans)


class PreActBlock(nn.Module):
    """o = BN-ReLU(x); out = C3(BN-ReLU(C3(o))) + shortcut (x, or a strided 1x1 projection of o)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        o = self.act1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        return self.conv2(self.act2(self.bn2(self.conv1(o)))) + skip


class ResNet32PreAct(nn.Module):
    """Pre-activation ResNet-32 for CIFAR: 3 groups of 5 basic blocks at 16, 32, 64 (~468k)."""

    def __init__(
        self, num_classes: int = 10, in_chans: int = 3, widths=(16, 32, 64), blocks: int = 5
    ):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, widths[0], 3, padding=1)
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(PreActBlock(cin, w, stride=2 if i > 0 and b == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*layers)
        self.norm = nn.BatchNorm2d(cin)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.num_classes = num_classes

    def forward(self, x):
        x = self.act(self.norm(self.blocks(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def resnet32_preact(num_classes: int = 10, in_chans: int = 3) -> ResNet32PreAct:
    return ResNet32PreAct(num_classes, in_chans)


class ResNet18Imagenette(nn.Module):
    """The top-down paper's Imagenette ResNet-18 as its reference code builds it
    (docs/methods/topdown.md, section 6):
    pre-activation, convs with biases, a bare C3/32 stem then a 2x2 max-pool, 2 blocks at each
    of 32, 64, 128, 256 (the first of groups 2-4 strided with a bare 1x1 projection), BN-ReLU,
    GAP, Linear (2,799,114 parameters)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths=(32, 64, 128, 256)):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, widths[0], 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [PreActBlock(cin, w, 2 if i else 1), PreActBlock(w, w)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm2d(cin)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cin, num_classes)
        )
        self.num_classes = num_classes

    def forward(self, x):
        return self.head(self.act(self.norm(self.blocks(self.pool(self.stem(x))))))


def resnet18_imagenette(num_classes: int = 10, in_chans: int = 3) -> ResNet18Imagenette:
    return ResNet18Imagenette(num_classes, in_chans)


#: name -> (factory, the input size the paper used)
MODELS: dict[str, tuple[Callable[..., nn.Module], tuple[int, int, int]]] = {
    "lenet_fc": (lenet_fc, (1, 28, 28)),
    "nin_light": (nin_light, (1, 28, 28)),
    "nin": (nin, (3, 32, 32)),
    "resnet32_preact": (resnet32_preact, (3, 32, 32)),
    "resnet18_imagenette": (resnet18_imagenette, (3, 128, 128)),
    "irevnet_imagenet": (irevnet_imagenet, (3, 224, 224)),
    "irevnet_cifar": (irevnet_cifar, (3, 32, 32)),
    "hcnn_cifar10": (hcnn_cifar10, (3, 32, 32)),
    "hcnn_plus_cifar10": (hcnn_plus_cifar10, (3, 32, 32)),
    "hcnn_cifar100": (hcnn_cifar100, (3, 32, 32)),
    "hcnn_plus_cifar100": (hcnn_plus_cifar100, (3, 32, 32)),
}


def create(name: str, **kwargs) -> nn.Module:
    """Build a reference model by name; its ``pretrained_cfg`` carries the paper's input size."""
    if name not in MODELS:
        raise OptionError(f"unknown reference model '{name}'; choose one of {', '.join(MODELS)}")
    factory, input_size = MODELS[name]
    accepted = inspect.signature(factory).parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    unknown = [] if open_ended else sorted(set(kwargs) - set(accepted))
    if unknown:
        raise OptionError(f"{name} takes no {', '.join(unknown)}; it takes {', '.join(accepted)}")
    model = factory(**kwargs)
    in_chans = kwargs.get("in_chans", input_size[0])
    model.pretrained_cfg = {"input_size": (in_chans, *input_size[1:])}
    model.reverso_source = {"factory": f"reverso.models:{factory.__name__}", "kwargs": kwargs}
    return model
