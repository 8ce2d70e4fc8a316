"""reverso.antialias(variant="official") against the official antialiased-cnns package: the same
models (outputs bit for bit) and their checkpoints loaded by name mapping."""

import antialiased_cnns
import pytest
import torch
import torchvision

import reverso
from reverso.convert.official import official_state_dict
from reverso.nn import BlurPool2d


def randomised(model):
    """``model`` in eval mode with random BN statistics and affines (so every layer matters)."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
@pytest.mark.parametrize("size", [64, 67])  # odd maps: the official size rules are kept too
def test_official_models_and_checkpoints(name, size):
    official = randomised(getattr(antialiased_cnns, name)(filter_size=4))
    ours = reverso.antialias(
        getattr(torchvision.models, name)(),
        input_size=(3, size, size),
        variant="official",
        checkpoint=official.state_dict(),
    ).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(ours(x), official(x))


def test_pool_only_false_is_stem_true_and_filter_sizes():
    official = randomised(antialiased_cnns.resnet18(filter_size=3, pool_only=False))
    ours = reverso.antialias(
        torchvision.models.resnet18(),
        input_size=(3, 48, 48),
        filter_size=3,
        stem=True,
        variant="official",
        checkpoint=official.state_dict(),
    ).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(ours(x), official(x))


def test_the_official_replacements():
    resnet = reverso.antialias(
        torchvision.models.resnet18(), input_size=(3, 64, 64), variant="official"
    )
    # the stride-1 max-pool runs inside the blur layer that follows it
    pools = [m for m in resnet.modules() if isinstance(m, BlurPool2d) and m.max_kernel]
    assert [(p.max_kernel, p.max_padding, p.stride) for p in pools] == [(2, 0, 2)]
    dense = reverso.antialias(
        torchvision.models.densenet121(), input_size=(3, 64, 64), variant="official"
    )
    assert not [m for m in dense.modules() if isinstance(m, torch.nn.AvgPool2d)]
    pools = [m for m in dense.modules() if isinstance(m, BlurPool2d) and m.max_kernel]
    assert [(p.max_kernel, p.max_padding, p.stride) for p in pools] == [(3, 1, 2)]
    # reverso's own rules keep the box filter, so filter_size=1 stays the identity
    ours = reverso.antialias(torchvision.models.densenet121(), input_size=(3, 64, 64))
    assert len([m for m in ours.modules() if isinstance(m, torch.nn.AvgPool2d)]) == 3


def test_checkpoint_files_and_wrappers(tmp_path):
    official = randomised(antialiased_cnns.resnet18())
    path = tmp_path / "resnet18_lpf4.pth"
    state = {f"module.{k}": v for k, v in official.state_dict().items()}  # DataParallel-saved
    torch.save({"state_dict": state, "epoch": 90}, path)
    ours = reverso.antialias(
        torchvision.models.resnet18(), input_size=(3, 64, 64), variant="official"
    )
    mapped = official_state_dict(ours, path)
    assert mapped["layer2.0.conv2.weight"].equal(official.layer2[0].conv2[1].weight)
    assert mapped["layer2.0.downsample.0.weight"].equal(official.layer2[0].downsample[1].weight)
    assert set(mapped) == set(ours.state_dict())


def test_old_densenet_keys_are_renamed():
    official = antialiased_cnns.densenet121()
    state = {
        k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v
        for k, v in official.state_dict().items()
    }
    assert any("norm.1." in k for k in state)
    ours = reverso.antialias(
        torchvision.models.densenet121(), input_size=(3, 64, 64), variant="official"
    )
    ours.load_state_dict(official_state_dict(ours, state))
    assert ours.features.denseblock1.denselayer1.norm1.weight.equal(
        official.features.denseblock1.denselayer1.norm1.weight
    )


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: antialiased_cnns.resnet18(filter_size=5), "filter_size=5"),
        (lambda: antialiased_cnns.resnet18(pool_only=False), "stem=True"),
        (lambda: antialiased_cnns.resnet34(), "another architecture"),
    ],
)
def test_mismatched_checkpoints_are_refused(build, match):
    ours = reverso.antialias(
        torchvision.models.resnet18(), input_size=(3, 64, 64), variant="official"
    )
    with pytest.raises(reverso.FileFormatError, match=match):
        official_state_dict(ours, build().state_dict())


def test_bad_files_and_options(tmp_path):
    ours = reverso.antialias(
        torchvision.models.resnet18(), input_size=(3, 32, 32), variant="official"
    )
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(reverso.FileFormatError, match="not a readable PyTorch checkpoint"):
        official_state_dict(ours, corrupt)
    with pytest.raises(reverso.FileFormatError, match="no checkpoint file"):
        official_state_dict(ours, tmp_path / "missing.pth")
    with pytest.raises(reverso.FileFormatError, match="not a state_dict"):
        official_state_dict(ours, {"state_dict": {"conv1.weight": [1, 2]}})
    with pytest.raises(reverso.OptionError, match="variant"):
        reverso.antialias(torchvision.models.resnet18(), input_size=(3, 32, 32), variant="adobe")
    with pytest.raises(reverso.OptionError, match="variant='official'"):  # not into reverso's own
        reverso.antialias(torchvision.models.resnet18(), checkpoint=tmp_path / "resnet18_lpf4.pth")


def test_official_variant_survives_save_and_load(tmp_path):
    official = randomised(antialiased_cnns.resnet18())
    ours = reverso.antialias(
        torchvision.models.resnet18(),
        input_size=(3, 64, 64),
        variant="official",
        checkpoint=official.state_dict(),
    ).eval()
    path = reverso.save(ours, tmp_path / "aa.safetensors")
    back = reverso.load(path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), official(x))


def test_cli_converts_to_the_official_model_with_its_weights(tmp_path, capsys):
    from reverso.cli import main

    official = randomised(antialiased_cnns.resnet18(num_classes=10))
    weights = tmp_path / "resnet18_lpf4.pth"
    torch.save({"state_dict": official.state_dict()}, weights)
    out = tmp_path / "aa.safetensors"
    argv = ["convert", "resnet18", "--num-classes", "10", "--transform", "antialias"]
    argv += ["--input-size", "3", "64", "64", "--variant", "official"]
    assert main([*argv, "--official-weights", str(weights), "-o", str(out)]) == 0
    assert "anti-aliased: " in capsys.readouterr().out
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(reverso.load(out).eval()(x), official(x))
