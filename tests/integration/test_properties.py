"""Properties over random bottom-up CNNs (reverso.testing), for every arrangement and option."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from reverso.testing import bottom_up_cnns, check_topdown
from reverso.testing.strategies import CNNSpec, TransitionSpec, UnitSpec

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(bottom_up_cnns())
def test_random_bottom_up_cnns_convert_with_all_properties(spec):
    # conversion succeeds or raises ReversoError (check_topdown returns None then); anything else fails
    check_topdown(spec.build(), spec.input_size)


def _converts_and_trains(spec: CNNSpec) -> None:
    """All properties at the spec's size and at 16x16, then one backward with finite gradients."""
    td = check_topdown(spec.build(), spec.input_size, other_sizes=[(16, 16)])
    assert td is not None
    td(torch.rand(2, *spec.input_size)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in td.parameters() if p.grad is not None)


@pytest.mark.parametrize("transition", ["resize", "max_indices"])
def test_resizes_and_pools_with_indices_convert_with_all_properties(transition):
    """Downsampling written as a bilinear resize, or as a max-pool returning unread indices,
    between groups normalised with InstanceNorm (odd sizes)."""
    spec = CNNSpec(
        3,
        ((UnitSpec("gated", 6, 3),), (UnitSpec("residual", 8, 3), UnitSpec("plain", 8, 5))),
        (TransitionSpec(transition),),
        stem_stride=True,
        norm=True,
        act="silu",
        head="conv1x1",
        num_classes=4,
        input_size=(3, 19, 22),
        norm_kind="instance",
    )
    _converts_and_trains(spec)


@pytest.mark.parametrize(
    "unit", ["gated", "selective", "layer_scale", "partial", "shuffle", "unpadded"]
)
@pytest.mark.parametrize("transition", ["unshuffle", "slices", "blur"])
def test_every_modern_pattern_converts_with_all_properties(unit, transition):
    """Each of the strategy's modern patterns, deterministically (odd sizes, LayerNorm2d)."""
    spec = CNNSpec(
        3,
        (
            (UnitSpec(unit, 6, 3), UnitSpec("plain", 6, 3)),
            (UnitSpec(unit, 8, 3), UnitSpec("residual", 8, 3)),
        ),
        (TransitionSpec(transition),),
        stem_stride=True,
        norm=True,
        act="relu",
        head="gap_linear",
        num_classes=5,
        input_size=(3, 17, 20),
        norm_kind="layernorm2d",
    )
    _converts_and_trains(spec)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(bottom_up_cnns(max_transitions=3))
@pytest.mark.parametrize("arrangement", ["uni", "rev"])
def test_random_cnns_in_other_arrangements(arrangement, spec):
    check_topdown(spec.build(), spec.input_size, arrangement=arrangement)


@pytest.mark.parametrize("merge", ["add", "concat", "add_concat"])
@pytest.mark.parametrize("upsample", ["nearest", "bilinear", "blur"])
def test_every_merge_and_upsampling_keeps_the_properties(merge, upsample, golden):
    assert check_topdown(golden.ResNet32(), (3, 32, 32), merge=merge, upsample=upsample) is not None


@pytest.mark.parametrize("pyramid", ["gaussian", "gaussian_reflect", "binomial", "cascade"])
def test_every_pyramid_keeps_the_properties(pyramid, golden):
    assert check_topdown(golden.LeNetFC(), (1, 28, 28), pyramid=pyramid) is not None


def test_spec_builds_readable_reproducible_models():
    from hypothesis import Phase, find

    # the first example drawn, not shrunk: shrinking took up to 19 s on a fresh clone
    quick = settings(database=None, derandomize=True, phases=[Phase.generate])
    spec = find(
        bottom_up_cnns(), lambda s: len(s.transitions) == 2 and s.head == "conv1x1", settings=quick
    )
    a, b = spec.build(seed=1), spec.build(seed=1)
    x = torch.rand(2, *spec.input_size)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x)) and a(x).shape == (2, spec.num_classes)
    assert "CNNSpec(" in repr(spec)
