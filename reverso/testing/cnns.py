"""The random bottom-up CNNs that :mod:`reverso.testing.strategies` draws: specs that print as
readable examples, and the units, transitions and heads they build (each a pattern of the
models reverso converts or must refuse)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UnitSpec:
    kind: str  # "plain" | "residual" | "layer_scale" (residual, gain) | "partial" | "shuffle"
    #  | "gated" (a gate pooled and interpolated back) | "selective" (selective kernels)
    #  | "unpadded" (a conv without padding, which trims k - 1 pixels)
    #  | "channel_view" (a per-channel gain reshaped with its constant channel count)
    width: int
    kernel: int


@dataclass(frozen=True)
class TransitionSpec:
    kind: str  # "max" | "avg" | "conv" (a strided conv / strided first block) | "blur"
    #  | "unshuffle" (F.pixel_unshuffle) | "slices" (four strided slices concatenated)
    #  | "resize" (F.interpolate by 0.5) | "max_indices" (a max-pool that returns indices)
    #  | "blur_groups" (a blur pool written as timm writes it: its channel count as groups)
    #  | "timm_blur" (timm's own BlurPool2d)


@dataclass(frozen=True)
class CNNSpec:
    """A random bottom-up CNN: groups of units separated by transitions, then a head."""

    in_chans: int
    groups: tuple[tuple[UnitSpec, ...], ...]
    transitions: tuple[TransitionSpec, ...]  # one before every group but the first
    stem_stride: (
        bool  # the very first conv is strided (a downsampling the top-down net reads directly)
    )
    norm: bool
    act: str  # "relu" | "silu"
    head: str  # "gap_linear" | "conv1x1" | "sequence" (an LSTM over the flattened map whose
    #  last step the classifier reads: it has no top-down form and must be refused)
    num_classes: int
    input_size: tuple[int, int, int] = field(default=(3, 32, 32))
    double_stem: bool = False  # a second strided conv right after a strided stem
    norm_kind: str = "batch"  # "batch" | "group" | "layernorm2d" | "instance"

    def build(self, seed: int = 0) -> nn.Module:
        """The model as an ordinary nn.Module (weights from ``seed``)."""
        torch.manual_seed(seed)
        return RandomCNN(self)


class Act(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.act = nn.ReLU() if kind == "relu" else nn.SiLU()

    def forward(self, x):
        return self.act(x)


def norm_layer(width: int, kind: str = "batch") -> nn.Module:
    if kind == "layernorm2d":  # timm's channels-first LayerNorm (ConvNeXt, EdgeNeXt)
        from timm.layers import LayerNorm2d

        return LayerNorm2d(width)
    if kind == "instance":
        return nn.InstanceNorm2d(width, affine=True)
    return (
        nn.BatchNorm2d(width)
        if kind == "batch"
        else nn.GroupNorm(2 if width % 2 == 0 else 1, width)
    )


def conv_unit(
    cin: int,
    cout: int,
    k: int,
    stride: int,
    norm: bool,
    act: str,
    norm_kind: str = "batch",
    padded: bool = True,
) -> nn.Sequential:
    """conv-(norm)-act; ``padded=False`` is an unpadded ("valid") conv that trims k - 1 pixels."""
    padding = k // 2 if padded else 0
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, padding, bias=not norm)]
    if norm:
        layers.append(norm_layer(cout, norm_kind))
    layers.append(nn.ReLU() if act == "relu" else nn.SiLU())
    return nn.Sequential(*layers)


class ResidualUnit(nn.Module):
    """conv-(bn)-act-conv-(bn) + shortcut, act; a strided/widening unit projects its shortcut."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, norm: bool, act: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, k, stride, k // 2, bias=not norm)
        self.bn1 = nn.BatchNorm2d(cout) if norm else nn.Identity()
        self.act1 = nn.ReLU() if act == "relu" else nn.SiLU()
        self.conv2 = nn.Conv2d(cout, cout, k, 1, k // 2, bias=not norm)
        self.bn2 = nn.BatchNorm2d(cout) if norm else nn.Identity()
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not norm))
            if norm:
                self.shortcut.append(nn.BatchNorm2d(cout))
        self.act2 = nn.ReLU() if act == "relu" else nn.SiLU()

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + skip)


class LayerScaleUnit(ResidualUnit):
    """A residual unit whose branch is scaled by a learned per-channel gain (ConvNeXt)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, norm: bool, act: str):
        super().__init__(cin, cout, k, stride, norm, act)
        self.gamma = nn.Parameter(torch.full((cout,), 0.5))

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        branch = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(branch * self.gamma.reshape(1, -1, 1, 1) + skip)


class PartialUnit(nn.Module):
    """FasterNet's partial conv: a conv on a constant quarter of the channels, then a 1x1 conv."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, norm: bool, act: str):
        super().__init__()
        quarter = max(1, cin // 4)
        self.sizes = [quarter, cin - quarter] if cin > quarter else [cin]
        self.partial = nn.Conv2d(quarter, quarter, k, 1, k // 2)
        self.mix = conv_unit(cin, cout, 1, stride, norm, act)

    def forward(self, x):
        parts = torch.split(x, self.sizes, dim=1)
        rest = [parts[i] for i in range(1, len(self.sizes))]  # traceable: a known count
        return self.mix(torch.cat([self.partial(parts[0]), *rest], 1))


class BlurDown(nn.Module):
    """A hand-written blur pool: reflect-pad, then a fixed [1 2 1] x [1 2 1] filter, stride 2."""

    def __init__(self, width: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (taps[:, None] * taps / 16).expand(width, 1, 3, 3).clone())

    def forward(self, x):
        x = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        return nn.functional.conv2d(x, self.filt, stride=2, groups=x.shape[1])


class IntGroupsBlurDown(BlurDown):
    """The blur pool as timm writes it (``BlurPool2d``): the filter's channel count, a Python
    int fixed when the model is built, as the depthwise conv's groups."""

    def __init__(self, width: int):
        super().__init__(width)
        self.channels = width

    def forward(self, x):
        x = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        return nn.functional.conv2d(x, self.filt, stride=2, groups=self.channels)


def timm_blur_pool(width: int) -> nn.Module:
    from timm.layers import BlurPool2d

    return BlurPool2d(width, filt_size=3, stride=2)


class ChannelViewUnit(nn.Module):
    """A conv unit scaled by a per-channel gain viewed with its constant channel count
    (``gain.view(C, 1, 1)``, as PoolFormer writes its layer scale)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, norm: bool, act: str):
        super().__init__()
        self.body = conv_unit(cin, cout, k, stride, norm, act)
        self.width = cout
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, cout))

    def forward(self, x):
        return self.body(x) * self.gain.view(self.width, 1, 1)


class ShuffleUnit(nn.Module):
    """ShuffleNet's pattern: a grouped 1x1 conv (2 groups), a channel shuffle through a 5D view,
    then a conv unit."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, norm: bool, act: str):
        super().__init__()
        even = cin + cin % 2
        self.widen = nn.Conv2d(cin, even, 1)
        self.grouped = nn.Conv2d(even, even, 1, groups=2)
        self.out = conv_unit(even, cout, k, stride, norm, act)

    def forward(self, x):
        x = self.grouped(self.widen(x))
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.out(x)


class GatedUnit(nn.Module):
    """A conv unit whose output is gated by a map computed at half its resolution (pool, 1x1
    conv, sigmoid, interpolated back): a down-then-up path inside one unit."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, norm: bool, act: str):
        super().__init__()
        self.body = conv_unit(cin, cout, k, stride, norm, act)
        self.gate = nn.Conv2d(cout, cout, 1)

    def forward(self, x):
        x = self.body(x)
        gate = self.gate(F.avg_pool2d(x, 2, ceil_mode=True)).sigmoid()
        return x * F.interpolate(gate, size=x.shape[-2:], mode="nearest")


class SelectiveKernelUnit(nn.Module):
    """SKNet's selective kernel: two branches (k and k + 2), their sum pooled into a softmax
    over the branches that weighs them (nodes with several consumers inside one unit)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, norm: bool, act: str):
        super().__init__()
        self.small = conv_unit(cin, cout, k, stride, norm, act)
        self.large = conv_unit(cin, cout, k + 2, stride, norm, act)
        self.attend = nn.Conv2d(cout, 2 * cout, 1)

    def forward(self, x):
        a, b = self.small(x), self.large(x)
        weights = self.attend((a + b).mean((2, 3), keepdim=True))
        weights = weights.unflatten(1, (2, -1)).softmax(1)
        return a * weights[:, 0] + b * weights[:, 1]


UNITS = {
    "residual": ResidualUnit,
    "layer_scale": LayerScaleUnit,
    "partial": PartialUnit,
    "shuffle": ShuffleUnit,
    "gated": GatedUnit,
    "selective": SelectiveKernelUnit,
    "channel_view": ChannelViewUnit,
}


class SpaceToDepthDown(nn.Module):
    """Space-to-depth downsampling, x4 channels: F.pixel_unshuffle, or Swin's patch merging
    written on NCHW maps (four strided slices, concatenated along channels)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        h, w = x.shape[-2:]
        x = F.pad(x, (0, w % 2, 0, h % 2))  # odd sizes, as torchvision's Swin pads them
        if self.kind == "unshuffle":
            return F.pixel_unshuffle(x, 2)
        parts = [x[:, :, i::2, j::2] for i in (0, 1) for j in (0, 1)]
        return torch.cat(parts, 1)


class HalfResize(nn.Module):
    """Downsampling written as a resize: bilinear interpolation to half the size."""

    def forward(self, x):
        return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)


class MaxPoolIndices(nn.Module):
    """A max-pool asked for the indices of its maxima, which nothing reads."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x):
        pooled, _ = self.pool(x)
        return pooled


class SequenceHead(nn.Module):
    """A classifier on the last step of an LSTM run over the map's positions in raster order:
    it reads positions by number and order, so it has no top-down form."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.lstm = nn.LSTM(width, 8, batch_first=True)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        steps, _ = self.lstm(x.flatten(2).transpose(1, 2))
        return self.fc(steps[:, -1])


#: the blur pools, built for the channels they filter
BLURS = {"blur": BlurDown, "blur_groups": IntGroupsBlurDown, "timm_blur": timm_blur_pool}

#: the transitions that are one parameter-free layer
POOLS = {
    "max": lambda: nn.MaxPool2d(2),
    "avg": lambda: nn.AvgPool2d(2),
    "resize": HalfResize,
    "max_indices": MaxPoolIndices,
}


class RandomCNN(nn.Module):
    def __init__(self, spec: CNNSpec):
        super().__init__()
        layers: list[nn.Module] = []
        cin = spec.in_chans
        for gi, group in enumerate(spec.groups):
            trans = spec.transitions[gi - 1] if gi > 0 else None
            if trans is not None and trans.kind in POOLS:
                layers.append(POOLS[trans.kind]())
            elif trans is not None and trans.kind in BLURS:
                layers.append(BLURS[trans.kind](cin))
            elif trans is not None and trans.kind in ("unshuffle", "slices"):
                layers.append(SpaceToDepthDown(trans.kind))
                cin *= 4
            for ui, unit in enumerate(group):
                stride = 2 if trans is not None and trans.kind == "conv" and ui == 0 else 1
                if gi == 0 and ui == 0 and spec.stem_stride:
                    stride = 2
                if unit.kind in UNITS:
                    layers.append(
                        UNITS[unit.kind](cin, unit.width, unit.kernel, stride, spec.norm, spec.act)
                    )
                else:  # "plain", or "unpadded" (a valid conv)
                    padded = unit.kind != "unpadded"
                    layers.append(
                        conv_unit(
                            cin,
                            unit.width,
                            unit.kernel,
                            stride,
                            spec.norm,
                            spec.act,
                            spec.norm_kind,
                            padded,
                        )
                    )
                cin = unit.width
                if gi == 0 and ui == 0 and spec.stem_stride and spec.double_stem:
                    layers.append(conv_unit(cin, cin, 3, 2, spec.norm, spec.act, spec.norm_kind))
        self.body = nn.Sequential(*layers)
        if spec.head == "sequence":
            self.head = SequenceHead(cin, spec.num_classes)
        elif spec.head == "conv1x1":
            self.head = nn.Sequential(
                nn.Conv2d(cin, spec.num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
            )
        else:
            self.head = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cin, spec.num_classes)
            )
        self.spec = spec

    def forward(self, x):
        return self.head(self.body(x))
