"""Every `reverso` subcommand end to end on tiny settings."""

import pytest
import torch

import reverso
from reverso.cli import _parser, in_flags, main

COMMANDS = ["demo", "convert", "summary", "erf", "train", "attack", "gradcam"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: reverso " + command) and len(text) > 300


def test_convert_and_summary(tmp_path, capsys):
    path = tmp_path / "td.safetensors"
    assert main(["convert", "lenet_fc", "-o", str(path), "--arrangement", "rev"]) == 0
    out = capsys.readouterr().out
    assert "bottom-up lenet_fc" in out and "(rev)" in out and f"saved to {path.resolve()}" in out
    td = reverso.load(path)
    assert td.recipe["options"]["arrangement"] == "rev"
    assert main(["summary", str(path)]) == 0
    assert "FLOPs" in capsys.readouterr().out
    assert main(["summary", "resnet18", "--input-size", "3", "64", "64", "--topdown"]) == 0
    out = capsys.readouterr().out
    assert "bottom-up resnet18" in out and "top-down" in out
    anti = tmp_path / "aa.safetensors"
    assert (
        main(
            [
                "convert",
                "resnet18",
                "--transform",
                "antialias",
                "--input-size",
                "3",
                "64",
                "64",
                "-o",
                str(anti),
            ]
        )
        == 0
    )
    assert "anti-aliased: " in capsys.readouterr().out


def test_convert_to_the_structured_layers(tmp_path, capsys):
    framed = tmp_path / "frames.safetensors"
    assert (
        main(
            [
                "convert",
                "nin_light",
                "--transform",
                "frames",
                "--frame",
                "framelet",
                "-o",
                str(framed),
            ]
        )
        == 0
    )
    assert "framelet" in capsys.readouterr().out  # the report
    x = torch.rand(2, 1, 28, 28)
    model = reverso.load(framed).eval()
    assert any(isinstance(m, reverso.nn.FrameConv2d) for m in model.modules())
    assert model(x).shape == (2, 10)
    hcnn = tmp_path / "hcnn.safetensors"
    assert main(["convert", "lenet_fc", "--transform", "hierarchical", "-o", str(hcnn)]) == 0
    assert any(isinstance(m, reverso.nn.HConv2d) for m in reverso.load(hcnn).modules())


def test_erf(tmp_path, capsys):
    png = tmp_path / "erf.png"
    assert main(["erf", "lenet_fc", "--samples", "2", "-o", str(png)]) == 0
    out = capsys.readouterr().out
    assert "receptive field 5..5 px" in out and "effective receptive field" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_erf_of_a_model_and_its_top_down_form_in_one_figure(tmp_path, capsys):
    svg = tmp_path / "erf.svg"
    assert main(["erf", "lenet_fc", "--topdown", "--samples", "2", "-o", str(svg)]) == 0
    out = capsys.readouterr().out
    assert "== bottom-up LeNetFC" in out and "== top-down LeNetFC" in out
    text = svg.read_text()
    assert "bottom-up LeNetFC" in text and "top-down LeNetFC" in text
    assert main(["erf", "lenet_fc", "-o", str(tmp_path / "erf.jpg")]) == 1
    assert ".pdf or .svg" in capsys.readouterr().err  # refused before any work


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path, plot = folder / "td.safetensors", folder / "curve.png"
    code = main(
        [
            "train",
            "lenet_fc",
            "--topdown",
            "--data",
            "digits",
            "--size",
            "28",
            "--epochs",
            "5",
            "--recipe",
            "mnist",
            "-o",
            str(path),
            "--plot",
            str(plot),
            "--checkpoint",
            str(folder / "ckpt"),
        ]
    )
    assert code == 0
    return path, plot


def test_train_saves_a_loadable_trained_model(trained):
    path, plot = trained
    td = reverso.load(path)
    assert isinstance(td, reverso.TopDownNet)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    data = reverso.data.load("digits", size=28)
    assert reverso.evaluate(td, data) > 0.3  # trained, not fresh


def test_attack_compares_models(trained, tmp_path, capsys):
    path, _ = trained
    png = tmp_path / "rob.png"
    code = main(
        [
            "attack",
            "lenet_fc",
            str(path),
            "--data",
            "digits",
            "--size",
            "28",
            "--samples",
            "12",
            "--attacks",
            "contrast",
            "gaussian_noise",
            "--budget",
            "fast",
            "--repeats",
            "1",
            "-o",
            str(png),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "robustness of LeNetFC" in out and "robustness of td" in out and "contrast" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_gradcam(trained, tmp_path, capsys):
    path, _ = trained
    png = tmp_path / "cams.png"
    assert (
        main(
            [
                "gradcam",
                str(path),
                "--data",
                "digits",
                "--size",
                "28",
                "--samples",
                "40",
                "--count",
                "3",
                "-o",
                str(png),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "precision" in out and "recall" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["convert", "not_a_model_anywhere", "-o", str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("reverso convert: MODEL 'not_a_model_anywhere'") and "Traceback" not in err
    )
    assert main(["train", "lenet_fc", "--data", "cifar10", "--epochs", "1"]) == 1
    assert "pass --root <folder>" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    assert main(["summary", str(bad)]) == 1
    assert "not a readable safetensors file" in capsys.readouterr().err
    torch.manual_seed(0)


def test_a_misspelled_model_gets_the_closest_names(tmp_path, capsys):
    assert main(["convert", "resnet181", "-o", str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "Did you mean: resnet18," in err  # by edit distance, closest first
    assert main(["summary", "lenet_f"]) == 1
    assert "Did you mean: lenet_fc" in capsys.readouterr().err  # reference models too


def test_errors_name_the_flags_not_python_arguments(capsys):
    assert main(["summary", "resnet18", "--input-size", "3", "8", "8", "--topdown"]) == 1
    err = capsys.readouterr().err
    assert "pass --input-size 3 17 17 or larger" in err and "input_size=" not in err
    assert main(["summary", "lenet_fc", "--input-size", "3", "28", "28"]) == 1
    err = capsys.readouterr().err
    assert "pass --input-size 1 28 28" in err and "small" not in err


@pytest.mark.parametrize(
    ("python", "command_line"),
    [
        ("pass input_size=(3, 17, 17) or larger", "pass --input-size 3 17 17 or larger"),
        ("Pass input_size=(channels, height, width), e.g.", "Pass --input-size C H W, e.g."),
        ("pass trust=['mypkg'] to reverso.load", "pass --trust mypkg"),
        ("pass layer= an earlier conv", "pass --layer an earlier conv"),
    ],
)
def test_python_advice_in_command_line_words(python, command_line):
    assert in_flags(python) == command_line


def test_every_option_has_help():
    parser = _parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, command in commands.items():
        for action in command._actions:
            if action.dest != "help":
                assert action.help, (
                    f"reverso {name} {'/'.join(action.option_strings) or action.dest}"
                )


def test_summary_shows_saved_bytes_and_memory_options(capsys):
    assert main(["summary", "lenet_fc", "--topdown", "--memory", "checkpoint"]) == 0
    out = capsys.readouterr().out
    assert "saved MB" in out and "checkpointed:" in out
    assert main(["summary", "resnet32_preact", "--topdown", "--merge-width", "inner"]) == 0
    assert "top-down" in capsys.readouterr().out
