"""Never silently wrong, never an internal error: the constructs that used to crash inside the
compiler convert, those without a top-down form are refused by name with a way out, and wrong
arguments are OptionErrors before any work."""

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import reverso
from reverso.analysis.positions import _own_positions
from reverso.errors import (
    InputSizeError,
    OptionError,
    ReversoError,
    UnsupportedTopologyError,
    WidthError,
)
from reverso.nn import SameConv2d
from reverso.testing import check_topdown


def body(middle: nn.Module, width: int = 16) -> nn.Sequential:
    """conv, ``middle`` (reading ``width`` channels), conv, pool, conv, a pooled classifier."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        middle,
        nn.Conv2d(width, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


class IntGroupsBlur(nn.Module):
    """A per-channel fixed filter used depthwise with its channel count as a Python int."""

    def __init__(self, c):
        super().__init__()
        self.channels = c
        taps = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (taps[:, None] * taps / 16).repeat(c, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, groups=self.channels)


class ConstantView(nn.Module):
    """A per-channel gain reshaped with its constant channel count."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x):
        return x * self.scale.view(self.c, 1, 1)


class CatOfParameters(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = nn.Parameter(torch.ones(c // 2))
        self.b = nn.Parameter(torch.zeros(c - c // 2))

    def forward(self, x):
        return x + torch.cat([self.a, self.b]).view(1, -1, 1, 1)


@pytest.mark.parametrize("middle", [IntGroupsBlur, ConstantView])
def test_channel_constants_follow_the_new_width(middle):
    """Re-widthed in the uni arrangement (24 channels): the fixed filter's groups and the view's
    channel count follow, every parameter trains."""
    td = reverso.topdown(body(middle(16)), input_size=(3, 32, 32), arrangement=24)
    td.train()
    td(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in td.parameters())
    state = td.state_dict(keep_vars=True) | dict(td.named_buffers())
    if middle is IntGroupsBlur:  # a depthwise filter re-widthed like a depthwise conv
        (filt,) = [v for k, v in state.items() if k.endswith("filt")]
        assert filt.shape == (24, 1, 3, 3) and torch.equal(filt[0], filt[-1])
    else:
        (scale,) = [v for k, v in state.items() if k.endswith("scale")]
        assert scale.shape == (24,)


def test_concatenated_parameters_are_refused_by_name():
    with pytest.raises(WidthError, match=r"in '2' \(CatOfParameters\).*from '2.a', '2.b'"):
        reverso.topdown(body(CatOfParameters(16)), input_size=(3, 32, 32), arrangement=24)


@pytest.mark.parametrize("name", ["resnetblur18", "poolformer_s12", "ghostnetv2_100"])
def test_timm_blur_pools_constant_views_and_pooled_gates_convert(name):
    """timm's BlurPool2d (int groups), PoolFormer's layer scale viewed with constant channels,
    GhostNetV2's DFC attention (a gate pooled and interpolated back inside its block)."""
    model = timm.create_model(name, num_classes=5).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        td = reverso.topdown(model, input_size=(3, 64, 64))
    td.train()(torch.rand(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in td.parameters())


class LSTMHead(nn.Module):
    """A classifier on the last step of an LSTM run over the flattened map."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.lstm = nn.LSTM(32, 20, batch_first=True)
        self.fc = nn.Linear(20, 10)

    def forward(self, x):
        steps, _ = self.lstm(self.features(x).flatten(2).transpose(1, 2))
        return self.fc(steps[:, -1])


class CornerHead(nn.Module):
    """A classifier reading one fixed pixel of the last map."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.features(x)[:, :, 0, 0])


def test_a_sequence_over_the_map_is_refused_never_adapted():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused, not converted with a warning
        with pytest.raises(UnsupportedTopologyError) as info:
            reverso.topdown(LSTMHead(), input_size=(3, 32, 32))
    message = str(info.value)
    assert "'lstm' (LSTM)" in message and "raster order" in message
    assert "forward_features" in message  # the way out: the body alone
    assert "leaf_modules" not in message  # running it whole would not help


def test_a_fixed_position_read_is_refused_with_the_module_named():
    with pytest.raises(UnsupportedTopologyError, match=r"reads position 0 along dimension 2"):
        reverso.topdown(CornerHead(), input_size=(3, 32, 32))


def test_positions_a_model_prepends_keep_their_index():
    # (length at the traced size, at twice the size) -> positions of the model's own
    assert _own_positions(1 + 16, 1 + 64) == 1  # a class token before a flattened 4x4 map
    assert _own_positions(16, 64) == 0
    assert _own_positions(2 + 8, 2 + 16) == 2  # two tokens before one axis of 8
    assert _own_positions(8, 16) == 0


def test_sequence_heads_drawn_by_the_strategy_are_refused():
    from hypothesis import HealthCheck, given, settings

    from reverso.testing import bottom_up_cnns

    @settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bottom_up_cnns(max_transitions=2, max_units=1, heads=("sequence",)))
    def refused(spec):
        with pytest.raises(UnsupportedTopologyError, match="raster order"):
            reverso.topdown(spec.build(), input_size=spec.input_size)

    refused()


class FixedSizeAttention(nn.Module):
    """Self-attention over a map whose result is reshaped to a constant 8x8 size."""

    def __init__(self, c):
        super().__init__()
        self.qkv = nn.Conv2d(c, 3 * c, 1)

    def forward(self, x):
        b, c = x.shape[:2]
        q, k, v = self.qkv(x).flatten(2).chunk(3, dim=1)
        attn = (q.transpose(1, 2) @ k).softmax(-1)
        return (v @ attn.transpose(1, 2)).reshape(b, c, 8, 8)


def test_a_resolution_written_into_a_reshape_is_named():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.MaxPool2d(2),
        FixedSizeAttention(8),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    with pytest.raises(UnsupportedTopologyError) as info:
        reverso.topdown(model, input_size=(3, 16, 16))
    message = str(info.value)
    assert (
        "in '2' (FixedSizeAttention)" in message and "dimension 2 = 8, dimension 3 = 8" in message
    )
    assert "HRNet" not in message and "U-Net" not in message


class Stride1Transposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ConvTranspose2d(4, 4, 3, padding=1)  # no width rule in reverso
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.conv(self.up(self.pool(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def test_a_layer_without_width_rule_is_refused_with_ways_out_tried():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(WidthError) as info:
            reverso.topdown(Stride1Transposed(), input_size=(3, 16, 16))
    message = str(info.value)
    assert "'up' (ConvTranspose2d)" in message and "3 channels" in message
    assert "register_width_rule(ConvTranspose2d" in message and "arrangement='rev'" in message
    assert "reverso tried it" in message  # the leaf suggestion was dry-run


def test_a_layer_the_user_keeps_whole_runs_behind_a_projection_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        td = reverso.topdown(
            Stride1Transposed(), input_size=(3, 16, 16), leaf_modules=[nn.ConvTranspose2d]
        )
    (up,) = [m for m in td.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert up.in_channels == 4  # its own width, fed by a 1x1 projection of the image
    td(torch.rand(2, 3, 16, 16)).sum().backward()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"njet": {"ordr": 2}}, OptionError, "did you mean 'order'"),
        ({"input_size": (3, 64.5, 64)}, InputSizeError, r"positive ints"),
        ({"input_size": (3, 0, 64)}, InputSizeError, r"positive ints"),
        ({"memory": {"segments": 2}}, OptionError, r"memory takes a mode"),
        ({"merge": "sum"}, OptionError, r"'add', 'concat', 'add_concat'"),
    ],
)
def test_wrong_arguments_are_option_errors_before_any_work(options, error, match, monkeypatch):
    import reverso.convert.topdown as conversion

    def traced(*args, **kwargs):
        raise AssertionError("the model was traced before the arguments were checked")

    monkeypatch.setattr(conversion, "trace", traced)
    with pytest.raises(error, match=match):
        reverso.topdown(nn.Conv2d(3, 3, 1), **({"input_size": (3, 32, 32)} | options))


@pytest.mark.parametrize("sizes", [[(1, 29, 41)], [29], (29, 41), [(29, 0)], [(29.0, 41)]])
def test_check_sizes_take_one_documented_form(sizes):
    with pytest.raises(OptionError, match=r"\(H, W\)"):
        check_topdown(nn.Conv2d(3, 3, 1), (3, 32, 32), other_sizes=sizes)


@pytest.mark.parametrize(("kernel", "dilation"), [(2, 1), (4, 1), (4, 2), ((2, 3), 1)])
def test_same_conv_pads_even_kernels_as_torch_does_without_warning(kernel, dilation):
    ref = nn.Conv2d(4, 6, kernel, padding="same", dilation=dilation)
    ours = SameConv2d(4, 6, kernel, padding="same", dilation=dilation)
    ours.load_state_dict(ref.state_dict())
    x = torch.rand(2, 4, 9, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ref(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.allclose(ours(x), expected, atol=1e-6)
    with pytest.raises(OptionError, match="stride 1"):
        SameConv2d(4, 6, kernel, stride=2, padding=0)


def test_patchify_stems_run_at_stride_one_without_warnings():
    """A ConvNeXt-like net: a 4x4 stride-4 stem and 2x2 stride-2 downsamplings, made stride 1."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=4),
        nn.GELU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Conv2d(8, 16, 2, stride=2),
        nn.GELU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        td = reverso.topdown(model, input_size=(3, 32, 32))
        td(torch.rand(2, 3, 32, 32))
        td(torch.rand(1, 3, 37, 45))
    assert sum(isinstance(m, SameConv2d) for m in td.modules()) >= 2


def test_refusals_are_reverso_errors_with_the_users_module_named():
    """Every refusal above names where in the user's model it happened."""
    for model, size in ((LSTMHead(), 32), (CornerHead(), 32), (Stride1Transposed(), 16)):
        with pytest.raises(ReversoError) as info:
            reverso.topdown(model, input_size=(3, size, size))
        assert "'" in str(info.value) and "(" in str(info.value)


class RandomDepth(nn.Module):
    """A stochastic layer of the user's own: drops its input in train mode only."""

    def forward(self, x):
        if not self.training:
            return x
        return x * (torch.rand(x.shape[0], 1, 1, 1) > 0.5)


class Regularised(nn.Module):
    """Dropout written the three ways models write it."""

    def __init__(self, always_on: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depth = RandomDepth()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.always_on = always_on

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.stem(x)), 2)
        x = x + self.depth(self.conv(x))
        x = x.mean((2, 3))
        if self.always_on:
            return self.fc(F.dropout(x, 0.5, training=True))
        return self.fc(F.dropout(x, 0.5, training=self.training))


def test_layers_that_behave_differently_in_training_keep_their_mode():
    """Traced in eval mode, ``training=self.training`` and ``if not self.training`` would be
    frozen to eval: the converted net keeps dropping in train mode and stops in eval mode."""
    td = reverso.topdown(Regularised(), input_size=(3, 16, 16))
    assert any(isinstance(m, nn.Dropout) for m in td.modules())
    assert any(isinstance(m, RandomDepth) for m in td.modules())
    x = torch.rand(4, 3, 16, 16)
    td.train()
    assert not torch.equal(td(x), td(x))
    td.eval()
    assert torch.equal(td(x), td(x))


def test_a_dropout_written_always_on_stays_always_on():
    td = reverso.topdown(Regularised(always_on=True), input_size=(3, 16, 16)).eval()
    x = torch.rand(4, 3, 16, 16)
    assert not torch.equal(td(x), td(x))
