"""Bad input gets a ReversoError that says what is wrong and what to do."""

import warnings

import pytest
import torch
from torch import nn

import reverso


class AllSameResolution(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
        )
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


def test_model_without_downsampling():
    with pytest.raises(reverso.NoDownsamplingError, match="no spatial downsampling") as info:
        reverso.topdown(AllSameResolution(), input_size=(3, 32, 32))
    assert "strides or pooling" in str(info.value) and "body" in str(info.value)


@pytest.mark.parametrize("side", [1, 8, 16])
def test_input_size_too_small_names_the_real_minimum(side):
    with pytest.raises(reverso.InputSizeError) as info:
        reverso.topdown("resnet18", input_size=(3, side, side))
    message = str(info.value)
    assert "too small" in message and "small input" not in message
    # resnet18 halves five times: 17 -> 9 -> 5 -> 3 -> 2 -> 1 still shrinks at every stride, 16 not
    assert "The smallest square input it takes is 17x17: pass input_size=(3, 17, 17)" in message


def test_the_minimum_named_is_one_the_conversion_and_the_network_accept():
    td = reverso.topdown("resnet18", input_size=(3, 17, 17)).eval()
    assert td(torch.rand(1, 3, 17, 17)).shape == (1, 1000)
    with pytest.raises(reverso.InputSizeError, match="at least 17x17"):
        td(torch.rand(1, 3, 16, 16))


class FixedSize(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 14 * 14, 10)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_a_model_with_one_fixed_size_is_told_so():
    with pytest.raises(reverso.InputSizeError) as info:
        reverso.topdown(FixedSize(), input_size=(1, 32, 32))
    message = str(info.value)
    assert "'fc'" in message and "fixed size" in message and "smallest" not in message


def test_a_channel_mismatch_names_the_channels_not_the_size(golden):
    with pytest.raises(reverso.InputSizeError) as info:
        reverso.topdown(golden.LeNetFC(), input_size=(3, 28, 28))
    message = str(info.value)
    assert "first layer takes 1 input channels, not 3: pass input_size=(1, 28, 28)" in message
    assert "small" not in message and "fixed size" not in message


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"arrangement": "down"}, "arrangement"),
        ({"arrangement": 0}, "width"),
        ({"merge": "sum"}, "merge"),
        ({"upsample": "cubic"}, "upsample"),
        ({"pyramid": "laplacian"}, "pyramid"),
    ],
)
def test_unknown_option_strings(kwargs, name, golden):
    with pytest.raises(reverso.OptionError, match=name) as info:
        reverso.topdown(golden.LeNetFC(), input_size=(1, 28, 28), **kwargs)
    assert "choose one of" in str(info.value) or "positive int" in str(info.value)


@pytest.mark.parametrize(
    "size", [(28, 28), (1, 28), (1, 0, 28), "28x28", (1, 28.5, 28), (True, 28, 28), (1, 10**5, 28)]
)
def test_malformed_input_size(size, golden):
    """Sizes are positive ints within reverso's limits: 28.5 is not read as 28."""
    with pytest.raises(reverso.InputSizeError, match=r"input_size must be \(C, H, W\): positive"):
        reverso.topdown(golden.LeNetFC(), input_size=size)


def test_missing_input_size_for_a_plain_module(golden):
    with pytest.raises(reverso.OptionError, match="input_size is required"):
        reverso.topdown(golden.LeNetFC())


def test_wrong_model_arguments(golden):
    with pytest.raises(reverso.OptionError, match="not a timm model name"):
        reverso.topdown("resnet_eighteen")
    with pytest.raises(reverso.OptionError, match=r"nn\.Module or a timm model name"):
        reverso.topdown(42, input_size=(3, 32, 32))
    with pytest.raises(reverso.OptionError, match="leaf_modules"):
        reverso.topdown(golden.LeNetFC(), input_size=(1, 28, 28), leaf_modules=[3])


def test_wrapped_scripted_and_lazy_models_are_told_what_to_pass(golden):
    """DataParallel, torch.compile and TorchScript wrap the model to convert; lazy modules have
    no shapes yet. Each is refused before tracing, with what to pass instead."""
    model, size = golden.LeNetFC(), (1, 28, 28)
    with warnings.catch_warnings():  # without a GPU DataParallel warns that it does nothing
        warnings.simplefilter("ignore")
        parallel = nn.DataParallel(model)
    with pytest.raises(reverso.OptionError, match=r"DataParallel wraps .*pass model\.module"):
        reverso.topdown(parallel, input_size=size)
    with pytest.raises(reverso.OptionError, match=r"torch\.compile.*model\._orig_mod"):
        reverso.njet(torch.compile(model), input_size=size)
    with pytest.raises(reverso.TraceError, match="TorchScript module"):
        reverso.antialias(torch.jit.trace(model, torch.rand(1, *size)), input_size=size)
    lazy = nn.Sequential(
        nn.LazyConv2d(4, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, 2, 1),
        nn.Flatten(),
        nn.LazyLinear(3),
    )
    with pytest.raises(reverso.OptionError, match=r"'0', '4' have lazy parameters.*run the model"):
        reverso.topdown(lazy, input_size=(3, 16, 16))
    lazy(torch.rand(1, 3, 16, 16))  # initialised: converts
    assert reverso.topdown(lazy, input_size=(3, 16, 16))(torch.rand(2, 3, 16, 16)).shape == (2, 3)


def test_timm_name_uses_its_pretrained_input_size():
    td = reverso.topdown("resnet18")
    assert td.pretrained_cfg["input_size"] == (3, 224, 224)


@pytest.mark.parametrize("shape", [(1, 28, 28), (28, 28), (2, 1, 1, 28, 28)])
def test_non_4d_input(shape, converted):
    td = converted("LeNetFC", (1, 28, 28))[1]
    with pytest.raises(reverso.InputSizeError, match=r"batch of images \(N, 1, H, W\)"):
        td(torch.rand(shape))


def test_wrong_channels_and_too_small_input(converted):
    td = converted("LeNetFC", (1, 28, 28))[1]
    with pytest.raises(reverso.InputSizeError, match="1 input channels"):
        td(torch.rand(2, 3, 28, 28))
    with pytest.raises(reverso.InputSizeError, match="at least 3x3"):  # its two levels differ
        td(torch.rand(2, 1, 2, 28))


def test_every_error_is_a_reverso_error():
    for cls in (
        reverso.OptionError,
        reverso.TraceError,
        reverso.InputSizeError,
        reverso.UnsupportedTopologyError,
        reverso.NoDownsamplingError,
        reverso.WidthError,
        reverso.PassError,
    ):
        assert issubclass(cls, reverso.ReversoError)


@pytest.mark.parametrize(
    "convert, kwargs, match",
    [
        (reverso.njet, {"order": -1}, r"order must be an int in \[0, 8\]"),
        (reverso.njet, {"sigma": -1.0}, "sigma must be a positive number"),
        (reverso.antialias, {"filter_size": 0}, "filter_size must be a positive int of at most 7"),
    ],
)
def test_a_pass_option_checked_by_the_layer_it_builds_is_an_option_error(
    convert, kwargs, match, golden
):
    """Not a PassError around a ValueError: the layers check their arguments with OptionError."""
    with pytest.raises(reverso.OptionError, match=match):
        convert(golden.LeNetFC(), input_size=(1, 28, 28), **kwargs)


def test_study_tools_refuse_arguments_of_the_wrong_kind(golden):
    with pytest.raises(reverso.OptionError, match="samples must be a positive integer"):
        reverso.erf(golden.LeNetFC(), (1, 28, 28), samples=0)
    with pytest.raises(reverso.OptionError, match=r"data must be a reverso\.data\.Data, got list"):
        reverso.train(golden.LeNetFC(), [torch.rand(1, 28, 28)], epochs=1)
    with pytest.raises(reverso.OptionError, match="x must be an input batch"):
        reverso.saved_bytes(golden.LeNetFC(), (1, 28, 28))


def test_the_package_raises_no_bare_value_errors():
    """Argument checks raise OptionError (a ValueError too), so callers can catch ReversoError."""
    import ast
    from pathlib import Path

    root = Path(reverso.__file__).parents[1]
    found = [
        f"{path.relative_to(root)}:{node.lineno}"
        for path in [
            *root.joinpath("reverso").rglob("*.py"),
            *root.joinpath("passes").rglob("*.py"),
        ]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Raise)
        and isinstance(node.exc, ast.Call)
        and getattr(node.exc.func, "id", None) in ("ValueError", "TypeError", "KeyError")
    ]
    assert found == ["reverso/rewrite/extract.py:66"], found  # an internal invariant


def test_more_study_arguments_of_the_wrong_kind(tmp_path, golden):
    net, images = golden.LeNetFC(), torch.rand(2, 1, 28, 28)
    with pytest.raises(reverso.OptionError, match=r"target must be one class in \[0, 10\)"):
        reverso.gradcam(net, images, target=10)
    assert reverso.gradcam(net, images, target=3).maps.shape[0] == 2  # one int: that class for all
    with pytest.raises(reverso.OptionError, match="max_shift must be a positive integer"):
        reverso.shift_consistency(net, images, max_shift=0)
    with pytest.raises(reverso.OptionError, match="max_shift must be an integer >= 0"):
        reverso.shift_adversary_accuracy(net, images, torch.zeros(2), max_shift=-1)  # was 100%
    pair = (images, torch.zeros(2, dtype=torch.long))
    with pytest.raises(reverso.OptionError, match="samples must be a positive integer"):
        reverso.robustness(net, pair, attacks="contrast", samples=0, progress=False)
    digits = reverso.data.load("digits")
    with pytest.raises(reverso.OptionError, match="number of images must be a positive integer"):
        digits.test_tensors(-1)
    with pytest.raises(reverso.OptionError, match="size must be a positive integer"):
        reverso.data.load("digits", size=-3)
    with pytest.raises(reverso.OptionError, match=r"data must be a reverso\.data\.Data, got str"):
        reverso.evaluate(net, "mnist5k")
    with pytest.raises(reverso.OptionError, match="'a' is a int, not a TrainResult"):
        reverso.plot_training({"a": 3}, tmp_path / "t.png")
    with pytest.raises(reverso.OptionError, match="needs a RobustnessReport or a non-empty dict"):
        reverso.plot_robustness({}, tmp_path / "r.png")
    with pytest.raises(reverso.OptionError, match="lenet_fc takes no depth; it takes num_classes"):
        reverso.models.create("lenet_fc", depth=3)


def test_check_topdown_raises_the_callers_own_mistakes(golden):
    """It returns None for a model reverso refuses, but a wrong argument is the caller's error."""
    from reverso.testing import check_topdown

    with pytest.raises(reverso.InputSizeError, match="input_size must be"):
        check_topdown(golden.LeNetFC(), (1, 28))
    with pytest.raises(reverso.OptionError, match="arrangement='zz'"):
        check_topdown(golden.LeNetFC(), (1, 28, 28), arrangement="zz")
    assert check_topdown(AllSameResolution(), (3, 16, 16)) is None  # refused: no downsampling


class _HeadReadsTheImage(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3))) + x.mean()


def test_a_head_that_also_reads_the_image_is_named_as_such():
    # was "no convolutional body before its head", though the model has one
    with pytest.raises(reverso.UnsupportedTopologyError, match=r"'add' .* joins several paths"):
        reverso.topdown(_HeadReadsTheImage(), input_size=(3, 16, 16))


def test_the_testing_checks_refuse_a_network_that_is_not_top_down(golden, converted):
    from reverso import testing

    bu = golden.LeNetFC()
    for check in (
        testing.check_coarse_entry,
        testing.check_resolution_never_decreases,
        testing.check_one_merge_per_transition,
        testing.check_units_once,
    ):
        with pytest.raises(reverso.OptionError, match=rf"{check.__name__} checks a network"):
            check(bu)
    with pytest.raises(reverso.OptionError, match="got LeNetFC: convert the model first"):
        testing.check_runs(bu, (1, 28, 28))
    td = converted("LeNetFC", (1, 28, 28))[1]
    with pytest.raises(reverso.InputSizeError, match="input_size must be"):
        testing.check_output_shape(bu, td, (28, 28))
