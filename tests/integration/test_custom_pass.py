"""A user-written pass inserted by name (examples/custom_pass.py, docs/custom_passes.md)."""

import pytest
import torch
from torch import nn

import reverso
from reverso import ir
from reverso.nn import Merge


@pytest.fixture(scope="module")
def example(load_script):
    return load_script("examples", "custom_pass")


def test_swap_activations_and_dropout_after_merges(example, golden):
    td = example.build(golden.ResNet32(), (3, 32, 32), p=0.2)
    default = reverso.default_pipeline().names
    assert td.recipe["passes"] == [*default, "dropout_after_merges", "swap_activations"]
    activations = [m for m in td.modules() if isinstance(m, ir.ACTIVATIONS)]
    assert activations and all(isinstance(m, nn.SiLU) for m in activations)  # inside merges too
    gm = td.features
    merges = [
        n
        for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), Merge)
    ]
    assert len(merges) == 2
    for node in merges:
        (user,) = node.users
        assert (
            isinstance(gm.get_submodule(user.target), nn.Dropout)
            and gm.get_submodule(user.target).p == 0.2
        )
    relu_calls = [
        n
        for n in gm.graph.nodes
        if n.op == "call_function" and n.target is torch.nn.functional.relu
    ]
    assert not relu_calls  # the functional F.relu of the golden model became F.silu
    assert td(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_example_runs_as_a_script(example, capsys):
    example.main(["--model", "lenet_fc"])
    out = capsys.readouterr().out
    assert "merge1_dropout" in out and "passes run:" in out


def test_dropout_pass_placed_before_merges_exist_is_refused(example, golden):
    pipe = reverso.default_pipeline().insert_before(
        "multiscale_inputs", example.DropoutAfterMerges()
    )
    with pytest.raises(
        reverso.OptionError,
        match="pass 'dropout_after_merges' must run after 'multiscale_inputs', which the pipeline runs later",
    ):
        reverso.topdown(golden.ResNet32(), input_size=(3, 32, 32), passes=pipe)
