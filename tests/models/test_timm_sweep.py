"""The timm sweep: every model converts, trains for a step, and unsupported ones are refused."""

import math

import pytest

import reverso
from reverso.support import REPRESENTATIVE, SWEEP, check_timm_model
from reverso.sweep import TRANSFORMS, Outcome, check, classify


@pytest.mark.parametrize("name", SWEEP)
def test_timm_model_converts_and_trains(name):
    result = check_timm_model(name, input_size=(3, 64, 64))
    assert result.status == "ok", result.message
    assert result.finite, f"{name}: non-finite outputs or gradients"
    assert math.isfinite(result.loss_after) and result.loss_after < result.loss_before, (
        f"{name}: one SGD step did not lower the loss ({result.loss_before} -> {result.loss_after})"
    )


def test_hrnet_is_refused_for_its_cross_resolution_branches():
    result = check_timm_model("hrnet_w18_small")
    assert result.status == "refused"
    assert result.message.startswith("UnsupportedTopologyError")
    assert "cross-resolution" in result.message and "HRNet" in result.message
    assert "fuse_layers" in result.message  # names the node that makes it so


def test_vit_is_refused_for_its_position_embedding():
    # probed past its input-size assertion, ViT adds a position embedding of one size
    result = check_timm_model("vit_tiny_patch16_224", input_size=(3, 224, 224))
    assert result.status == "refused"
    assert result.message.startswith("UnsupportedTopologyError")
    assert "pos_embed" in result.message and "one input size" in result.message


def test_vit_at_the_wrong_size_says_which_size_it_needs():
    import timm

    with pytest.raises(reverso.InputSizeError, match="input_size"):
        reverso.topdown(timm.create_model("vit_tiny_patch16_224"), input_size=(3, 64, 64))


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_one_model_per_failure_class_of_the_catalogue_converts(name):
    result = check("timm", name, 96)
    assert result.outcome == "converts", result.message
    assert result.loss_after < result.loss_before
    assert not result.warned, result.warned  # nothing adapted behind the user's back


def test_a_refusal_that_wraps_a_torch_error_is_counted_as_a_bug():
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    wrapped = reverso.PassError("pass 'x' failed: RuntimeError: boom")
    wrapped.__cause__ = RuntimeError("boom")
    assert classify(wrapped, model, (3, 8, 8)) == "internal error"  # the model runs at 8x8
    assert classify(wrapped, model, (3, 2, 2)) == "refused"  # it cannot take 2x2 at all
    assert classify(reverso.NoDownsamplingError("no strides"), model, (3, 8, 8)) == "refused"
    assert classify(KeyError("x"), model, (3, 8, 8)) == "internal error"
    assert Outcome("timm", "m", bu_params=2**18, td_params=2**18).param_mb == 2.0


@pytest.mark.catalogue
def test_the_whole_catalogue_has_no_internal_errors(tmp_path):
    """The full sweep (about 30 minutes on 2 cores): every timm module and torchvision model."""
    from reverso.support import sweep_catalogue

    outcomes = sweep_catalogue(96, jobs=2, memory_gb=12)
    bugs = [f"{o.model}: {o.message}" for o in outcomes if o.outcome == "internal error"]
    assert not bugs, "\n".join(bugs)
    # a conversion keeps each layer's role or refuses: reverso warns of no adapted layer
    warned = [f"{o.model}: {w}" for o in outcomes for w in o.warned]
    assert not warned, "\n".join(warned)


#: a model of the catalogue each transform converts (hierarchical: a plain CNN, whose last SE
#: block is part of the head at 32x32)
TRANSFORM_MODELS = {
    "njet": ("test_convnext", 64),
    "antialias": ("test_convnext", 64),
    "frames": ("lcnet_050", 64),
    "steerable": ("resnet10t", 64),
    "hierarchical": ("lcnet_050", 32),
    "reversible": ("test_convnext", 64),
    "checkpoint": ("test_convnext", 64),
}


@pytest.mark.parametrize("transform", sorted(TRANSFORM_MODELS))
def test_the_sweep_runs_every_transform(transform):
    name, side = TRANSFORM_MODELS[transform]
    result = check("timm", name, side, transform)
    assert result.outcome == "converts", result.message
    assert result.loss_after < result.loss_before
    assert set(TRANSFORM_MODELS) == set(TRANSFORMS) - {"topdown"}


@pytest.mark.catalogue
@pytest.mark.parametrize("transform", sorted(TRANSFORM_MODELS))
def test_no_transform_has_internal_errors_on_the_catalogue(transform):
    """Each about 30-40 minutes on 2 cores (``python -m reverso.support --all --transform X``)."""
    from reverso.support import sweep_catalogue

    outcomes = sweep_catalogue(96, jobs=2, memory_gb=12, transform=transform)
    bugs = [f"{o.model}: {o.message}" for o in outcomes if o.outcome == "internal error"]
    assert not bugs, "\n".join(bugs)
