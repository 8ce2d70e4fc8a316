"""The timm sweep: every model converts, trains for a step, and unsupported ones are refused."""

import math

import pytest

import reverso
from reverso.support import SWEEP, check_timm_model


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


def test_vit_is_refused_for_having_no_spatial_downsampling():
    result = check_timm_model("vit_tiny_patch16_224", input_size=(3, 224, 224))
    assert result.status == "refused"
    assert result.message.startswith("NoDownsamplingError")
    assert "patch_embed" in result.message and "tokens" in result.message


def test_vit_at_the_wrong_size_says_which_size_it_needs():
    import timm

    with pytest.raises(reverso.InputSizeError, match="input_size"):
        reverso.topdown(timm.create_model("vit_tiny_patch16_224"), input_size=(3, 64, 64))
