"""The top-down paper's bottom-up reference models, written independently of reverso.models,
the way a user would write them (spec section 6)."""

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class LeNetFC(nn.Module):
    """C5/6, MaxPool2 | C5/16, MaxPool2 | C3/32 | head: C1/10, BN, ReLU, GAP."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.c1 = ConvBNReLU(1, 6, 5)
        self.c2 = ConvBNReLU(6, 16, 5)
        self.c3 = ConvBNReLU(16, 32, 3)
        self.classifier = ConvBNReLU(32, num_classes, 1)  # the class map gets BN-ReLU too

    def forward(self, x):
        x = F.max_pool2d(self.c1(x), 2)
        x = F.max_pool2d(self.c2(x), 2)
        x = self.classifier(self.c3(x))
        return x.mean(dim=(2, 3))


class NINLight(nn.Module):
    """C5/a, C1/b, C1/c, MaxPool3 s2, Dropout | C5/d, C1/d, C1/d, MaxPool3 s2, Dropout | C3/d, C1/d |
    C1/10, BN, ReLU, GAP."""

    def __init__(self, widths=(48, 40, 24, 48), in_chans=1, num_classes=10):
        super().__init__()
        a, b, c, d = widths
        self.block1 = nn.Sequential(
            ConvBNReLU(in_chans, a, 5), ConvBNReLU(a, b, 1), ConvBNReLU(b, c, 1)
        )
        self.pool1 = nn.MaxPool2d(3, 2, 1)
        self.drop1 = nn.Dropout(0.5)
        self.block2 = nn.Sequential(ConvBNReLU(c, d, 5), ConvBNReLU(d, d, 1), ConvBNReLU(d, d, 1))
        self.pool2 = nn.MaxPool2d(3, 2, 1)
        self.drop2 = nn.Dropout(0.5)
        self.block3 = nn.Sequential(ConvBNReLU(d, d, 3), ConvBNReLU(d, d, 1))
        self.classifier = ConvBNReLU(d, num_classes, 1)

    def forward(self, x):
        x = self.drop1(self.pool1(self.block1(x)))
        x = self.drop2(self.pool2(self.block2(x)))
        x = self.classifier(self.block3(x))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def NIN(num_classes=10):
    return NINLight(widths=(192, 160, 96, 192), in_chans=3, num_classes=num_classes)


class PreActBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.proj = nn.Conv2d(cin, cout, 1, stride) if stride > 1 else None

    def forward(self, x):
        o = F.relu(self.bn1(x))
        shortcut = x if self.proj is None else self.proj(o)
        return self.conv2(F.relu(self.bn2(self.conv1(o)))) + shortcut


class ResNet32(nn.Module):
    """Pre-activation ResNet-32: stem C3/16, 3 groups x 5 blocks (16, 32, 64), BN-ReLU, GAP, FC."""

    def __init__(self, num_classes=10, blocks_per_group=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        blocks, cin = [], 16
        for width in (16, 32, 64):
            for i in range(blocks_per_group):
                blocks.append(PreActBasicBlock(cin, width, 2 if i == 0 and width > 16 else 1))
                cin = width
        self.blocks = nn.ModuleList(blocks)
        self.bn = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResNet18Imagenette(nn.Module):
    """The paper's Imagenette ResNet-18 as its reference code builds it: pre-activation, convs
    with biases, a bare C3/32 stem and a 2x2 max-pool, 2 blocks at each of 32, 64, 128, 256 (the
    first of groups 2-4 strided with a bare 1x1 projection), BN-ReLU, GAP, FC."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        blocks, cin = [], 32
        for i, width in enumerate((32, 64, 128, 256)):
            blocks += [
                PreActBasicBlock(cin, width, 1 if i == 0 else 2),
                PreActBasicBlock(width, width, 1),
            ]
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(256)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.pool(self.stem(x)))))
        return self.fc(x.mean((2, 3)))
