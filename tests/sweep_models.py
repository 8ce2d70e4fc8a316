"""Which models the parametrized model tests run by default, and which only with ``-m slow``.

The default run converts quick models that between them hold every block family of
``reverso.support.SWEEP`` (basic and SE residual blocks, inverted residuals with SE and hard
activations, mixed kernels, ghost modules, ConvNeXt blocks, RegNet's grouped blocks). The rest of
the sweep (bottlenecks, VGG, DenseNet, CSP and Darknet stages, RepVGG, VoVNet) costs several
seconds a model and runs with ``pytest -m slow``.
"""

import pytest

from reverso.support import SWEEP

#: the top-down sweep's default models
QUICK = (
    "resnet18", "seresnet18", "resnet18d", "regnety_002", "mobilenetv3_small_100",
    "efficientnet_b0", "ghostnet_100", "rexnet_100", "convnext_atto", "lcnet_050", "mixnet_s",
)  # fmt: skip

#: the layer passes (njet, frames, steerable) rewrite spatial convs: plain, depthwise with SE,
#: mixed kernels, ghost modules' cheap convs and ConvNeXt's 7x7 depthwise convs
QUICK_LAYER_PASSES = (
    "resnet18",
    "mobilenetv3_small_100",
    "mixnet_s",
    "ghostnet_100",
    "convnext_atto",
)


def params(names, quick) -> list:
    """``names`` as pytest parameters, those not in ``quick`` marked slow."""
    assert set(quick) <= set(names), "the quick models must be among the names"
    return [name if name in quick else pytest.param(name, marks=pytest.mark.slow) for name in names]


#: every sweep model, the ones outside QUICK marked slow
SWEEP_PARAMS = params(SWEEP, QUICK)
#: every sweep model for the layer passes, the ones outside QUICK_LAYER_PASSES marked slow
LAYER_PASS_PARAMS = params(SWEEP, QUICK_LAYER_PASSES)
