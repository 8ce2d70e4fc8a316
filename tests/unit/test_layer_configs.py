"""Every layer of reverso.nn with channel widths rebuilds from its whole configuration: a width
change through the registry keeps every other setting, and config()/from_config() round-trip."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import reverso.nn
from reverso.nn import (
    BlurPool2d,
    DynamicSteerableConv2d,
    FrameConv2d,
    HConv2d,
    HLift,
    HReadout,
    NJetConv2d,
    SameConv2d,
    frame_atoms,
)
from reverso.rewrite.widths import REGISTRY

#: constructor arguments that set a layer's channel widths
WIDTH_ARGS = {"in_channels", "out_channels", "channels", "a_in", "k_in", "k_out", "classes"}

#: layers whose channels are no single constructor argument (attribute grids, a readout of any
#: number of positions): no width rule, their widths change through from_config alone
NO_WIDTH_RULE = {HConv2d, HLift, HReadout}


def exported_layers() -> list[type]:
    return [
        obj
        for name in reverso.nn.__all__
        if isinstance(obj := getattr(reverso.nn, name), type) and issubclass(obj, nn.Module)
    ]


def timm_same_njet() -> NJetConv2d:
    """An N-Jet conv with every option changed, standing for a strided 3x3 conv with timm's
    dynamic 'same' padding on a larger grid, as the njet pass builds it."""
    layer = NJetConv2d(
        4,
        6,
        order=2,
        sigma=[1.5, 2.0],
        learn_sigma=False,
        extent=3,
        size_rule="reference",
        stride=2,
        groups=2,
        bias=False,
        sigma_min=0.5,
        sigma_max=2.5,
        padding=0,
        route="dense",
        safe_subsampling=True,
        subsampling_rate=2.0,
        subsampling_rule="code",
    )
    layer.radius += 1
    layer.padding = ((layer.kernel_size[0] - 1) // 2, layer.kernel_size[0] // 2) * 2
    layer.same_extent = 3
    return layer


def steerable() -> DynamicSteerableConv2d:
    layer = DynamicSteerableConv2d(
        4,
        6,
        order=3,
        sigma=1.2,
        kernel_size=7,
        stride=2,
        padding=2,
        bias=False,
        pose="shared",
        mode="free",
        hidden=8,
        min_order=1,
    )
    layer.fused = True  # on this layer only (the fused kernels run on CUDA only)
    return layer


@dataclass
class Case:
    build: Callable[[], nn.Module]  # the layer, with non-default settings
    widths: dict  # the new widths
    input: Callable[[dict], tuple]  # the input shape of a layer of this config
    output: Callable[[dict], tuple]  # its output shape


def conv_case(build, output_size: int) -> Case:
    return Case(
        build,
        {"in_channels": 6, "out_channels": 8},
        lambda c: (2, c["in_channels"], 16, 16),
        lambda c: (2, c["out_channels"], output_size, output_size),
    )


def hconv_case(build) -> Case:
    return Case(
        build,
        {"a_in": 3, "k_in": 6, "k_out": 5},
        lambda c: (2, c["a_in"] * c["k_in"], 16, 16),
        lambda c: (2, -(-c["k_in"] // c["attr_stride"]) * c["k_out"], 8, 8),
    )


CASES = {
    # safe subsampling halves 16 (code rule: 2^2 / 2), 'same' padding at stride 2 halves it again
    "NJetConv2d": conv_case(timm_same_njet, 4),
    "FrameConv2d": conv_case(
        lambda: FrameConv2d(
            4,
            6,
            3,
            stride=2,
            padding=2,
            dilation=2,
            groups=2,
            bias=False,
            padding_mode="reflect",
            frame="framelet",
            sigma=0.8,
        ),
        8,
    ),
    "FrameConv2d-custom": conv_case(
        lambda: FrameConv2d(4, 6, 3, padding="same", frame=frame_atoms("naive", 3)), 16
    ),
    "SameConv2d": conv_case(
        lambda: SameConv2d(4, 6, 4, dilation=2, groups=2, bias=False, padding_mode="reflect"),
        16,
    ),
    "DynamicSteerableConv2d": conv_case(steerable, 7),
    "BlurPool2d": Case(
        lambda: BlurPool2d(4, filter_size=5, stride=3, pad_mode="zeros"),
        {"channels": 7},
        lambda c: (2, c["channels"], 16, 16),
        lambda c: (2, c["channels"], 6, 6),
    ),
    "HConv2d": hconv_case(
        lambda: HConv2d(
            2,
            4,
            6,
            Q=8,
            kernel=5,
            attr_kernel=(3, 5),
            stride=2,
            attr_stride=1,
            padding="circular",
            marginal="sum",
        )
    ),
    "HConv2d-linear": hconv_case(
        lambda: HConv2d(2, 4, 6, kernel=5, attr_kernel=(3, 3), stride=2, variant="linear")
    ),
    "HLift": Case(
        lambda: HLift(4, 6, kernel=5, attr_kernel=3, attr_stride=1, padding="circular"),
        {"k_in": 5, "k_out": 3},
        lambda c: (2, c["k_in"], 16, 16),
        lambda c: (2, c["k_in"] * c["k_out"], 16, 16),
    ),
    "HReadout": Case(
        lambda: HReadout(5),
        {"classes": 7},
        lambda c: (2, 3 * c["classes"], 4, 4),
        lambda c: (2, c["classes"]),
    ),
}


def rewidth(layer: nn.Module, widths: dict) -> nn.Module:
    """``layer`` at ``widths`` through the width registry, or from its config where no rule is."""
    rule = REGISTRY.lookup(layer)
    if type(layer) in NO_WIDTH_RULE:
        assert rule is None, f"{type(layer).__name__} has a width rule now: test it through it"
        return type(layer).from_config({**layer.config(), **widths})
    assert rule is not None, f"{type(layer).__name__} has no width rule"
    values = list(widths.values())  # (in, out), or the one width of a width-preserving layer
    cin, cout = values * 2 if len(values) == 1 else values
    return REGISTRY.rebuild(layer, cin, cout)


def test_every_layer_with_widths_has_a_config():
    with_widths = {
        cls
        for cls in exported_layers()
        if WIDTH_ARGS & set(inspect.signature(cls.__init__).parameters)
    }
    configurable = {cls for cls in exported_layers() if callable(getattr(cls, "config", None))}
    missing = sorted(cls.__name__ for cls in with_widths - configurable)
    assert not missing, f"layers with widths and no config()/from_config(): {missing}"
    tested = {type(case.build()) for case in CASES.values()}
    assert configurable <= tested, (
        f"no case here for {sorted(c.__name__ for c in configurable - tested)}"
    )


@pytest.mark.parametrize("name", CASES)
def test_a_width_change_keeps_every_other_setting(name):
    case = CASES[name]
    torch.manual_seed(0)
    layer = case.build()
    config = layer.config()
    assert layer(torch.randn(case.input(config))).shape == case.output(config)
    new = rewidth(layer, case.widths)
    assert type(new) is type(layer)
    assert new.config() == {**config, **case.widths}
    assert new(torch.randn(case.input(new.config()))).shape == case.output(new.config())


@pytest.mark.parametrize("name", CASES)
def test_config_round_trips_and_is_plain_data(name):
    layer = CASES[name].build()
    config = layer.config()
    assert type(layer).from_config(config).config() == config
    again = type(layer).from_config(json.loads(json.dumps(config))).config()
    assert json.dumps(again) == json.dumps(config)


def test_njet_rebuild_keeps_safe_subsampling_and_dynamic_same_padding():
    """A width change used to drop the subsampling settings and timm's 'same' padding."""
    layer = timm_same_njet()
    new = REGISTRY.rebuild(layer, 6, 8)
    assert (new.safe_subsampling, new.subsampling_rate, new.subsampling_rule) == (True, 2.0, "code")
    assert new.same_extent == 3 and (new.radius, new.padding) == (layer.radius, layer.padding)
    for size in (15, 16, 17):  # the output size follows the input's at every size
        expected = layer(torch.randn(1, 4, size, size)).shape[-2:]
        assert new(torch.randn(1, 6, size, size)).shape[-2:] == expected, size


def test_a_learned_scale_carries_over_a_width_change():
    njet = NJetConv2d(4, 6, sigma=1.0)
    with torch.no_grad():
        njet.scale.add_(0.4)  # as if trained
    new = REGISTRY.rebuild(njet, 5, 3)
    assert torch.allclose(new.sigma, njet.sigma) and new.learn_sigma
    assert new.config() == {**njet.config(), "in_channels": 5, "out_channels": 3}


@pytest.mark.parametrize(
    "build",
    [
        lambda: NJetConv2d(4, 4, groups=4),
        lambda: FrameConv2d(4, 4, 3, groups=4),
        lambda: SameConv2d(4, 4, 3, groups=4),
    ],
    ids=["NJetConv2d", "FrameConv2d", "SameConv2d"],
)
def test_a_depthwise_layer_keeps_one_group_per_channel(build):
    new = REGISTRY.rebuild(build(), 8)
    assert (new.in_channels, new.out_channels, new.groups) == (8, 8, 8)


def test_layers_on_the_meta_device_rebuild_without_values():
    with torch.device("meta"):
        njet = NJetConv2d(4, 6, sigma=[1.0, 2.0], learn_sigma=False)
    new = REGISTRY.rebuild(njet, 5, 3)
    assert new.alpha.is_meta
    assert new.config() == {**njet.config(), "in_channels": 5, "out_channels": 3}
