"""The slower variants of the integration tests (tests/integration runs the quick one of each):
deeper models, the other option combinations, longer training and more drawn nets."""

import pytest
import timm
import torch
import torchvision
from hypothesis import HealthCheck, given, settings

import reverso
from reverso.nn import ReversibleSequence
from reverso.study.train import train
from reverso.testing import bottom_up_cnns, check_erf_within_receptive_field, check_topdown


def same_outputs(a, b, x) -> bool:
    a.eval(), b.eval()
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_conversions_of_an_anti_aliased_net_round_trip(tmp_path):
    """Saving: a chain whose first step is antialias (integration: chains over topdown)."""
    size, x = (3, 32, 32), torch.rand(2, 3, 32, 32)
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=5)
    tv = torchvision.models.resnet18(num_classes=5)
    chains = {
        "topdown of antialias": reverso.topdown(reverso.antialias(model, input_size=size)),
        "frames of antialias": reverso.frames(reverso.antialias(tv, input_size=size)),
    }
    for name, chain in chains.items():
        loaded = reverso.load(reverso.save(chain, tmp_path / "chain.safetensors"))
        assert same_outputs(chain, loaded, x), name
        assert " of ".join(step.transform for step in chain.reverso_recipe.steps) == name


def test_njet_memory_options_round_trip_once(memory_round_trip):
    """Saving: memory= of an N-Jet conversion is applied once on loading (integration: topdown)."""
    memory_round_trip(reverso.njet)


def test_timm_resnet50_becomes_reversible_with_either_mid_width():
    """The reversible pass on bottleneck blocks (integration: resnet18's basic blocks)."""
    model = timm.create_model("resnet50", num_classes=5)
    runs = lambda m: [len(s.blocks) for s in m.modules() if isinstance(s, ReversibleSequence)]  # noqa: E731
    rev = reverso.reversible(model, (3, 64, 64), post_act="move")
    half = reverso.reversible(model, (3, 64, 64), post_act="move", mid="half")
    assert runs(rev) == runs(half) and len(runs(rev)) == 4
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(half) < count(rev) < count(model)
    for net in (rev, half):
        net(torch.rand(2, 3, 64, 64)).sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("upsample", ["bilinear", "blur"])
@pytest.mark.parametrize("pyramid", ["gaussian_reflect", "binomial", "cascade"])
def test_gradients_stay_inside_the_receptive_field_for_every_other_combination(
    upsample, pyramid, golden
):
    """Receptive fields: the combinations integration does not run (it runs every pyramid with
    nearest upsampling and every upsampling with the Gaussian pyramid)."""
    size = (3, 160, 160)
    td = reverso.topdown(golden.ResNet32(), input_size=size, upsample=upsample, pyramid=pyramid)
    support, rf = check_erf_within_receptive_field(td, size, node="blocks_5_merge")
    assert rf / 2 < max(support) <= rf < 160


def test_top_down_lenet_learns_mnist(mnist, converted):
    """Training: three epochs of the top-down LeNetFC on MNIST-5k (the demo test trains two)."""
    torch.manual_seed(0)
    td = converted("LeNetFC", (1, 28, 28))[1]
    result = train(td, mnist, epochs=3, progress=False)
    assert result.runs[0].test_accuracy > 0.6


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(bottom_up_cnns())
def test_many_random_bottom_up_cnns_convert_with_all_properties(spec):
    """Properties: thirty drawn nets (integration draws ten), about 2 minutes."""
    check_topdown(spec.build(), spec.input_size)
