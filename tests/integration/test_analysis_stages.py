"""The analysis stage by stage, each run alone on a traced model, and the tag protocol it feeds."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reverso
from reverso import ir
from reverso.analysis import analyze_graph
from reverso.analysis.levels import downsampling_nodes, measure_levels
from reverso.analysis.probe import probe
from reverso.analysis.segments import find_segments
from reverso.analysis.stages import build_report
from reverso.analysis.units import build_units


@pytest.fixture(scope="module")
def lenet(golden):
    gm = reverso.trace(golden.LeNetFC(), (1, 28, 28))
    values = probe(gm, (1, 28, 28))
    segments = find_segments(gm, values)
    levels = measure_levels(gm, values, (28, 28))
    strided = downsampling_nodes(gm, levels, segments)
    return gm, values, segments, levels, strided


def test_probe_finds_the_image_the_logits_and_the_feature_maps(lenet):
    gm, values, *_ = lenet
    named = ir.by_name(gm)
    assert values.input.name == "x" and values.result.name == "mean" and values.num_classes == 10
    assert named["c1_conv"] in values.maps and named["classifier_conv"] in values.maps
    assert named["mean"] not in values.scaling  # the pooled logits keep their size


def test_segments_cut_the_main_path_and_the_head_starts_at_the_pooling(lenet):
    _, _, segments, *_ = lenet
    names = [n.name for n in segments.chain]
    assert names[0] == "x" and names[-1] == "output"
    assert segments.chain[segments.head_start].name == "mean"
    assert [n.name for n in segments.nodes(1)] == ["c1_conv"]  # one layer per segment here


def test_levels_come_from_strides_and_the_pools_raise_them(lenet):
    gm, _, _, levels, strided = lenet
    named = ir.by_name(gm)
    assert levels[named["c1_conv"]] == 0 and levels[named["c3_conv"]] == 2
    assert {n.name: f for n, f in strided.items()} == {"max_pool2d": 2, "max_pool2d_1": 2}


def test_units_take_their_norm_and_activation_and_pools_stand_alone(lenet):
    gm, values, segments, levels, strided = lenet
    units, preact = build_units(gm, values, segments, levels, strided)
    assert not preact
    assert [(u.kind, u.nodes[0], u.exit) for u in units] == [
        ("layer", "c1_conv", "relu"),
        ("pool", "max_pool2d", "max_pool2d"),
        ("layer", "c2_conv", "relu_1"),
        ("pool", "max_pool2d_1", "max_pool2d_1"),
        ("layer", "c3_conv", "relu_2"),
        ("head", "classifier_conv", "mean"),  # the class map (conv-BN-ReLU) joins the head
    ]
    assert [u.params for u in units] == [168, 0, 2448, 0, 4704, 350]  # conv + BN


def test_stages_group_the_units_between_the_transitions(lenet):
    gm, values, segments, levels, strided = lenet
    units, preact = build_units(gm, values, segments, levels, strided)
    report = build_report(gm, (1, 28, 28), values, levels, units, preact)
    assert [u.role for u in report.units] == ["G1", "T1", "G2", "T2", "G3", "head"]
    assert report.levels == 2 and report.stem == [] and len(report.transitions) == 2
    assert report.opening == {0: "c1_conv", 1: "c2_conv", 2: "c3_conv"}


def test_the_stages_only_read_the_graph_and_tagging_writes_it_once(golden):
    gm = reverso.trace(golden.ResNet32(), (3, 32, 32))
    assert not any(ir.TAG in n.meta for n in gm.graph.nodes)
    values = probe(gm, (3, 32, 32))
    segments = find_segments(gm, values)
    levels = measure_levels(gm, values, (32, 32))
    build_units(gm, values, segments, levels, downsampling_nodes(gm, levels, segments))
    assert not any(ir.TAG in n.meta for n in gm.graph.nodes)
    report = analyze_graph(gm, (3, 32, 32))
    for unit in report.units:
        for name in unit.nodes:
            node = ir.by_name(gm)[name]
            assert ir.unit_of(node) == unit.index
            assert ir.stride_tag(node) == unit.strided.get(name)
    assert ir.is_global(ir.by_name(gm)["flatten"]) and not ir.is_global(ir.by_name(gm)["stem"])


class SubtractBlock(nn.Module):
    """``x - f(x)``: a subtraction of a branch, not a residual connection."""

    def __init__(self, c, join):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.join = join

    def forward(self, x):
        return self.join(x, self.conv2(F.relu(self.conv1(x))))


def _net(join):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        SubtractBlock(8, join),
        nn.MaxPool2d(2),
        SubtractBlock(8, join),
        nn.MaxPool2d(2),
        SubtractBlock(8, join),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def test_a_subtraction_is_not_a_residual_add():
    subtracted = reverso.analyze(_net(torch.sub), (3, 32, 32))
    added = reverso.analyze(_net(torch.add), (3, 32, 32))
    assert not any(u.residual for u in subtracted.units)
    assert [u.residual for u in added.units if u.kind == "block"] == [True, True, True]
    assert added.stem and not subtracted.stem  # only residual nets have a stem
    td = reverso.topdown(_net(torch.sub), input_size=(3, 32, 32))
    assert td(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_inserted_nodes_inherit_the_unit_and_nothing_else(golden):
    gm = reverso.trace(golden.LeNetFC(), (1, 28, 28))
    analyze_graph(gm, (1, 28, 28))
    pool = ir.by_name(gm)["max_pool2d"]
    new = ir.add_module_node(gm, "extra", nn.Identity(), (pool,), after=pool, meta_from=pool)
    assert ir.unit_of(new) == ir.unit_of(pool)
    assert ir.stride_tag(pool) == 2 and ir.stride_tag(new) is None  # the stride stays the pool's
    ir.mark(new, ir.Role.UPSAMPLE, transition=3)
    assert ir.nodes_with_role(gm, ir.Role.UPSAMPLE, transition=3) == [new]
    assert ir.nodes_with_role(gm, ir.Role.UPSAMPLE, transition=2) == []
    copy = gm.graph.create_node("call_function", torch.relu, (new,))
    ir.copy_tags(copy, new)
    ir.tags_of(copy).transition = 4
    assert ir.tags_of(new).transition == 3  # a copy owns its record


def test_one_window_reader_for_modules_and_functional_pools():
    class Pools(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.conv = nn.Conv2d(3, 3, 3, stride=2, dilation=2, padding=2)

        def forward(self, x):
            return F.max_pool2d(self.conv(self.pool(x)), 3, 2, 1)

    gm = reverso.trace(Pools(), (3, 32, 32))
    named = ir.by_name(gm)
    module, functional = ir.window_of(gm, named["pool"]), ir.window_of(gm, named["max_pool2d"])
    assert module == functional and module.kind == "max" and module.step == 2
    conv = ir.window_of(gm, named["conv"])
    assert conv.extent == 5 and conv.step == 2 and ir.conv_kernel(gm, named["conv"]) == 5
    assert ir.stride_of(gm, named["max_pool2d"]) == 2 and ir.window_of(gm, named["x"]) is None


def test_one_activation_table():
    from reverso.ir import activations

    assert isinstance(activations.module_for(F.relu), nn.ReLU)
    assert isinstance(activations.module_for("sigmoid_"), nn.Sigmoid)
    assert activations.module_for(F.softmax) is None
    assert nn.PReLU in activations.TORCH_TYPES and nn.SiLU in activations.MODULE_TYPES


class NHWCBlocks(nn.Module):
    """A patch embedding checked by an assertion, then MLP blocks on channels-last maps that the
    global pooling reads directly: every edit the front end makes for the analysis."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 2, stride=2)
        self.mlp = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.down = nn.Conv2d(8, 8, 2, stride=2)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        torch._assert(x.shape[2] == 16, "the image must be 16 px")
        x = self.embed(x).permute(0, 2, 3, 1)
        x = x + self.mlp[0](x)
        x = self.down(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.mlp[1](x)
        return self.head(x.mean((1, 2)))


@pytest.mark.parametrize("which", ["LeNetFC", "NHWCBlocks"])
def test_the_analysis_reads_the_graph_and_never_edits_it(golden, which):
    from reverso.frontend.normalize import canonicalize

    model = NHWCBlocks() if which == "NHWCBlocks" else golden.LeNetFC()
    size = (3, 16, 16) if which == "NHWCBlocks" else (1, 28, 28)
    gm = reverso.trace(model, size)
    before = gm.code
    assert canonicalize(gm, size) == (which == "NHWCBlocks")
    if which == "NHWCBlocks":  # the size check went, NCHW maps stand beside the NHWC values
        assert "_assert" in before and "_assert" not in gm.code
        assert gm.code.count("permute") > before.count("permute")
        x = torch.rand(2, *size)
        torch.testing.assert_close(gm(x), model(x))
    canonical, nodes = gm.code, list(gm.graph.nodes)
    analyze_graph(gm, size)
    assert gm.code == canonical and list(gm.graph.nodes) == nodes
