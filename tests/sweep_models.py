"""The timm models each pass's sweep test runs on.

The default run converts a handful of quick models that between them hold every block family of
``reverso.support.SWEEP`` (basic and SE residual blocks, inverted residuals with SE and hard
activations, mixed kernels, ghost modules, ConvNeXt blocks, RegNet's grouped blocks). The rest of
the sweep (bottlenecks, VGG, DenseNet, CSP and Darknet stages, RepVGG, VoVNet) costs several
seconds a model and runs with ``pytest -m slow``.
"""

import pytest

from reverso.support import SWEEP

QUICK = (
    "resnet18", "seresnet18", "resnet18d", "regnety_002", "mobilenetv3_small_100",
    "efficientnet_b0", "ghostnet_100", "rexnet_100", "convnext_atto", "lcnet_050", "mixnet_s",
)  # fmt: skip

#: every sweep model, the ones outside QUICK marked slow
SWEEP_PARAMS = [
    name if name in QUICK else pytest.param(name, marks=pytest.mark.slow) for name in SWEEP
]
assert set(QUICK) <= set(SWEEP), "QUICK must be a subset of reverso.support.SWEEP"
