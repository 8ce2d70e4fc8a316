"""Width repair's read-only mode, and constants it fits on the way."""

import torch

import reverso
from reverso.testing import CNNSpec, TransitionSpec, UnitSpec, check_topdown


def test_the_read_only_repair_changes_nothing_but_the_shapes(monkeypatch):
    """propagate_as_repaired (what multiscale_inputs reads widths through) runs the repair on a
    meta copy: the graph, its modules and its weights stay as they were."""
    from reverso.passes import multiscale_inputs

    seen = []
    real = multiscale_inputs.propagate_as_repaired

    def watched(gm, ctx):
        before = (
            gm.code,
            {k: v.clone() for k, v in gm.state_dict().items()},
            dict(gm.named_modules()),
        )
        real(gm, ctx)
        seen.append(before[0] == gm.code and before[2] == dict(gm.named_modules()))
        after = gm.state_dict()
        seen.append(all(torch.equal(v, after[k]) for k, v in before[1].items()))

    monkeypatch.setattr(multiscale_inputs, "propagate_as_repaired", watched)
    reverso.topdown(reverso.models.create("lenet_fc"), input_size=(1, 28, 28))
    assert seen and all(seen)


def test_a_constant_channel_view_before_a_merge_of_another_width_converts():
    # found by bottom_up_cnns: the view's gain is fitted in the dry run, then read back
    spec = CNNSpec(
        in_chans=1,
        groups=(
            (UnitSpec("channel_view", 2, 1), UnitSpec("residual", 3, 1)),
            (UnitSpec("layer_scale", 2, 1), UnitSpec("plain", 2, 1)),
        ),
        transitions=(TransitionSpec("max"),),
        stem_stride=False,
        norm=False,
        act="relu",
        head="gap_linear",
        num_classes=2,
        input_size=(1, 4, 4),
        norm_kind="layernorm2d",
    )
    check_topdown(spec.build(), spec.input_size)  # shapes, levels, merges, gradients
    td = reverso.topdown(spec.build(), input_size=spec.input_size)
    assert td(torch.rand(2, 1, 4, 4)).shape == (2, 2)
