"""The pass pipeline: editing by name, checks after every pass, dumps, custom passes."""

import pytest
import torch
from golden_models import LeNetFC
from torch import nn

import reverso
from reverso import graph as g


def test_default_pipeline_lists_the_builtin_passes_by_name():
    assert reverso.passes.available() == [
        "filter_arrangement",
        "reverse_stages",
        "downsample_to_upsample",
        "multiscale_inputs",
        "njet",
        "antialias",
    ]
    assert reverso.default_pipeline().names == reverso.passes.available()[:4]
    assert reverso.passes.get("reverse_stages").name == "reverse_stages"
    with pytest.raises(reverso.OptionError, match="available"):
        reverso.passes.get("reverse")


def test_insert_replace_remove_by_name():
    noop = reverso.Pass.from_function(lambda gm, ctx: gm, name="noop")
    pipe = reverso.default_pipeline()
    pipe.insert_before("reverse_stages", noop)
    assert pipe.names[1] == "noop"
    pipe.remove("noop").insert_after("multiscale_inputs", noop)
    assert pipe.names[-1] == "noop"
    pipe.replace("noop", reverso.Pass.from_function(lambda gm, ctx: gm, name="noop2"))
    assert pipe.names[-1] == "noop2"
    with pytest.raises(reverso.OptionError, match="no pass named"):
        pipe.remove("missing")
    with pytest.raises(reverso.OptionError, match="twice"):
        pipe.append(reverso.passes.get("reverse_stages")())
    assert reverso.Pipeline(["reverse_stages"]).names == ["reverse_stages"]


def test_a_failing_pass_is_named():
    def explode(gm, ctx):
        raise RuntimeError("boom")

    pipe = reverso.default_pipeline().insert_after(
        "reverse_stages", reverso.Pass.from_function(explode, "explode")
    )
    with pytest.raises(
        reverso.PassError, match="pass 'explode' failed: RuntimeError: boom"
    ) as info:
        reverso.topdown(LeNetFC(), input_size=(1, 28, 28), passes=pipe)
    assert info.value.pass_name == "explode"


def test_a_pass_that_breaks_shapes_is_named_with_the_node():
    def widen(gm, ctx):  # makes the first conv output 7 channels without repairing its users
        conv = next(n for n in gm.graph.nodes if g.is_conv(gm, n))
        g.set_module(gm, conv.target, nn.Conv2d(1, 7, 5, padding=2))
        return gm

    pipe = reverso.default_pipeline().insert_after(
        "multiscale_inputs", reverso.Pass.from_function(widen, "widen")
    )
    with pytest.raises(reverso.PassError) as info:
        reverso.topdown(LeNetFC(), input_size=(1, 28, 28), passes=pipe)
    assert info.value.pass_name == "widen" and info.value.node is not None
    assert f"node '{info.value.node}'" in str(info.value) and "pass 'widen'" in str(info.value)


def test_a_malformed_graph_is_caught_by_lint():
    def forward_ref(gm, ctx):
        nodes = [n for n in gm.graph.nodes if n.op == "call_module"]
        first, second = nodes[0], nodes[1]
        first.args = (second, *first.args[1:])
        return gm

    pipe = reverso.default_pipeline().append(reverso.Pass.from_function(forward_ref, "forward_ref"))
    with pytest.raises(reverso.PassError, match="pass 'forward_ref' left a malformed graph"):
        reverso.topdown(LeNetFC(), input_size=(1, 28, 28), passes=pipe)


def test_requires_and_ensures_are_checked():
    class Strict(reverso.Pass):
        name = "strict"

        def requires(self, gm, ctx):
            raise reverso.PassError("needs merges")

        def call(self, gm, ctx):
            return reverso.PassResult(gm, False)

    pipe = reverso.Pipeline(["filter_arrangement", Strict()])
    with pytest.raises(reverso.PassError, match="pass 'strict': needs merges"):
        reverso.topdown(LeNetFC(), input_size=(1, 28, 28), passes=pipe)


def test_dump_dir_writes_every_intermediate_graph_as_code(tmp_path):
    td = reverso.topdown(
        LeNetFC(), input_size=(1, 28, 28), passes=reverso.default_pipeline(dump_dir=tmp_path)
    )
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "00_input.py",
        "01_filter_arrangement.py",
        "02_reverse_stages.py",
        "03_downsample_to_upsample.py",
        "04_multiscale_inputs.py",
    ]
    text = (tmp_path / "04_multiscale_inputs.py").read_text()
    assert "def forward(self" in text and "merge" in text and "(2, 32, 7, 7)" in text
    assert td.recipe["passes"] == [f[3:-3] for f in files[1:]]


def test_passes_given_as_a_list_and_wrong_types():
    td = reverso.topdown(
        LeNetFC(),
        input_size=(1, 28, 28),
        passes=["filter_arrangement", "reverse_stages", "downsample_to_upsample"],
    )
    assert not any(isinstance(m, reverso.nn.Merge) for m in td.modules())  # no merges: an ablation
    assert td(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(reverso.OptionError):
        reverso.topdown(LeNetFC(), input_size=(1, 28, 28), passes="reverse_stages")
    with pytest.raises(reverso.OptionError):
        reverso.Pipeline([42])


def test_multiscale_inputs_needs_the_pyramid():
    with pytest.raises(reverso.ReversoError, match="downsample_to_upsample"):
        reverso.topdown(LeNetFC(), input_size=(1, 28, 28), passes=["multiscale_inputs"])
