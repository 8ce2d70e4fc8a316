"""The reversible pass on residual functions whose widths live outside their layers: layer-scale
gains, channels-last norms and Linear layers, constant split sizes, nn.Identity shortcuts; and
those it cannot halve (kept at their width between 1x1 convs, with a warning)."""

import warnings

import pytest
import torch
from torch import nn

import reverso
from reverso.nn import CouplingBlock


class LayerScaleBlock(nn.Module):
    """A FastViT-style unit: conv, per-channel gain, an ``nn.Identity`` shortcut."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.gamma = nn.Parameter(torch.full((c, 1, 1), 1e-2))
        self.shortcut = nn.Identity()

    def forward(self, x):
        return self.shortcut(x) + self.gamma * self.conv(x)


class ChannelsLastBlock(nn.Module):
    """A ConvNeXt unit: depthwise conv, then LayerNorm, MLP and gain on channels-last values."""

    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 1e-2))

    def forward(self, x):
        y = self.fc2(torch.relu(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1)))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class PartialConvBlock(nn.Module):
    """A FasterNet unit: a conv on the first quarter of the channels, split by constant sizes."""

    def __init__(self, c):
        super().__init__()
        self.sizes = [c // 4, c - c // 4]
        self.conv = nn.Conv2d(c // 4, c // 4, 3, padding=1)
        self.mix = nn.Conv2d(c, c, 1)

    def forward(self, x):
        a, b = torch.split(x, self.sizes, dim=1)
        return x + self.mix(torch.cat([self.conv(a), b], 1))


class SlicedBlock(nn.Module):
    """A GhostNet-style unit whose output is sliced to a width fixed at build time."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.conv = nn.Conv2d(c, c // 2, 3, padding=1)
        self.cheap = nn.Conv2d(c // 2, c // 2, 3, padding=1, groups=c // 2)

    def forward(self, x):
        y = self.conv(x)
        return x + torch.cat([y, self.cheap(y)], 1)[:, : self.c]


def net(block, c=16, n=2, channels_last=False):
    layers = [nn.Conv2d(3, c, 3, stride=2, padding=1)]
    units = [block(c) for _ in range(n)]
    if channels_last:
        units = [Permute(0, 2, 3, 1), *units, Permute(0, 3, 1, 2)]
    return nn.Sequential(*layers, *units, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


class Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def convert(model, size=16):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rev = reverso.reversible(model, (3, size, size))
    kept = [str(w.message) for w in caught if "cannot be re-widthed" in str(w.message)]
    x = torch.rand(2, 3, size, size)
    y = rev(x)
    y.logsumexp(1).sum().backward()
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in rev.parameters() if p.grad is not None)
    return rev, kept


def couplings(model):
    return [m for m in model.modules() if isinstance(m, CouplingBlock)]


def test_layer_scale_gains_are_halved_with_their_branch():
    rev, kept = convert(net(LayerScaleBlock))
    blocks = couplings(rev)
    assert len(blocks) == 2 and not kept  # the nn.Identity shortcut is an identity shortcut
    for b in blocks:
        gains = [p for name, p in b.residual.named_parameters() if name.endswith("gamma")]
        assert [tuple(g.shape) for g in gains] == [(8, 1, 1)]
        assert torch.all(gains[0] == 1e-2)  # a constant gain keeps its value


def test_channels_last_layers_in_a_branch_are_halved():
    rev, kept = convert(net(ChannelsLastBlock))
    assert len(couplings(rev)) == 2 and not kept
    f = couplings(rev)[0].residual
    norms = [m for m in f.modules() if isinstance(m, nn.LayerNorm)]
    linears = [m for m in f.modules() if isinstance(m, nn.Linear)]
    assert [n.normalized_shape for n in norms] == [(8,)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 64), (64, 8)]


def test_constant_split_sizes_follow_the_half_width():
    rev, kept = convert(net(PartialConvBlock))
    assert len(couplings(rev)) == 2 and not kept
    f = couplings(rev)[0].residual
    split = next(n for n in f.graph.nodes if n.target is torch.split)
    assert list(split.args[1]) == [2, 6]


def test_a_branch_it_cannot_halve_keeps_its_width_between_1x1_convs():
    model = net(SlicedBlock)
    rev, kept = convert(model)
    assert len(couplings(rev)) == 2 and len(kept) == 2
    assert "gives (2, 16, 8, 8) instead of 8 channels" in kept[0]
    assert "keeps its 16 channels" in kept[0] and "register_width_rule" in kept[0]
    entry, body, exit_ = couplings(rev)[0].residual
    assert (entry.in_channels, entry.out_channels) == (8, 16)
    assert (exit_.in_channels, exit_.out_channels) == (16, 8)
    torch.testing.assert_close(body.get_submodule("1.conv").weight, model[1].conv.weight)


def test_additions_of_channels_last_values_are_no_residual_units():
    model = net(ChannelsLastResidual, channels_last=True)
    with pytest.raises(reverso.UnsupportedTopologyError, match="no residual unit"):
        reverso.reversible(model, (3, 16, 16))
    with pytest.raises(reverso.UnsupportedTopologyError, match="no residual units"):
        reverso.steerable(model, (3, 16, 16), unit="block")


class ChannelsLastResidual(nn.Module):
    """A residual MLP on NHWC maps (MambaOut-style): LayerNorm and Linear on the last dim."""

    def __init__(self, c):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(c), nn.Linear(c, c)

    def forward(self, x):
        return x + self.fc(self.norm(x))
