"""Sizes a model computes from its input's shape (``H // 4``) and hands to blocks deep in the
body are read from the feature map they describe, so they follow that map in the top-down net."""

import torch
import torch.nn.functional as F
from torch import nn

import reverso
from reverso.testing import check_topdown


class PatchEmbed(nn.Module):
    """A strided conv that returns tokens and its output size computed from its input's shape,
    as timm's Twins and PVT patch embeddings do."""

    def __init__(self, cin, cout, patch):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(cin, cout, patch, stride=patch)

    def forward(self, x):
        h, w = x.shape[2] // self.patch, x.shape[3] // self.patch
        return self.proj(x).flatten(2).transpose(1, 2), (h, w)


class TokenBlock(nn.Module):
    """A residual MLP on tokens, then a depthwise conv on the map the tokens are reshaped into,
    by the sizes handed in."""

    def __init__(self, c):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(c), nn.Linear(c, c)
        self.pos = nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, x, size):
        x = x + self.fc(self.norm(x))
        b, _, c = x.shape
        grid = x.transpose(1, 2).reshape(b, c, *size)
        return grid + self.pos(grid)


class TwinsLike(nn.Module):
    def __init__(self, widths=(8, 16, 32)):
        super().__init__()
        chans = (3, *widths[:-1])
        self.embeds = nn.ModuleList(
            PatchEmbed(a, b, 4 if i == 0 else 2)
            for i, (a, b) in enumerate(zip(chans, widths, strict=True))
        )
        self.blocks = nn.ModuleList(TokenBlock(c) for c in widths)
        self.head = nn.Linear(widths[-1], 5)

    def forward(self, x):
        for embed, block in zip(self.embeds, self.blocks, strict=True):
            tokens, size = embed(x)
            x = block(tokens, size)
        return self.head(x.mean((2, 3)))


def test_sizes_computed_from_shapes_follow_the_map_they_describe():
    from reverso.frontend.normalize import rebase_image_sizes
    from reverso.frontend.scaling import measure_scaling
    from reverso.frontend.tracing import trace

    gm = trace(TwinsLike(), (3, 32, 32))
    assert rebase_image_sizes(gm, measure_scaling(gm, (3, 32, 32)))
    reads = [n for n in gm.graph.nodes if n.op == "call_method" and n.target == "size"]
    assert {n.args[0].target for n in reads} >= {"embeds.0.proj", "embeds.1.proj", "embeds.2.proj"}
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(gm(x), TwinsLike.forward(gm.meta["root"], x))


def test_a_model_that_hands_its_sizes_on_converts():
    torch.manual_seed(0)
    td = check_topdown(TwinsLike(), (3, 32, 32), other_sizes=[(48, 40)])
    assert td is not None
    F.cross_entropy(td(torch.rand(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    assert all(torch.isfinite(p.grad).all() for p in td.parameters() if p.grad is not None)
    assert reverso.analyze(TwinsLike(), (3, 32, 32)).levels == 4
