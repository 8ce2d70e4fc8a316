"""Downsampling on channels-last maps and by space-to-depth: Swin's patch merging (strided slices
and a concatenation inside a wrapped function), pixel_unshuffle, and blocks whose attention is
written with functions over their own full weights."""

import operator

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import reverso
from reverso.nn import NeighbourhoodToDepth
from reverso.testing import check_topdown


def merge_patches(x):
    """(B, H, W, C) -> (B, H/2, W/2, 4C), as torchvision's Swin: pad, four strided slices."""
    h, w = x.shape[1], x.shape[2]
    x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    parts = [
        x[..., 0::2, 0::2, :],
        x[..., 1::2, 0::2, :],
        x[..., 0::2, 1::2, :],
        x[..., 1::2, 1::2, :],
    ]
    return torch.cat(parts, -1)


torch.fx.wrap("merge_patches")


def mixing(x, weight, bias):
    """A token mixer over the model's own full weight, called as a function (it stays a leaf)."""
    return x + F.linear(x.mean((1, 2), keepdim=True), weight, bias)


torch.fx.wrap("mixing")


class Block(nn.Module):
    """A pre-norm residual block on NHWC values whose mixer reads a full weight functionally."""

    def __init__(self, c):
        super().__init__()
        self.norm, self.mix = nn.LayerNorm(c), nn.Linear(c, c)
        self.norm2, self.mlp = (
            nn.LayerNorm(c),
            nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c)),
        )

    def forward(self, x):
        x = x + mixing(self.norm(x), self.mix.weight, self.mix.bias)
        return x + self.mlp(self.norm2(x))


class MiniSwin(nn.Module):
    def __init__(self, widths=(16, 32, 64), classes=10):
        super().__init__()
        self.stem, self.stem_norm = nn.Conv2d(3, widths[0], 2, stride=2), nn.LayerNorm(widths[0])
        stages = []
        for i, c in enumerate(widths):
            merge = [] if i == 0 else [nn.LayerNorm(2 * c), nn.Linear(2 * c, c, bias=False)]
            stages.append(nn.ModuleList([*merge, Block(c), Block(c)]))
        self.stages = nn.ModuleList(stages)
        self.norm, self.head = nn.LayerNorm(widths[-1]), nn.Linear(widths[-1], classes)

    def forward(self, x):
        x = self.stem_norm(self.stem(x).permute(0, 2, 3, 1))
        for i, stage in enumerate(self.stages):
            if i:
                x = merge_patches(x)
            for layer in stage:
                x = layer(x)
        return self.head(self.norm(x).mean((1, 2)))


def test_strided_slice_at_stride_one_keeps_the_strided_values():
    """x[..., 1::2, 0::2, :] at stride 1 holds at [::2, ::2] what the strided slice held."""
    from passes.stride_one import _slice_at_stride_one

    class Slice(nn.Module):
        def forward(self, x):
            return x[..., 1::2, 0::2, :]

    gm = fx.symbolic_trace(Slice())
    x = torch.rand(2, 6, 8, 5)
    reverso.ir.shapes.propagate(gm, x)
    (node,) = [n for n in gm.graph.nodes if n.target is operator.getitem]
    strided = gm(x)
    assert _slice_at_stride_one(gm, node)
    gm.recompile()
    out = gm(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out[:, ::2, ::2, :], strided)


def test_neighbourhood_to_depth_in_pixel_unshuffle_order():
    x = torch.rand(2, 3, 8, 6)
    out = NeighbourhoodToDepth(2, order="torch")(x)
    assert out.shape == (2, 12, 8, 6)
    torch.testing.assert_close(out[..., ::2, ::2], F.pixel_unshuffle(x, 2))
    with pytest.raises(ValueError, match="order"):
        NeighbourhoodToDepth(2, order="nhwc")


def test_wrapped_function_that_downsamples_is_opened():
    """The tracer copies a wrapped function's graph in when it shrinks a map, so the compiler sees
    its strided slices; the wrapped mixer (no downsampling) stays one call."""
    from reverso.frontend.tracing import trace

    gm = trace(MiniSwin(), (3, 32, 32))
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert merge_patches not in targets and mixing in targets
    assert sum(t is operator.getitem for t in targets) >= 8  # 4 slices per patch merging


def test_pixel_unshuffle_inside_the_body_converts():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(64, 32, 3, padding=1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = F.pixel_unshuffle(F.relu(self.c1(x)), 2)
            return self.fc(F.relu(self.c2(x)).mean((2, 3)))

    td = check_topdown(Net(), (3, 32, 32), other_sizes=[(48, 40)])
    assert td is not None
    assert any(isinstance(m, NeighbourhoodToDepth) for m in td.modules())


def test_channels_last_patch_merging_converts_and_trains():
    torch.manual_seed(0)
    model = MiniSwin()
    report = reverso.analyze(model, (3, 32, 32))
    strided = [u for u in report.units if u.strided and u.index > 0]
    assert len(strided) == 2  # the two patch mergings are transitions, found in NHWC
    td = check_topdown(model, (3, 32, 32), other_sizes=[(32, 32), (40, 48)])
    assert td is not None
    # merges follow the Linear that narrows a patch merging, not its 4x-wide concatenation
    bu_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in td.parameters()) < 2 * bu_params
    # the functional mixer keeps its width: a projection adapts what its block now receives
    assert any(".entry" in name for name, _ in td.named_modules())
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss = F.cross_entropy(td(x), y)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in td.parameters() if p.grad is not None)


class ReshapedMerge(nn.Module):
    """timm's Swin patch merging: reshape, permute and flatten on NHWC values, beside a window
    partition (the same reshape and a permute that moves windows into the batch)."""

    def __init__(self, c):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * c), nn.Linear(4 * c, 2 * c, bias=False)

    def forward(self, x):
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class Windows(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Linear(c, c)

    def forward(self, x):
        b, h, w, c = x.shape
        win = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 2, 2, c)
        win = self.fc(win).view(b, h // 2, w // 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5)
        return x + win.reshape(b, h, w, c)


class ReshapedSwin(nn.Module):
    def __init__(self, widths=(8, 16, 32)):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 2, stride=2)
        layers = []
        for i, c in enumerate(widths):
            layers += ([ReshapedMerge(widths[i - 1])] if i else []) + [Windows(c)]
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], 10)

    def forward(self, x):
        return self.head(self.layers(self.stem(x).permute(0, 2, 3, 1)).mean((1, 2)))


def test_reshaped_patch_merging_becomes_strided_slices_and_converts():
    from reverso.frontend.tracing import trace

    model = ReshapedSwin().eval()
    gm = trace(model, (3, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(gm(x), model(x))  # the same values
    assert sum(n.target is torch.cat for n in gm.graph.nodes) == 2  # the mergings, not windows
    td = check_topdown(model, (3, 32, 32), other_sizes=[(64, 48)])
    assert td is not None
    td(x).sum().backward()


class StrictSize(nn.Module):
    """Asserts its input size (as timm's strict patch embeddings do); ``pos`` adds a position
    embedding of that size."""

    def __init__(self, pos: bool):
        super().__init__()
        widths = [(3, 8, 2), (8, 8, 1), (8, 16, 2), (16, 16, 1)]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=s, padding=1) for a, b, s in widths)
        self.pos = nn.Parameter(torch.zeros(1, 8, 16, 16)) if pos else None
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        torch._assert(x.shape[2] == 32, "input height must be 32")
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i == 1 and self.pos is not None:
                x = x + self.pos
        return self.fc(x.mean((2, 3)))


def test_a_model_that_only_asserts_its_size_is_probed_past_the_assertion():
    td = reverso.topdown(StrictSize(pos=False), input_size=(3, 32, 32))
    assert td(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    # its layers take any size: the assertion, which pinned the bottom-up size, is gone
    assert not any(n.target is torch._assert for n in td.features.graph.nodes)
    assert td(torch.rand(2, 3, 48, 48)).shape == (2, 5)
    with pytest.raises(reverso.UnsupportedTopologyError, match="fixed to the model's resolution"):
        reverso.topdown(StrictSize(pos=True), input_size=(3, 32, 32))
