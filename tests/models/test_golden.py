"""Golden tests: the top-down paper's reference models, converted and checked layer by layer and
by parameter count against the paper (docs/methods/topdown.md, section 6)."""

import pytest
import torch
import torch.fx as fx
from torch import nn

import reverso
from reverso.nn import Merge, Upsample

# -- the layer layout of a top-down network --------------------------------------------------


def conv_token(conv: nn.Conv2d) -> str:
    return f"C{conv.kernel_size[0]}/{conv.in_channels}->{conv.out_channels}"


def seq_tokens(seq: nn.Module) -> list[str]:
    """Convs, norms and activations of a small block, in order."""
    out = []
    for m in seq.modules():
        if isinstance(m, nn.Conv2d):
            out.append(conv_token(m))
        elif isinstance(m, nn.BatchNorm2d):
            out.append(f"BN{m.num_features}")
        elif isinstance(m, nn.ReLU):
            out.append("ReLU")
    return out


def layout(gm: fx.GraphModule) -> list[tuple]:
    """(kind, description, resolution) for each conv, upsampling and merge of a graph, in order."""
    rows = []
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        m = gm.get_submodule(n.target)
        size = tuple(n.meta["val"].shape[-2:]) if hasattr(n.meta.get("val"), "shape") else None
        if isinstance(m, nn.Conv2d):
            rows.append(("conv", conv_token(m), size))
        elif isinstance(m, Upsample):
            rows.append(("up", m.mode, size))
        elif isinstance(m, Merge):
            rows.append(
                (
                    "merge",
                    {
                        "project": seq_tokens(m.project) if m.project is not None else None,
                        "upsample": m.upsample is not None,
                        "lateral": seq_tokens(m.lateral),
                        "fuse": seq_tokens(m.fuse) if m.fuse is not None else None,
                    },
                    size,
                )
            )
    return rows


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def convs(rows):
    return [(desc, size) for kind, desc, size in rows if kind == "conv"]


def merges(rows):
    return [(desc, size) for kind, desc, size in rows if kind == "merge"]


def spatial_conv_widths(rows) -> dict:
    """Output widths of the 3x3 convs at each resolution (1x1 shortcut projections run before
    their upsampling, at the coarser size, so they are left out)."""
    widths = {}
    for desc, size in convs(rows):
        if desc.startswith("C3"):
            widths.setdefault(size, set()).add(int(desc.split("->")[1]))
    return widths


def within(value, paper, rel=0.01):
    return abs(value - paper) <= rel * paper


# -- parameter counts the paper gives to three significant digits --------------------------------

PAPER_COUNTS = [  # model, input size, bottom-up count, arrangement, top-down count
    ("NINLight", (1, 28, 28), 62_000, "td", 213_000),
    ("NINLight", (1, 28, 28), 62_000, "uni", 215_000),
    ("NINLight", (1, 28, 28), 62_000, "rev", 214_000),
    ("NIN", (3, 32, 32), 970_000, "td", 3_370_000),
    ("ResNet32", (3, 32, 32), 468_000, "td", 528_000),
    ("ResNet32", (3, 32, 32), 468_000, "uni", 320_000),
    ("ResNet32", (3, 32, 32), 468_000, "rev", 563_000),
]


@pytest.mark.parametrize(("model", "size", "bu_paper", "arrangement", "td_paper"), PAPER_COUNTS)
def test_parameter_counts_within_one_percent_of_the_paper(
    model, size, bu_paper, arrangement, td_paper, golden
):
    bu = getattr(golden, model)()
    assert within(params(bu), bu_paper)
    assert within(params(reverso.topdown(bu, input_size=size, arrangement=arrangement)), td_paper)


# -- the reference code's exact counts (docs/methods/topdown.md, section 6) ----------------------

EXACT = {  # model: (input size, BU, td, uni, rev)
    "LeNetFC": ((1, 28, 28), 7_670, 14_452, 23_486, 57_846),
    "NINLight": ((1, 28, 28), 62_094, 212_670, 214_734, 214_206),
    "NIN": ((3, 32, 32), 969_822, 3_368_478, 3_397_470, 3_388_446),
    "ResNet32": ((3, 32, 32), 467_946, 528_042, 319_626, 563_274),
}


@pytest.mark.parametrize("model", list(EXACT))
def test_exact_counts_of_the_reference_code(model, golden):
    size, *counts = EXACT[model]
    bu = getattr(golden, model)()
    found = [params(bu)] + [
        params(reverso.topdown(bu, input_size=size, arrangement=a)) for a in ("td", "uni", "rev")
    ]
    assert found == counts


def test_resnet18_imagenette_exact_counts_and_reversos_own_models(golden):
    bu = golden.ResNet18Imagenette()
    assert params(bu) == 2_799_114
    assert params(reverso.topdown(bu, input_size=(3, 128, 128))) == 4_966_538
    pairs = [
        ("lenet_fc", "LeNetFC"),
        ("nin_light", "NINLight"),
        ("nin", "NIN"),
        ("resnet32_preact", "ResNet32"),
        ("resnet18_imagenette", "ResNet18Imagenette"),
    ]
    for name, reference in pairs:
        assert params(reverso.models.create(name)) == params(getattr(golden, reference)()), name


# -- LeNetFC -----------------------------------------------------------------------------------


def test_lenet_fc_td_layer_by_layer(golden):
    td = reverso.topdown(golden.LeNetFC(), input_size=(1, 28, 28))
    rows = layout(td.features)
    assert [r[0] for r in rows] == ["conv", "merge", "conv", "merge", "conv"]
    # coarse: C3/32 on x/4 (7x7)
    assert rows[0] == ("conv", "C3/1->32", (7, 7))
    # merge to 14x14: C1/16, up, + c2, cat c2, C3/16 with lateral c2 = C5/16 on x/2
    assert rows[1] == (
        "merge",
        {
            "project": ["C1/32->16", "BN16", "ReLU"],
            "upsample": True,
            "lateral": ["C5/1->16", "BN16", "ReLU"],
            "fuse": ["C3/32->16", "BN16", "ReLU"],
        },
        (14, 14),
    )
    assert rows[2] == ("conv", "C5/16->16", (14, 14))
    # merge to 28x28: C1/6, up, + c1, cat c1, C3/6 with lateral c1 = C5/6 on x
    assert rows[3][1]["project"] == ["C1/16->6", "BN6", "ReLU"]
    assert rows[3][1]["lateral"] == ["C5/1->6", "BN6", "ReLU"]
    assert rows[3][1]["fuse"] == ["C3/12->6", "BN6", "ReLU"]
    assert rows[3][2] == (28, 28)
    assert rows[4] == ("conv", "C5/6->6", (28, 28))
    # head C1/10, GAP
    assert convs(layout(td.head.fc)) == [("C1/6->10", (28, 28))]


def test_lenet_fc_parameter_counts(golden):
    """The paper gives LeNetFC's counts to two significant digits (~8k, ~14k, ~23k, ~58k)."""
    bu = golden.LeNetFC()
    counts = {
        arr: params(reverso.topdown(bu, input_size=(1, 28, 28), arrangement=arr))
        for arr in ("td", "uni", "rev")
    }
    assert (params(bu), counts["td"], counts["uni"], counts["rev"]) == (7670, 14452, 23486, 57846)
    for value, paper in (
        (params(bu), 8_000),
        (counts["td"], 14_000),
        (counts["uni"], 23_000),
        (counts["rev"], 58_000),
    ):
        assert round(value, -3) == paper


def test_lenet_fc_uni_and_rev_layouts(golden):
    bu = golden.LeNetFC()
    uni = convs(layout(reverso.topdown(bu, input_size=(1, 28, 28), arrangement="uni").features))
    assert [c for c, _ in uni] == [
        "C3/1->16",
        "C5/16->16",
        "C5/16->16",
    ]  # median width 16 everywhere
    rev = reverso.topdown(bu, input_size=(1, 28, 28), arrangement="rev")
    rows = layout(rev.features)
    # widths 6 at 7x7, 16 at 14x14, 32 at 28x28; each level keeps the bottom-up kernel size there
    assert convs(rows) == [("C3/1->6", (7, 7)), ("C5/16->16", (14, 14)), ("C5/32->32", (28, 28))]
    assert [m["project"][0] for m, _ in merges(rows)] == ["C1/6->16", "C1/16->32"]
    assert [m["lateral"][0] for m, _ in merges(rows)] == ["C5/1->16", "C5/1->32"]


# -- NIN-light and NIN --------------------------------------------------------------------------


def test_nin_light_td_layer_by_layer(golden):
    td = reverso.topdown(golden.NINLight(), input_size=(1, 28, 28))
    rows = layout(td.features)
    assert convs(rows) == [
        ("C3/1->48", (7, 7)),
        ("C1/48->48", (7, 7)),
        ("C5/48->48", (14, 14)),
        ("C1/48->48", (14, 14)),
        ("C1/48->48", (14, 14)),
        ("C5/48->48", (28, 28)),
        ("C1/48->40", (28, 28)),
        ("C1/40->24", (28, 28)),
    ]
    for m, _ in merges(rows):
        assert m["project"] is None  # widths match: no 1x1 in the merges
        assert m["lateral"][0] == "C5/1->48"
        assert m["fuse"][0] == "C3/96->48"
    assert convs(layout(td.head.fc)) == [("C1/24->10", (28, 28))]
    # the Dropout that followed each bottom-up pooling follows the merge
    code = td.features.code
    for merge_name in [
        n.target for n in td.features.graph.nodes if n.op == "call_module" and "merge" in n.target
    ]:
        user = next(
            u for u in td.features.graph.nodes if u.op == "call_module" and u.target == merge_name
        ).next
        assert isinstance(td.features.get_submodule(user.target), torch.nn.Dropout), code


def test_nin_light_rev_layout(golden):
    rows = layout(
        reverso.topdown(golden.NINLight(), input_size=(1, 28, 28), arrangement="rev").features
    )
    assert [c for c, _ in convs(rows)] == [
        "C3/1->48",
        "C1/48->40",
        "C1/40->24",  # G1 at x/4 with the kernel of the level's bottom-up conv
        "C5/48->48",
        "C1/48->48",
        "C1/48->48",
        "C5/48->48",
        "C1/48->48",  # G3 at full resolution, with the 5x5 kernel of level 0
    ]
    assert (
        merges(rows)[0][0]["project"][0] == "C1/24->48"
    )  # the merge adds the 1x1 where widths differ
    assert merges(rows)[1][0]["project"] is None


# -- ResNet-32 ----------------------------------------------------------------------------------


def test_resnet32_td_layer_by_layer(golden):
    td = reverso.topdown(golden.ResNet32(), input_size=(3, 32, 32))
    gm = td.features
    rows = layout(gm)
    c = convs(rows)
    # stem C3/64 on x/4 (8x8), then 5 blocks at 64 with identity shortcuts (no projection left)
    assert c[0] == ("C3/3->64", (8, 8))
    assert c[1:11] == [("C3/64->64", (8, 8))] * 10
    # group 32: up-unit with shortcut C1/32(o) then up, main = up(o), C3/32, BN-ReLU, C3/32
    assert rows[11:17] == [
        ("conv", "C1/64->32", (8, 8)),
        ("up", "nearest", (16, 16)),
        ("conv", "C3/64->32", (16, 16)),
        ("conv", "C3/32->32", (16, 16)),
        ("up", "nearest", (16, 16)),
        (
            "merge",
            {
                "project": None,
                "upsample": False,
                "lateral": ["C3/3->32"],
                "fuse": ["BN64", "ReLU", "C3/64->32"],
            },
            (16, 16),
        ),
    ]
    assert convs(rows[17:25]) == [("C3/32->32", (16, 16))] * 8  # then 4 blocks at 32
    # group 16 the same way on x, its shortcut projection created from the pre-activation
    ms = merges(rows)
    assert ms[1] == (
        {
            "project": None,
            "upsample": False,
            "lateral": ["C3/3->16"],
            "fuse": ["BN32", "ReLU", "C3/32->16"],
        },
        (32, 32),
    )
    proj = next(
        n for n in gm.graph.nodes if n.op == "call_module" and n.target.endswith("shortcut")
    )
    assert (
        isinstance(gm.get_submodule(proj.args[0].target), torch.nn.ReLU)
        if proj.args[0].op == "call_module"
        else (proj.args[0].target is torch.nn.functional.relu)
    )
    # head BN-ReLU, GAP, Linear(16 -> 10)
    fc = [m for m in td.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in fc] == [(16, 10)]
    assert [m.num_features for m in td.head.modules() if isinstance(m, torch.nn.BatchNorm2d)] == [
        16
    ]


def test_resnet32_uni_has_plain_upsampled_identity_shortcuts(golden):
    td = reverso.topdown(golden.ResNet32(), input_size=(3, 32, 32), arrangement="uni")
    rows = layout(td.features)
    assert {c for c, _ in convs(rows)} == {
        "C3/3->32",
        "C3/32->32",
    }  # 32 everywhere, no 1x1 anywhere
    assert all(m["project"] is None for m, _ in merges(rows))


def test_resnet32_rev_widths_grow_coarse_to_fine(golden):
    rows = layout(
        reverso.topdown(golden.ResNet32(), input_size=(3, 32, 32), arrangement="rev").features
    )
    widths = spatial_conv_widths(rows)
    assert widths[(8, 8)] == {16} and widths[(16, 16)] == {32} and widths[(32, 32)] == {64}


# -- the Imagenette ResNet-18 -------------------------------------------------------------------


def test_resnet18_imagenette_ends_at_full_resolution(golden):
    td = reverso.topdown(golden.ResNet18Imagenette(), input_size=(3, 64, 64))
    rows = layout(td.features)
    c = convs(rows)
    assert c[0] == ("C3/3->256", (4, 4))  # the stem at the coarsest level, widened to G4's width
    # the stem pooling's mirror: a standalone upsampling + merge, then G4 one level finer
    assert rows[1][0] == "merge" and rows[1][1]["upsample"] and rows[1][2] == (8, 8)
    widths = spatial_conv_widths(rows[1:])
    assert widths == {(8, 8): {256}, (16, 16): {128}, (32, 32): {64}, (64, 64): {32}}
    assert td.forward_features(torch.rand(2, 3, 64, 64)).shape == (2, 32, 64, 64)
    assert sum(isinstance(m, Merge) for m in td.modules()) == 4
