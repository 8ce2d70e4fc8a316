"""Theoretical receptive fields (the top-down paper's worked example) and empirical ERFs."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from torch import nn

import reverso
from reverso.nn import GaussianBlur2d
from reverso.testing import (
    bottom_up_cnns,
    check_erf_within_receptive_field,
    check_topdown_reaches_receptive_field,
)


class Figure2BU(nn.Module):
    """The paper's Figure 2 bottom-up net: 3x3 convs (stride 1), 2x pooling, three resolutions."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(c, 4, 3, padding=1) for c in (1, 4, 4))
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.c1(x)), 2)
        x = F.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(torch.relu(self.c3(x)).mean((2, 3)))


class Figure2TD(nn.Module):
    """Its top-down twin as drawn: the coarsest input is pool, Gaussian blur (sigma), pool; each
    finer level merges the upsampled path with a lateral 3x3 conv on that level's image."""

    def __init__(self, sigma):
        super().__init__()
        self.blur = GaussianBlur2d(sigma)
        self.c3, self.c2, self.c1 = (nn.Conv2d(c, 4, 3, padding=1) for c in (1, 4, 4))
        self.l2, self.l1 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        x2 = F.avg_pool2d(x, 2)
        x4 = F.avg_pool2d(self.blur(x2), 2)
        y = self.c3(x4)
        y = self.c2(F.interpolate(y, scale_factor=2.0) + self.l2(x2))
        y = F.interpolate(y, scale_factor=2.0) + self.l1(x)
        return self.c1(y).mean((2, 3))


def test_worked_example_bottom_up():
    rf = reverso.receptive_fields(Figure2BU(), (1, 32, 32))
    convs = dict(rf.convs())
    assert (convs["c1"].max, convs["c1"].jump) == (3, 1)
    assert (convs["c3"].max, convs["c3"].jump, convs["c3"].level) == (18, 4, 2)


@pytest.mark.parametrize("sigma", [2 / 3, 1.0, 1.5, 2.0])
def test_worked_example_top_down(sigma):
    rf = reverso.receptive_fields(Figure2TD(sigma), (1, 32, 32))
    coarsest, first = rf["avg_pool2d_1"], rf["c3"]
    assert coarsest.max == pytest.approx(12 * sigma + 2) and coarsest.level == 2
    assert first.max == pytest.approx(12 * sigma + 10)
    last_merge = rf["add_1"]  # the finest merge: the lateral's 3 px meet the coarse path's
    assert last_merge.min == 3 and last_merge.max == pytest.approx(12 * sigma + 14)
    assert last_merge.level == 0


def test_worked_example_claim_at_sigma_two_thirds():
    # "already at its first layer the TD has the RF that the BU reaches only at its last": 18 px
    bu = reverso.receptive_fields(Figure2BU(), (1, 32, 32)).convs()[-1][1]
    td = reverso.receptive_fields(Figure2TD(2 / 3), (1, 32, 32))["c3"]
    assert td.max == pytest.approx(bu.max) == 18


def test_compiled_top_down_net_reaches_the_bottom_up_receptive_field():
    bu = Figure2BU()
    td = reverso.topdown(bu, input_size=(1, 32, 32))
    td_first, bu_last = check_topdown_reaches_receptive_field(bu, td, (1, 32, 32))
    # reverso's direct Gaussian pyramid: level 2 blurs with sigma = 2 px, 6 sigma = 12 px wide,
    # then the first (3x3) conv reads it at jump 4
    assert (td_first, bu_last) == (12 + 2 * 4, 18)


def test_claim_check_reports_numbers_when_it_fails(golden):
    # golden.LeNetFC's last conv is 3x3 after two 5x5: the TD's first conv (the 3x3) sees 20 < 24 px
    bu = golden.LeNetFC()
    td = reverso.topdown(bu, input_size=(1, 28, 28))
    with pytest.raises(AssertionError, match=r"sees 20 px, less than the 24 px"):
        check_topdown_reaches_receptive_field(bu, td, (1, 28, 28))


def test_dilation_and_stride_rules():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, dilation=2, padding=2), nn.Conv2d(2, 2, 3, stride=2), nn.Conv2d(2, 2, 3)
    )
    rows = reverso.receptive_fields(model, (1, 32, 32)).convs()
    assert [(rf.max, rf.jump) for _, rf in rows] == [(5, 1), (7, 2), (11, 2)]


def test_upsampling_divides_the_jump_and_global_pooling_sees_everything():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2),
        nn.Upsample(scale_factor=2),
        nn.Conv2d(2, 2, 3),
        nn.AdaptiveAvgPool2d(1),
    )
    rf = reverso.receptive_fields(model, (1, 16, 16))
    rows = list(rf.rows.values())
    assert [(r.max, r.jump) for _, r in rows[:3]] == [(3, 2), (3, 1), (5, 1)]
    assert math.isinf(rows[3][1].max)
    assert "all" in str(rf)


def test_exact_rules_count_every_tap():
    blur = nn.Sequential(GaussianBlur2d(1.0))
    paper = reverso.receptive_fields(blur, (1, 16, 16))
    exact = reverso.receptive_fields(blur, (1, 16, 16), rule="exact")
    assert paper["_0"].max == 6  # 6 sigma
    assert exact["_0"].max == 7  # 2 ceil(3 sigma) + 1 taps
    with pytest.raises(reverso.OptionError, match="rule must be"):
        reverso.receptive_fields(blur, (1, 16, 16), rule="loose")


# every pyramid with nearest upsampling and every upsampling with the default pyramid; the other
# combinations in tests/models
@pytest.mark.parametrize(
    ("upsample", "pyramid"),
    [("nearest", p) for p in ("gaussian", "gaussian_reflect", "binomial", "cascade")]
    + [(u, "gaussian") for u in ("bilinear", "blur")],
)
def test_gradients_stay_inside_the_exact_receptive_field_of_top_down_nets(
    upsample, pyramid, golden
):
    size = (3, 160, 160)  # larger than the receptive field, so the check is not trivial
    td = reverso.topdown(golden.ResNet32(), input_size=size, upsample=upsample, pyramid=pyramid)
    support, rf = check_erf_within_receptive_field(td, size, node="blocks_5_merge")
    assert rf / 2 < max(support) <= rf < 160
    if upsample == "nearest":  # no interpolation weights vanish: the bound is reached, up to the
        # pixels a nearest upsampling adds for windows that start inside a repeated pixel (the
        # central unit's window starts on one)
        assert rf - 2 <= max(support)


@pytest.mark.parametrize("norm", [nn.GroupNorm(1, 4), nn.InstanceNorm2d(4, affine=True)])
def test_a_norm_over_the_whole_map_is_named_when_gradients_leave_the_receptive_field(norm):
    model = nn.Sequential(nn.Conv2d(1, 4, 1), norm, nn.Conv2d(4, 4, 1))
    with pytest.raises(AssertionError, match=r"'1' \((GroupNorm|InstanceNorm2d)\) normalises"):
        check_erf_within_receptive_field(model, (1, 12, 12))


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(bottom_up_cnns(max_transitions=3))
def test_gradients_stay_inside_the_exact_receptive_field(spec):
    # GroupNorm's and InstanceNorm's statistics span the whole map, so their gradients reach
    # every pixel: the receptive field (the convs' and pools' geometry) bounds them only for
    # per-pixel norms
    assume(not (spec.norm and spec.norm_kind in ("group", "instance")))
    model = spec.build()
    check_erf_within_receptive_field(model, spec.input_size)
    # the bound for top-down nets assumes a merge's two inputs centred on each other; after
    # unpadded convs a merge stretches the trimmed coarse map to the lateral's size, where the
    # bound is not established (measured: one drawn net's gradient spans 45 px against 43)
    if any(u.kind == "unpadded" for group in spec.groups for u in group):
        return
    try:
        td = reverso.topdown(model, input_size=spec.input_size)
    except reverso.ReversoError:
        return
    check_erf_within_receptive_field(td, spec.input_size)


def _box_stack(depth, k):
    convs = [nn.Conv2d(1, 1, k, padding=k // 2, bias=False) for _ in range(depth)]
    for c in convs:
        nn.init.constant_(c.weight, 1.0)
    return nn.Sequential(*convs)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_erf_of_a_box_conv_is_the_box(k):
    result = reverso.erf(_box_stack(1, k), (1, 33, 33), samples=4)
    assert result.size == k and result.support == (k, k)
    assert result.center == pytest.approx((16, 16))
    box = result.map[16 - k // 2 : 17 + k // 2, 16 - k // 2 : 17 + k // 2]
    assert torch.allclose(box, torch.full_like(box, 1 / k**2))  # a box: every tap weighs the same


def test_erf_of_a_stack_of_boxes_matches_the_convolved_boxes():
    depth, k = 4, 3
    result = reverso.erf(_box_stack(depth, k), (1, 33, 33), samples=2)
    # oracle: the gradient is the box convolved with itself depth times (a discrete bell)
    one = np.ones(k)
    profile = one
    for _ in range(depth - 1):
        profile = np.convolve(profile, one)
    oracle = np.outer(profile, profile) / np.outer(profile, profile).sum()
    r = len(profile) // 2
    assert result.support == (len(profile),) * 2 == (9, 9)
    got = result.map[16 - r : 17 + r, 16 - r : 17 + r].numpy()
    np.testing.assert_allclose(got, oracle, rtol=1e-5)
    # 95% of the mass: the smallest centred square holding it
    cumulative = [oracle[r - i : r + i + 1, r - i : r + i + 1].sum() for i in range(r + 1)]
    assert result.radius == next(i for i, c in enumerate(cumulative) if c >= 0.95)
    assert result.size < len(profile)  # the tails hold little: the ERF is smaller than the RF


def test_erf_png_and_node_choice(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's choice, which drawing a PNG must leave alone
    try:
        model = _box_stack(3, 3)
        result = reverso.erf(model, (1, 17, 17), node="_1", samples=1, png=tmp_path / "erf.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    assert result.support == (5, 5) and result.node == "_1"
    assert result.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(reverso.OptionError, match="no node"):
        reverso.erf(model, (1, 17, 17), node="nope")
    with pytest.raises(reverso.OptionError, match="mass"):
        reverso.erf(model, (1, 17, 17), mass=1.5)


def test_erf_of_a_top_down_net_defaults_to_its_last_feature_map(converted):
    td = converted("LeNetFC", (1, 28, 28))[1]
    result = reverso.erf(td, (1, 28, 28), samples=2)
    # the finest stage's tap: the map forward_features returns
    assert result.node == td.feature_info[0]["module"].split(".")[-1] == "g1_out"
    assert result.map.shape == (28, 28)
    assert result.map.sum().item() == pytest.approx(1.0)


class _KeywordPools(nn.Module):
    """Functional pools with their arguments by keyword only, as users write them."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.c3, self.fc = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 10, 1)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), kernel_size=2)
        x = F.avg_pool2d(F.relu(self.c2(x)), kernel_size=2)  # stride: the kernel size
        return self.fc(F.relu(self.c3(x))).mean((2, 3))


def test_keyword_only_functional_pools_are_read_everywhere():
    model = _KeywordPools()
    report = reverso.analyze(model, (1, 28, 28))
    assert len(report.groups) == 3 and len(report.transitions) == 2
    convs = reverso.receptive_fields(model, (1, 28, 28)).convs()
    # c1: 3; pool 2: 4 (jump 2); c2: 4 + 2*2 = 8; pool 2: 8 + 2 = 10 (jump 4); c3: 10 + 2*4 = 18
    assert [rf.max for _, rf in convs[:3]] == [3, 8, 18]
    td = reverso.topdown(model, input_size=(1, 28, 28))
    assert td(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_a_kept_dims_mean_is_global_and_stays_global_through_convs():
    """A selective kernel's attention pools the whole map (``mean((2, 3), keepdim=True)``) and
    scales the map by it: every later pixel sees the whole input."""
    from reverso.testing.strategies import CNNSpec, TransitionSpec, UnitSpec

    spec = CNNSpec(
        1,
        ((UnitSpec("selective", 2, 1),), (UnitSpec("plain", 2, 1),)),
        (TransitionSpec("max"),),
        stem_stride=False,
        norm=False,
        act="relu",
        head="gap_linear",
        num_classes=2,
        input_size=(1, 8, 8),
    )
    report = reverso.receptive_fields(spec.build(), spec.input_size)
    assert report.rows["mean"][0] == "global"
    assert report["body_0_attend"].max == float("inf")  # a conv on a global value: no NaN
    assert report["add_1"].max == float("inf")
    assert "all" in str(report)
    check_erf_within_receptive_field(spec.build(), spec.input_size)


class _DeclaredConv(nn.Module):
    """A conv-like leaf that declares its geometry, as nn.Conv2d does."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 1, 5, 5))
        self.kernel_size, self.stride = 5, 2

    def forward(self, x):
        return F.conv2d(x, self.weight, stride=2, padding=2)


class _OpaqueConv(nn.Module):
    """A conv-like leaf with no declared geometry."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 1, 5, 5))

    def forward(self, x):
        return F.conv2d(x, self.w, padding=2)


@pytest.mark.parametrize("leaf", [_DeclaredConv, _OpaqueConv])
def test_an_unknown_leaf_is_read_from_its_declared_window_or_warned_about(leaf):
    """A leaf module reverso does not know: its kernel_size/stride attributes count as a window;
    without them, a spatial weight is not silently read as pointwise (a warning names it)."""
    from reverso.frontend.tracing import trace

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer, self.conv = leaf(), nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(self.layer(x))

    gm = trace(Net(), (1, 16, 16), leaf_modules=[leaf])
    if leaf is _DeclaredConv:
        rf = reverso.receptive_fields(gm)
        assert rf.rows == reverso.receptive_fields(Net(), (1, 16, 16), leaf_modules=[leaf]).rows
        assert (rf["layer"].max, rf["layer"].jump) == (5, 2)
        assert rf["conv"].max == 5 + 2 * 2
    else:
        with pytest.warns(UserWarning, match=r"layer \(_OpaqueConv\).*kernel_size and stride"):
            reverso.receptive_fields(gm)


def test_a_backbone_that_returns_its_map_is_measured_at_that_map():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))
    support, rf = check_erf_within_receptive_field(model, (1, 12, 12))
    assert support == (5, 5) and rf == 5  # the last conv's map, not the graph's output node
    with pytest.raises(reverso.OptionError, match="no receptive field for node 'nope'"):
        reverso.receptive_fields(model, (1, 12, 12))["nope"]
