"""Patterns of modern CNNs, written by hand as a user would: each converts, or is refused with
the node named (never a torch error dressed as a refusal)."""

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import reverso


class ShapeSplit(nn.Module):
    """A block that computes its split sizes (a ``parts``-th of the channels) and a scale from
    the input's shape."""

    def __init__(self, c, parts=2):
        super().__init__()
        self.parts = parts
        self.conv = nn.Conv2d(c // parts, c // parts, 3, padding=1)

    def forward(self, x):
        k = x.shape[1] // self.parts
        a, b = torch.split(x, [k, x.shape[1] - k], dim=1)
        h, w = x.size(2), x.size(3)
        return torch.cat([self.conv(a) * (h * w) / (h * w), b], 1)


class PartialConv(nn.Module):
    """FasterNet's partial conv: constant split sizes from __init__, a conv on the first part."""

    def __init__(self, c):
        super().__init__()
        self.sizes = [c // 4, c - c // 4]
        self.conv = nn.Conv2d(c // 4, c // 4, 3, padding=1)

    def forward(self, x):
        a, b = torch.split(x, self.sizes, dim=1)
        return torch.cat([self.conv(a), b], 1)


def conv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())


def net(block, widths=(16, 32, 64)):
    a, b, c = widths
    return nn.Sequential(
        conv(3, a),
        block(a),
        conv(a, b, 2),
        block(b),
        conv(b, c, 2),
        block(c),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, 10),
    )


@pytest.mark.parametrize("block", [ShapeSplit, PartialConv])
def test_split_blocks_convert_when_their_widths_change(block):
    model = net(block)
    td = reverso.topdown(model, input_size=(3, 32, 32))
    assert td(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # the reversed order feeds each block another width: the constant split follows it
    splits = [n for n in td.features.graph.nodes if reverso.ir.is_split(n)]
    assert splits
    for n in splits:
        sizes = [s.meta["val"] if isinstance(s, torch.fx.Node) else s for s in n.args[1]]
        assert sum(sizes) == reverso.ir.channels(n.args[0])


def test_arithmetic_on_sizes_propagates_as_numbers():
    gm = reverso.trace(net(ShapeSplit), (3, 32, 32))
    sub = next(n for n in gm.graph.nodes if n.name == "sub")
    assert sub.meta["val"] == 8  # 16 channels - 16 // 2


def test_a_stem_of_two_strided_convs_becomes_two_transitions():
    class Stem(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = conv(3, 16, 2), conv(16, 32, 2)

        def forward(self, x):
            return self.conv2(self.conv1(x))

    model = nn.Sequential(
        Stem(),
        conv(32, 32),
        conv(32, 64, 2),
        conv(64, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    report = reverso.analyze(model, (3, 32, 32))
    stem_units = [u for u in report.units if u.nodes[0].startswith("_0_")]
    assert len(stem_units) == 2 and all(u.is_transition for u in stem_units)
    td = reverso.topdown(model, input_size=(3, 32, 32))
    assert td(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_a_layer_left_without_channels_is_refused_by_name():
    def quarter(c):  # convolves a quarter of its input: 3 // 4 = 0 of the image's channels
        return ShapeSplit(c, parts=4)

    # no residual joins, so the last group comes first and reads the image
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        quarter(16),
        nn.MaxPool2d(2),
        quarter(16),
        nn.MaxPool2d(2),
        quarter(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    with pytest.raises(reverso.WidthError, match="receives no channels") as info:
        reverso.topdown(model, input_size=(3, 32, 32))
    assert "'5.conv'" in str(info.value)


def test_unpadded_convs_at_a_small_size_convert():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(16, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    td = reverso.topdown(model, input_size=(3, 64, 64))
    assert td(torch.rand(2, 3, 64, 64)).shape == (2, 10)


def test_unpadded_conv_too_small_for_the_top_down_net_names_the_size_that_converts():
    """The bottom-up net runs its 5x5 valid conv on the full 16x16 input; the top-down net runs it
    on the pyramid's 4x4 level, where it cannot: the refusal names the smallest input (20x20,
    whose 5x5 level fits the kernel), and that size converts."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    with pytest.raises(
        reverso.InputSizeError, match=r"found that converts is \(1, 20, 20\)"
    ) as info:
        reverso.topdown(model, input_size=(1, 16, 16))
    assert "at node '_0'" in str(info.value) and info.value.__cause__ is None
    td = reverso.topdown(model, input_size=(1, 20, 20))
    assert td(torch.rand(2, 1, 20, 20)).shape == (2, 2)


COMPOSITIONS = {
    "topdown(antialias(m))": lambda m, s: reverso.topdown(reverso.antialias(m, input_size=s), input_size=s),
    "topdown(njet(m))": lambda m, s: reverso.topdown(reverso.njet(m, input_size=s), input_size=s),
    "antialias(topdown(m))": lambda m, s: reverso.antialias(reverso.topdown(m, input_size=s), input_size=s),
    "njet(topdown(m))": lambda m, s: reverso.njet(reverso.topdown(m, input_size=s), input_size=s),
}  # fmt: skip


@pytest.mark.parametrize("composition", COMPOSITIONS)
@pytest.mark.parametrize("make", ["lenet_fc", "resnet18"])
def test_reversos_own_rewrites_compose(composition, make):
    import timm

    model = (
        reverso.models.create("lenet_fc")
        if make == "lenet_fc"
        else timm.create_model("resnet18", num_classes=10)
    )
    size = (1, 28, 28) if make == "lenet_fc" else (3, 64, 64)
    net = COMPOSITIONS[composition](model, size)
    x = torch.rand(2, *size)
    out = net(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_an_anti_aliased_pool_is_one_standalone_transition():
    aa = reverso.antialias(reverso.models.create("lenet_fc"), input_size=(1, 28, 28))
    report = reverso.analyze(aa, (1, 28, 28))
    assert [t.kind for t in report.transitions] == ["standalone", "standalone"]
    # one node each: the stride-1 max-pool runs inside the blur layer
    assert [len(report.units[t.unit].nodes) for t in report.transitions] == [1, 1]


class FunctionalBlurPool(nn.Module):
    """Anti-aliased downsampling written by hand: pad, then a fixed depthwise filter, stride 2."""

    def __init__(self, c):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = (taps[:, None] * taps[None, :] / 16).expand(c, 1, 3, 3).clone()
        self.register_buffer("filt", kernel)

    def forward(self, x):
        x = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        return torch.nn.functional.conv2d(x, self.filt, stride=2, groups=x.shape[1])


def test_a_functional_blur_pool_downsamples_and_its_filter_follows_the_width():
    model = nn.Sequential(
        conv(3, 16),
        FunctionalBlurPool(16),
        conv(16, 32),
        FunctionalBlurPool(32),
        conv(32, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    report = reverso.analyze(model, (3, 32, 32))
    assert len(report.transitions) == 2
    td = reverso.topdown(model, input_size=(3, 32, 32))
    assert td(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    filters = [b for name, b in td.named_buffers() if name.endswith("filt")]
    assert filters and all(bool((f == f[:1]).all()) for f in filters)  # still one blur per channel
    widths = sorted(int(f.shape[0]) for f in filters)
    assert widths != [16, 32]  # the reversed order fed them other widths


class LayerScaleBlock(nn.Module):
    """A residual block with a learned per-channel gain (ConvNeXt's layer scale)."""

    def __init__(self, c):
        super().__init__()
        self.conv = conv(c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.1))

    def forward(self, x):
        return x + self.conv(x) * self.gamma.reshape(1, -1, 1, 1)


def test_layer_scale_follows_a_uniform_width():
    model = nn.Sequential(
        conv(3, 16),
        LayerScaleBlock(16),
        conv(16, 32, 2),
        LayerScaleBlock(32),
        conv(32, 64, 2),
        LayerScaleBlock(64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    td = reverso.topdown(model, input_size=(3, 32, 32), arrangement=24)
    gains = [p for name, p in td.named_parameters() if name.endswith("gamma")]
    assert [tuple(g.shape) for g in gains] == [(24,)] * 3
    assert all(torch.allclose(g, torch.full((24,), 0.1)) for g in gains)  # the mean of the old
    assert td(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_a_fixed_size_position_embedding_is_refused_by_name():
    class PosEmbed(nn.Module):
        def __init__(self, c, side):
            super().__init__()
            self.pos = nn.Parameter(torch.zeros(1, c, side, side))

        def forward(self, x):
            return x + self.pos

    model = nn.Sequential(
        conv(3, 16, 2),
        PosEmbed(16, 16),
        conv(16, 32, 2),
        conv(32, 32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    with pytest.raises(reverso.UnsupportedTopologyError, match="fixed to the model's resolution"):
        reverso.topdown(model, input_size=(3, 32, 32))


def test_tensors_the_graph_creates_propagate_with_the_rest():
    class Coords(nn.Module):  # adds a ramp built from the input's width (a coordinate channel)
        def forward(self, x):
            return x + torch.arange(x.shape[-1]).to(x.dtype) / x.shape[-1]

    model = nn.Sequential(
        conv(3, 16),
        Coords(),
        conv(16, 32, 2),
        Coords(),
        conv(32, 32, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    td = reverso.topdown(model, input_size=(3, 32, 32))
    assert td(torch.rand(2, 3, 32, 32)).shape == (2, 10)


class DenseBlock(nn.Module):
    """Each layer reads the concatenation of everything before it (DenseNet)."""

    def __init__(self, c, growth=4, layers=2):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(c + i * growth),
                nn.ReLU(),
                nn.Conv2d(c + i * growth, growth, 3, padding=1),
            )
            for i in range(layers)
        )

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


def test_dense_blocks_keep_their_own_input_width():
    """A dense block's output grows from its input, so the group's own width is what it reads:
    the stem and each merge deliver the block's bottom-up input width, and the top-down net is
    about as large as the bottom-up one (not inflated by every earlier block's growth)."""
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        DenseBlock(16),  # 16 -> 24
        nn.Conv2d(24, 12, 1),
        nn.AvgPool2d(2),
        DenseBlock(12),  # 12 -> 20
        nn.Conv2d(20, 10, 1),
        nn.AvgPool2d(2),
        DenseBlock(10),  # 10 -> 18
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(18, 5),
    )
    report = reverso.analyze(net, input_size=(3, 16, 16))
    blocks = [u for u in report.units if u.kind == "block"]
    assert [(u.grows, u.own_width) for u in blocks] == [(True, 16), (True, 12), (True, 10)]
    td = reverso.topdown(net, input_size=(3, 16, 16))
    first_convs = {n: m.in_channels for n, m in td.named_modules() if n.endswith("layers.0.2")}
    assert sorted(first_convs.values()) == [10, 12, 16]  # each block reads its own BU width
    bu_params = sum(p.numel() for p in net.parameters())
    assert sum(p.numel() for p in td.parameters()) < 4 * bu_params
    td(torch.randn(2, 3, 16, 16)).sum().backward()


class ChannelsLastBlock(nn.Module):
    """A residual MLP on NHWC maps (MambaOut, ConvNeXt-style): LayerNorm and Linear on the last dim."""

    def __init__(self, c):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(c), nn.Linear(c, c)

    def forward(self, x):
        return x + self.fc(self.norm(x))


class ChannelsLastNet(nn.Module):
    """Strided convs on NCHW maps, blocks on NHWC maps; the last stage's blocks stay NHWC and
    the head pools them directly (no permute back)."""

    def __init__(self, widths=(8, 16, 24)):
        super().__init__()
        self.downs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1)
            for a, b in zip((3, *widths[:-1]), widths, strict=True)
        )
        self.blocks = nn.ModuleList(ChannelsLastBlock(c) for c in widths)
        self.norm = nn.LayerNorm(widths[-1])
        self.fc = nn.Linear(widths[-1], 5)

    def forward(self, x):
        for i, (down, block) in enumerate(zip(self.downs, self.blocks, strict=True)):
            x = block(down(x).permute(0, 2, 3, 1))
            if i < len(self.blocks) - 1:
                x = x.permute(0, 3, 1, 2)
        return self.fc(self.norm(x.mean((1, 2))))


def test_a_body_that_ends_in_channels_last_blocks_keeps_them_in_the_body():
    net = ChannelsLastNet()
    report = reverso.analyze(net, input_size=(3, 32, 32))
    head = report.units[report.head[0]]
    assert not any("blocks" in n for n in head.nodes)  # the last stage's blocks are body
    assert report.levels == 3
    td = reverso.topdown(net, input_size=(3, 32, 32))
    # the last bottom-up stage runs first, at the coarsest level (4x4), with its own width
    seen = []
    for m in td.modules():
        if isinstance(m, nn.LayerNorm) and type(m) is nn.LayerNorm:
            m.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[1:])))
    td(torch.randn(1, 3, 32, 32))
    assert seen[0] == (4, 4, 24) and seen[-2] == (16, 16, 8)  # the last is the head's
    # merges are built on NCHW maps: their norm is channels-first, not the model's NHWC LayerNorm
    merge_norms = [m for n, m in td.named_modules() if "merge" in n and "Norm" in type(m).__name__]
    assert merge_norms and all(type(m).__name__ == "LayerNorm2d" for m in merge_norms)
    td(torch.randn(2, 3, 32, 32)).sum().backward()


class TokenTransformer(nn.Module):
    """A convolutional patch embedding (three strided convs), then layers on tokens (XCiT)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1),
            nn.GELU(),
            nn.Conv2d(8, 16, 3, 2, 1),
            nn.GELU(),
            nn.Conv2d(16, 16, 3, 2, 1),
        )
        self.mix = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.fc(self.mix(tokens).mean(1))


def test_layers_on_tokens_after_a_patch_embedding_are_refused_as_nothing_to_reverse():
    with pytest.raises(
        reverso.NoDownsamplingError,
        match=r"only downsampling is its first layers.*patch embedding.*tokens",
    ):
        reverso.topdown(TokenTransformer(), input_size=(3, 32, 32))


class PooledGate(nn.Module):
    """A gate that pools x4, convolves and comes back to the block's own resolution."""

    def __init__(self, c):
        super().__init__()
        self.pool, self.conv = nn.AvgPool2d(4), nn.Conv2d(c, c, 1)

    def forward(self, x):
        gate = F.interpolate(self.conv(self.pool(x)), size=x.shape[-2:], mode="nearest")
        return x * torch.sigmoid(gate)


class ReducedAttention(nn.Module):
    """PVT's spatial-reduction attention: keys and values from a strided conv of the map."""

    def __init__(self, c, ratio=2):
        super().__init__()
        self.q, self.kv = nn.Linear(c, c), nn.Linear(c, 2 * c)
        self.sr = nn.Conv2d(c, c, ratio, stride=ratio)

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.q(x.flatten(2).transpose(1, 2))
        k, v = self.kv(self.sr(x).flatten(2).transpose(1, 2)).chunk(2, dim=-1)
        out = torch.softmax(q @ k.transpose(1, 2) / c**0.5, -1) @ v
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class TransposedBranch(nn.Module):
    """LowFormer's attention path: a strided conv down, a transposed conv back up, a residual."""

    def __init__(self, c):
        super().__init__()
        self.down = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(c, c, 2, stride=2)

    def forward(self, x):
        return x + self.up(self.down(x))[..., : x.shape[2], : x.shape[3]]


def test_reductions_inside_a_block_are_neither_transitions_nor_cross_resolution():
    """A strided op deeper than the map its block ends on (pooled gates, attention with reduced
    keys and values) belongs to the block: it keeps its stride in the top-down net."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        PooledGate(8),
        ReducedAttention(8),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        PooledGate(16),
        ReducedAttention(16),
        TransposedBranch(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    report = reverso.analyze(net, input_size=(3, 32, 32))
    assert [list(report.units[t.unit].strided) for t in report.transitions] == [["_1"], ["_4"]]
    td = reverso.topdown(net, input_size=(3, 32, 32))
    strides = {
        n: m.stride for n, m in td.named_modules() if isinstance(m, (nn.Conv2d, nn.AvgPool2d))
    }
    assert strides["features.3.sr"] == (2, 2) and strides["features.6.sr"] == (2, 2)
    assert all(s in (4, (4, 4)) for n, s in strides.items() if n.endswith("pool"))
    out = td(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 5) and all(torch.isfinite(p.grad).all() for p in td.parameters())


def test_a_reshape_tied_to_another_width_keeps_its_unit_at_its_width():
    """The attention reshapes its output by its input's width (``x.shape``): when the top-down
    order feeds it another width, its Linear layers no longer agree with that reshape. The
    repair finds that at the reshape, before torch fails, and keeps the attention's unit at its
    bottom-up width behind a 1x1 entry projection; ``rev`` keeps every width anyway."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        ReducedAttention(8),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        ReducedAttention(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    td = reverso.topdown(net, input_size=(3, 32, 32))
    widths = {n: m.in_features for n, m in td.named_modules() if isinstance(m, nn.Linear)}
    bu = {n: m.in_features for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    assert all(widths[f"features.{n}"] == w for n, w in bu.items() if f"features.{n}" in widths)
    assert any(name.endswith("entry") for name, _ in td.named_modules())
    td(torch.randn(2, 3, 32, 32)).sum().backward()
    td = reverso.topdown(net, input_size=(3, 32, 32), arrangement="rev")
    td(torch.randn(2, 3, 32, 32)).sum().backward()


class TokenTailNet(nn.Module):
    """Strided convs, then the last stage on tokens (Twins): flatten, a residual MLP, mean."""

    def __init__(self):
        super().__init__()
        self.down1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.down2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.mix = ChannelsLastBlock(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.conv(torch.relu(self.down1(x))))
        tokens = self.down2(x).flatten(2).transpose(1, 2)
        return self.fc(self.mix(tokens).mean(1))


def test_a_body_that_ends_in_layers_on_tokens_keeps_them_in_the_body():
    net = TokenTailNet()
    report = reverso.analyze(net, input_size=(3, 32, 32))
    assert not any("mix" in n for n in report.units[report.head[0]].nodes)
    td = reverso.topdown(net, input_size=(3, 32, 32))
    seen = []
    td.get_submodule("features.mix.fc").register_forward_hook(
        lambda m, i, o: seen.append(tuple(i[0].shape))
    )
    td(torch.randn(2, 3, 32, 32)).sum().backward()
    assert seen == [(2, 64, 16)]  # 8x8 tokens at the coarsest level, first in the top-down net


def test_a_space_to_depth_stem_becomes_its_stride_one_neighbourhood():
    """TResNet's stem moves 4x4 blocks into channels (timm's SpaceToDepth): reverso traces it as
    its own SpaceToDepth, a downsampling; the top-down net ends with it at stride 1."""
    from timm.layers import SpaceToDepth as TimmSpaceToDepth

    from reverso.nn import NeighbourhoodToDepth

    net = nn.Sequential(
        TimmSpaceToDepth(4),
        nn.Conv2d(48, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 5),
    )
    report = reverso.analyze(net, input_size=(3, 32, 32))
    assert [report.units[t.unit].factor for t in report.transitions] == [4, 2]
    td = reverso.topdown(net, input_size=(3, 32, 32))
    last = [m for m in td.modules() if isinstance(m, NeighbourhoodToDepth)]
    assert len(last) == 1 and last[0].block_size == 4
    assert isinstance(net[0], TimmSpaceToDepth)  # the user's model is untouched
    out = td(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 5)


class StridedResidual(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2)

    def forward(self, x):
        return torch.relu(self.conv(x) + self.shortcut(x))


def test_strided_layers_then_one_resolution_are_levels_not_a_patch_embedding():
    """Every body unit but the last downsamples, as in a tiny ResNet with one block per stage,
    or a plain net of two strided convs and a 1x1 conv: two levels to reverse, and it converts.
    Only a single strided first layer (ViT's patch embedding) leaves nothing to reverse."""
    net = nn.Sequential(
        StridedResidual(3, 8),
        StridedResidual(8, 16),
        nn.Conv2d(16, 16, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    td = reverso.topdown(net, input_size=(3, 16, 16))
    td(torch.randn(2, 3, 16, 16)).sum().backward()
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)]
    plain = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.Conv2d(16, 16, 1),
        *head,
    )
    td = reverso.topdown(plain, input_size=(3, 16, 16))
    assert td(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    embedding = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), nn.Conv2d(16, 16, 1), *head)
    with pytest.raises(reverso.NoDownsamplingError, match=r"first layer .*x4"):
        reverso.topdown(embedding, input_size=(3, 16, 16))
