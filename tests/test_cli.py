"""Every `reverso` subcommand end to end on tiny settings."""

import pytest
import torch

import reverso
from reverso.cli import main

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


def test_erf(tmp_path, capsys):
    png = tmp_path / "erf.png"
    assert main(["erf", "lenet_fc", "--samples", "2", "-o", str(png)]) == 0
    out = capsys.readouterr().out
    assert "receptive field 5..5 px" in out and "effective receptive field" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path, plot = folder / "td.safetensors", folder / "curve.png"
    code = main(["train", "lenet_fc", "--topdown", "--data", "digits", "--size", "28", "--epochs", "5",
                 "-o", str(path), "--plot", str(plot), "--checkpoint", str(folder / "ckpt")])  # fmt: skip
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
    code = main(["attack", "lenet_fc", str(path), "--data", "digits", "--size", "28", "--samples", "12",
                 "--attacks", "contrast", "gaussian_noise", "--budget", "fast", "--repeats", "1", "-o", str(png)])  # fmt: skip
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
    assert "pass root=" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    assert main(["summary", str(bad)]) == 1
    assert "not a readable safetensors file" in capsys.readouterr().err
    torch.manual_seed(0)
