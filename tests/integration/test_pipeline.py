"""The pass pipeline: editing by name, checks after every pass, dumps, custom passes."""

import pytest
import torch
from torch import nn

import reverso
from reverso import ir


def test_default_pipeline_lists_the_builtin_passes_by_name():
    assert reverso.passes.available() == [
        "filter_arrangement",
        "stride_one",
        "reverse_stages",
        "downsample_to_upsample",
        "drop_projections",
        "multiscale_inputs",
        "njet",
        "antialias",
        "checkpoint",
        "reversible",
        "frames",
        "steerable",
        "hierarchical",
    ]
    assert reverso.default_pipeline().names == reverso.passes.available()[:6]
    assert reverso.passes.get("reverse_stages").name == "reverse_stages"
    assert all(reverso.passes.get(name).name == name for name in reverso.passes.available())
    with pytest.raises(reverso.OptionError, match="available"):
        reverso.passes.get("reverse")


def test_insert_replace_remove_by_name():
    noop = reverso.Pass.from_function(lambda gm, ctx: gm, name="noop")
    pipe = reverso.default_pipeline()
    pipe.insert_before("reverse_stages", noop)
    assert pipe.names[pipe.names.index("reverse_stages") - 1] == "noop"
    pipe.remove("noop").insert_after("multiscale_inputs", noop)
    assert pipe.names[-1] == "noop"
    pipe.replace("noop", reverso.Pass.from_function(lambda gm, ctx: gm, name="noop2"))
    assert pipe.names[-1] == "noop2"
    with pytest.raises(reverso.OptionError, match="no pass named"):
        pipe.remove("missing")
    with pytest.raises(reverso.OptionError, match="twice"):
        pipe.append(reverso.passes.get("reverse_stages")())
    assert reverso.Pipeline(["reverse_stages"]).names == ["reverse_stages"]


def test_a_failing_pass_is_named(golden):
    def explode(gm, ctx):
        raise RuntimeError("boom")

    pipe = reverso.default_pipeline().insert_after(
        "reverse_stages", reverso.Pass.from_function(explode, "explode")
    )
    with pytest.raises(
        reverso.PassError, match="pass 'explode' failed: RuntimeError: boom"
    ) as info:
        reverso.topdown(golden.LeNetFC(), input_size=(1, 28, 28), passes=pipe)
    assert info.value.pass_name == "explode"


def test_a_pass_that_breaks_shapes_is_named_with_the_node(golden):
    def widen(gm, ctx):  # makes the first conv output 7 channels without repairing its users
        conv = next(n for n in gm.graph.nodes if ir.is_conv(gm, n))
        ir.set_module(gm, conv.target, nn.Conv2d(1, 7, 5, padding=2))
        return gm

    pipe = reverso.default_pipeline().insert_after(
        "multiscale_inputs", reverso.Pass.from_function(widen, "widen")
    )
    with pytest.raises(reverso.PassError) as info:
        reverso.topdown(golden.LeNetFC(), input_size=(1, 28, 28), passes=pipe)
    assert info.value.pass_name == "widen" and info.value.node is not None
    assert f"node '{info.value.node}'" in str(info.value) and "pass 'widen'" in str(info.value)


def test_a_malformed_graph_is_caught_by_lint(golden):
    def forward_ref(gm, ctx):
        nodes = [n for n in gm.graph.nodes if n.op == "call_module"]
        first, second = nodes[0], nodes[1]
        first.args = (second, *first.args[1:])
        return gm

    pipe = reverso.default_pipeline().append(reverso.Pass.from_function(forward_ref, "forward_ref"))
    with pytest.raises(reverso.PassError, match="pass 'forward_ref' left a malformed graph"):
        reverso.topdown(golden.LeNetFC(), input_size=(1, 28, 28), passes=pipe)


def test_requires_and_ensures_are_checked(golden):
    class Strict(reverso.Pass):
        name = "strict"

        def requires(self, gm, ctx):
            raise reverso.PassError("needs merges")

        def call(self, gm, ctx):
            return reverso.PassResult(gm, False)

    pipe = reverso.Pipeline(["filter_arrangement", Strict()])
    with pytest.raises(reverso.PassError, match="pass 'strict': needs merges"):
        reverso.topdown(golden.LeNetFC(), input_size=(1, 28, 28), passes=pipe)


def test_dump_dir_writes_every_intermediate_graph_as_code(tmp_path, golden):
    td = reverso.topdown(
        golden.LeNetFC(), input_size=(1, 28, 28), passes=reverso.default_pipeline(dump_dir=tmp_path)
    )
    files = sorted(p.name for p in tmp_path.iterdir())
    # one file per step: width repair runs (and is dumped) after every pass that changed widths
    assert files == [
        "00_input.py",
        "01_filter_arrangement.py",  # td: nothing to do, so no repair either
        "02_stride_one.py",  # every transition of LeNetFC is a standalone pool: nothing to do
        "03_reverse_stages.py",
        "04_width_repair.py",
        "05_downsample_to_upsample.py",
        "06_width_repair.py",
        "07_drop_projections.py",
        "08_multiscale_inputs.py",
        "09_width_repair.py",
    ]
    text = (tmp_path / "09_width_repair.py").read_text()
    assert "def forward(self" in text and "merge" in text and "(2, 32, 7, 7)" in text
    assert td.recipe["passes"] == [f[3:-3] for f in files[1:] if "width_repair" not in f]
    # reversing the stages leaves the first top-down conv expecting its bottom-up width; the
    # repair step, dumped on its own, rebuilds it
    before, after = (
        (tmp_path / f).read_text() for f in ("03_reverse_stages.py", "04_width_repair.py")
    )
    assert "Conv2d(16, 32, kernel_size=(3, 3)" in before and "Conv2d(32, 10," in before
    assert "Conv2d(1, 32, kernel_size=(3, 3)" in after and "Conv2d(6, 10," in after


def test_width_repair_is_attributed_to_its_own_step(tmp_path, golden):
    """Passes never repair widths themselves: the step after them does, and says what changed."""
    td = reverso.topdown(
        golden.LeNetFC(),
        input_size=(1, 28, 28),
        arrangement="uni",
        passes=reverso.default_pipeline(dump_dir=tmp_path),
    )
    names = [p.name for p in sorted(tmp_path.iterdir())]
    assert names[1:3] == ["01_filter_arrangement.py", "02_width_repair.py"]
    assert td(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_the_pipeline_checks_the_order_passes_declare(golden):
    # a pass placed before a pass it needs: named, with the fix
    pipe = reverso.default_pipeline()
    pipe.remove("multiscale_inputs").insert_before("downsample_to_upsample", "multiscale_inputs")
    with pytest.raises(
        reverso.OptionError,
        match=r"'multiscale_inputs' must run after 'downsample_to_upsample', which the pipeline "
        r"runs later.*move 'multiscale_inputs' after 'downsample_to_upsample'",
    ):
        reverso.topdown(golden.LeNetFC(), input_size=(1, 28, 28), passes=pipe)
    # a pass whose prerequisite is missing
    with pytest.raises(reverso.OptionError, match=r"does not have.*insert_before"):
        reverso.topdown(
            golden.LeNetFC(),
            input_size=(1, 28, 28),
            passes=["filter_arrangement", "downsample_to_upsample"],
        )
    # a pass that must run before another one that already ran
    with pytest.raises(
        reverso.OptionError, match="'reverse_stages' must run before 'downsample_to_upsample'"
    ):
        reverso.topdown(
            golden.LeNetFC(),
            input_size=(1, 28, 28),
            passes=["stride_one", "downsample_to_upsample", "reverse_stages"],
        )


def test_passes_given_as_a_list_and_wrong_types(golden):
    td = reverso.topdown(
        golden.LeNetFC(),
        input_size=(1, 28, 28),
        passes=["filter_arrangement", "stride_one", "reverse_stages", "downsample_to_upsample"],
    )
    assert not any(isinstance(m, reverso.nn.Merge) for m in td.modules())  # no merges: an ablation
    assert td(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(reverso.OptionError):
        reverso.topdown(golden.LeNetFC(), input_size=(1, 28, 28), passes="reverse_stages")
    with pytest.raises(reverso.OptionError):
        reverso.Pipeline([42])


def test_multiscale_inputs_needs_the_pyramid(golden):
    with pytest.raises(reverso.ReversoError, match="downsample_to_upsample"):
        reverso.topdown(golden.LeNetFC(), input_size=(1, 28, 28), passes=["multiscale_inputs"])
