"""Tracing front end and stage analysis."""

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import reverso
from reverso import ir


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: untraceable
            return x
        return -x


class NetWithBadBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = DataDependent()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.pool(self.gate(F.relu(self.conv1(x))))
        return self.fc(F.relu(self.conv2(x)).mean((2, 3)))


def test_trace_propagates_shapes_into_node_meta(golden):
    gm = reverso.trace(golden.LeNetFC(), (1, 28, 28))
    shapes = {n.name: tuple(n.meta["val"].shape) for n in gm.graph.nodes if n.op != "output"}
    assert shapes["c1_conv"] == (2, 6, 28, 28)
    assert shapes["max_pool2d_1"] == (2, 16, 7, 7)
    assert all(
        n.meta["val"].device.type == "meta" for n in gm.graph.nodes if n.op not in ("output",)
    )


def test_trace_keeps_timm_notrace_modules_and_registered_layers_whole():
    gm = reverso.trace(timm.create_model("efficientnet_b0", num_classes=10), (3, 64, 64))
    kinds = {
        type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"
    }
    assert "BatchNormAct2d" in kinds  # a timm notrace module is one node
    gm = reverso.trace(timm.create_model("convnext_atto", num_classes=10), (3, 64, 64))
    assert "LayerNorm2d" in {
        type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"
    }


def test_a_timm_notrace_block_that_downsamples_is_traced_through_when_it_traces():
    """NFNet's NormFreeBlock is a timm notrace module with a strided conv inside: the compiler
    must reach that stride, so it is opened; one that cannot trace stays whole."""
    from timm.layers import get_notrace_modules
    from timm.models.nfnet import NormFreeBlock

    model = timm.create_model("test_nfnet", num_classes=10).eval()
    gm = reverso.trace(model, (3, 64, 64))
    leaves = [gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    assert NormFreeBlock in get_notrace_modules()
    opened = [m for m in model.modules() if isinstance(m, NormFreeBlock) and m.conv2.stride[0] > 1]
    assert opened and not any(m in leaves for m in opened)
    assert any(isinstance(m, NormFreeBlock) for m in leaves)  # the others stay whole
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)

    class StridedNoTrace(NetWithBadBlock):  # a notrace block that downsamples but cannot trace
        def __init__(self):
            super().__init__()
            self.pool = nn.Conv2d(8, 8, 3, stride=2, padding=1)

        def forward(self, x):
            return self.pool(x) if x.sum() > 0 else -self.pool(x)

    from timm.layers import register_notrace_module

    register_notrace_module(StridedNoTrace)
    net = nn.Sequential(StridedNoTrace(), nn.Conv2d(8, 8, 1))
    assert StridedNoTrace in {
        type(reverso.trace(net, (8, 16, 16)).get_submodule(n.target))
        for n in reverso.trace(net, (8, 16, 16)).graph.nodes
        if n.op == "call_module"
    }


def test_untraceable_module_is_named_with_the_remedy():
    with pytest.raises(reverso.TraceError) as info:
        reverso.trace(NetWithBadBlock(), (3, 16, 16))
    message = str(info.value)
    assert "'gate'" in message and "DataDependent" in message and "leaf_modules=" in message


def test_leaf_modules_by_name_or_type_fix_tracing():
    for leaf in ("gate", DataDependent):
        td = reverso.topdown(NetWithBadBlock(), input_size=(3, 16, 16), leaf_modules=[leaf])
        assert td(torch.rand(2, 3, 16, 16)).shape == (2, 4)


def test_analysis_of_lenet_fc(golden):
    report = reverso.analyze(golden.LeNetFC(), (1, 28, 28))
    assert [type(i).__name__ for i in report.items] == [
        "Group",
        "Transition",
        "Group",
        "Transition",
        "Group",
    ]
    assert report.levels == 2 and not report.preact and report.num_classes == 10
    assert report.stem == []  # plain net: no stem
    assert [t.kind for t in report.transitions] == ["standalone", "standalone"]
    head = report.units[report.head[0]]
    assert (
        head.nodes[0] == "classifier_conv"
    )  # the 1x1 class map (conv-BN-ReLU) belongs to the head
    table = str(report)
    assert "standalone" in table and "head" in table and "G3" in table


def test_analysis_of_pre_activation_resnet32(golden):
    report = reverso.analyze(golden.ResNet32(), (3, 32, 32))
    assert report.preact
    assert len(report.stem) == 1 and len(report.groups) == 3
    assert [len(gr.units) for gr in report.groups] == [5, 5, 5]
    assert [gr.transition.kind if gr.transition else None for gr in report.groups] == [
        None,
        "inside",
        "inside",
    ]
    assert all(report.units[u].residual for gr in report.groups for u in gr.units)
    head = report.units[report.head[0]]
    assert head.nodes[0] == "bn" and head.nodes[1].startswith(
        "relu"
    )  # the final BN-ReLU opens the head


def test_analysis_of_timm_resnet18_marks_the_first_layer_transition():
    report = reverso.analyze("resnet18", (3, 64, 64))
    first = report.transitions[0]
    assert first.first and first.kind == "inside" and report.units[first.unit].nodes[0] == "conv1"
    assert [t.kind for t in report.transitions[1:]] == ["standalone", "inside", "inside", "inside"]
    assert report.levels == 5


def test_block_modules_stay_one_unit():
    report = reverso.analyze(timm.create_model("mobilenetv2_100", num_classes=10), (3, 64, 64))
    # every inverted-residual block (with or without skip) is one unit, never split at its depthwise conv
    for unit in report.units:
        prefixes = {".".join(n.split("_")[:3]) for n in unit.nodes if n.startswith("blocks_")}
        assert len(prefixes) <= 1, unit.nodes


def test_nodes_are_tagged_with_their_unit(golden):
    gm = reverso.trace(golden.LeNetFC(), (1, 28, 28))
    report = reverso.analysis.analyze_graph(gm, (1, 28, 28))
    for unit in report.units:
        for name in unit.nodes:
            assert ir.unit_of(ir.by_name(gm)[name]) == unit.index


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, 2, 1)
        self.mid = nn.Conv2d(8, 8, 3, 1, 1)
        self.up = nn.Upsample(scale_factor=2)
        self.out = nn.Conv2d(11, 4, 1)

    def forward(self, x):
        y = self.up(self.mid(self.down(x)))
        return self.out(torch.cat([x, y], 1)).mean((2, 3))


def test_unet_skip_across_resolutions_is_refused_with_the_node():
    with pytest.raises(reverso.UnsupportedTopologyError, match="U-Net") as info:
        reverso.topdown(UNet(), input_size=(3, 16, 16))
    assert "'up'" in str(info.value) or "up" in str(info.value)


def test_tuple_output_is_refused():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, 2, 1)

        def forward(self, x):
            y = self.conv(x).mean((2, 3))
            return y, y

    with pytest.raises(reverso.UnsupportedTopologyError, match="tuple"):
        reverso.analyze(TwoHeads(), (3, 16, 16))


def test_a_frozen_batchnorm_stays_frozen_in_the_model_and_its_conversions():
    # model.train(flag) would reset every submodule: the user's frozen BatchNorm must survive every
    # temporary eval, and its copy in a converted network keeps its mode
    model = timm.create_model("resnet18", num_classes=10).train()
    model.layer1[0].bn1.eval()
    frozen = [n for n, m in model.named_modules() if not m.training]
    x = torch.rand(2, 3, 64, 64)
    reverso.trace(model, (3, 64, 64))
    reverso.analyze(model, (3, 64, 64))
    reverso.erf(model, (3, 64, 64), samples=1)
    reverso.gradcam(model, x)
    reverso.summary(model, (3, 64, 64))
    td = reverso.topdown(model, input_size=(3, 64, 64))
    aa = reverso.antialias(model, input_size=(3, 64, 64))
    reverso.testing.check_runs(td, (3, 64, 64), other_sizes=[(64, 64)])
    assert [n for n, m in model.named_modules() if not m.training] == frozen == ["layer1.0.bn1"]
    for converted, block in ((td, td.features.layer1), (aa, aa.layer1)):
        assert converted.training and not block.get_submodule("0").bn1.training
        assert block.get_submodule("0").bn2.training
    assert not any(
        m.training for m in reverso.topdown(model.eval(), input_size=(3, 64, 64)).modules()
    )


def test_shape_propagation_keeps_no_user_module_alive(golden):
    import gc
    import weakref

    model = golden.LeNetFC()
    probe = weakref.ref(model[0] if isinstance(model, nn.Sequential) else next(model.children()))
    reverso.topdown(model, input_size=(1, 28, 28))
    del model
    gc.collect()
    assert probe() is None


def test_a_fingerprint_tells_graphs_apart_even_when_ids_could_be_reused(golden):
    from reverso.ir.shapes import fingerprint

    gm = reverso.trace(golden.LeNetFC(), (1, 28, 28))
    before = fingerprint(gm)
    assert before == fingerprint(gm)
    node = next(n for n in gm.graph.nodes if n.op == "call_module")
    with gm.graph.inserting_after(node):
        extra = gm.graph.call_function(torch.relu, (node,))
    node.replace_all_uses_with(extra, delete_user_cb=lambda user: user is not extra)
    assert before != fingerprint(gm)
    # the objects it was taken from stay alive as long as it is kept
    assert all(entry[0] is not None for entry in before.objects)
