"""A converted network is a timm model: timm's own model checks (those of ``test_models.py`` in
timm's repository, restated) on the top-down nets of one model per family, built by name
through timm's registry (``import reverso.timm``). TorchScript is not checked (timm itself moves
to torch.export)."""

import copy
import warnings

import pytest
import timm
import torch
import torchvision
from timm.data import resolve_data_config
from timm.models._features import FeatureInfo
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torchvision.models.feature_extraction import create_feature_extractor

import reverso
import reverso.timm
from reverso.support import SWEEP

SIZE = (3, 32, 32)
#: one model per family: timm's resnet, efficientnet, convnext, mobilenetv3, regnet, densenet,
#: ghostnet and repvgg (plus torchvision's resnet18, converted directly)
FAMILIES = [
    "resnet18",
    "efficientnet_b0",
    "convnext_atto",
    "mobilenetv3_small_100",
    "regnetx_002",
    "densenet121",
    "ghostnet_100",
    "repvgg_a0",
]


#: the warnings each family's conversion and first forward gave
WARNINGS: dict[str, list[str]] = {}


@pytest.fixture(scope="module", params=[*FAMILIES, "torchvision_resnet18"])
def net(request):
    """(name, top-down net with 42 classes) per family."""
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if request.param == "torchvision_resnet18":
            td = reverso.topdown(torchvision.models.resnet18(num_classes=42), input_size=SIZE)
        else:
            td = timm.create_model(f"topdown_{request.param}", num_classes=42, input_size=SIZE)
        with torch.no_grad():
            td.eval()(torch.randn(1, *SIZE))
    WARNINGS[request.param] = [str(w.message) for w in caught]
    return request.param, td.eval()


def test_conversion_and_forward_warn_nothing(net):
    """No layer adapted with a warning, no even kernel padded by torch at every forward."""
    name, _ = net
    assert WARNINGS[name] == [], f"{name}: {WARNINGS[name]}"


def test_forward_and_backward_reach_every_parameter(net):
    check_backward(*net)


def check_backward(name, td):
    td = copy.deepcopy(td).train()
    out = td(torch.randn(2, *SIZE))
    out.mean().backward()
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    missing = [n for n, p in td.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
    assert not missing, f"{name}: no finite gradient for {missing[:3]}"


def test_default_cfg_is_true_of_the_network(net):
    check_cfg(*net)


def check_cfg(name, td):
    td = copy.deepcopy(td).eval()
    cfg, state, x = td.pretrained_cfg, td.state_dict(), torch.randn(1, *SIZE)
    assert cfg["architecture"] == f"topdown_{name.removeprefix('torchvision_')}"
    assert cfg["input_size"] == SIZE
    assert "url" not in cfg and "hf_hub_id" not in cfg
    assert all(c + ".weight" in state for c in cfg["first_conv"]) and cfg["first_conv"]
    assert cfg["classifier"] + ".weight" in state
    with torch.no_grad():
        assert td.forward_features(x).shape[-2:] == cfg["pool_size"]
        assert td.forward_features(x).shape[1] == td.num_features
        assert (
            td.forward_head(td.forward_features(x), pre_logits=True).shape[-1]
            == td.head_hidden_size
        )
        td.reset_classifier(0)
        assert td(x).shape == (1, td.head_hidden_size)
        td.reset_classifier(0, "")
        assert td(x).shape[-2:] == cfg["pool_size"] and td(x).dim() == 4
        td.reset_classifier(7)
        assert td(x).shape == (1, 7)
    assert {"mean", "std", "interpolation", "crop_pct"} <= set(resolve_data_config({}, model=td))


def test_feature_info_and_intermediates(net):
    check_features(*net)


def check_features(name, td):
    info = FeatureInfo(copy.deepcopy(td.feature_info), list(range(len(td.feature_info))))
    with torch.no_grad():
        final, intermediates = td.forward_intermediates(torch.randn(1, *SIZE))
    assert len(intermediates) == len(td.feature_info) >= 4
    for entry, t in zip(td.feature_info, intermediates, strict=True):
        assert t.shape[1] == entry["num_chs"] and SIZE[1] // t.shape[-2] == entry["reduction"]
    assert info.reduction() == sorted(info.reduction())  # finest first
    assert torch.equal(final, intermediates[0])  # the finest stage is the last computed
    assert len({e["module"] for e in td.feature_info}) == len(td.feature_info)
    last_two = td.forward_intermediates(torch.randn(1, *SIZE), indices=2, intermediates_only=True)
    assert [t.shape[1] for t in last_two] == info.channels()[-2:]


def test_fx_traces_give_the_same_outputs_and_gradients(net):
    check_fx(*net)


def check_fx(name, td, plain: bool = True):
    """torch.fx's plain tracer (when the bottom-up model's own modules trace with it) and timm's
    (which keeps timm's notrace modules whole) give the same outputs and gradients."""
    x = torch.randn(2, *SIZE)
    traced = torch.fx.symbolic_trace(td) if plain else timm_fx(td, ["head"])
    with torch.no_grad():
        out = traced(x) if plain else traced(x)["head"]
        assert torch.equal(out, td(x))
    modules = [f["module"] for f in td.feature_info]
    extractor = timm_fx(td, modules) if not plain else create_feature_extractor(td, modules)
    with torch.no_grad():
        taken = extractor(x)
        expected = td.forward_intermediates(x, intermediates_only=True)
    assert all(torch.equal(taken[m], t) for m, t in zip(modules, expected, strict=True))
    train = copy.deepcopy(traced).train()
    out = train(x) if plain else train(x)["head"]
    out.mean().backward()
    assert all(p.grad is not None for p in train.parameters())


def timm_fx(td, nodes):
    from timm.models._features_fx import create_feature_extractor as timms

    return timms(td, {node: node for node in nodes})


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SWEEP if n not in FAMILIES])
def test_timms_checks_over_the_catalogue(name):
    torch.manual_seed(0)
    td = timm.create_model(f"topdown_{name}", num_classes=42, input_size=SIZE).eval()
    for check in (check_backward, check_cfg, check_features):
        check(name, td)
    check_fx(name, td, plain=False)  # some timm modules only trace with timm's tracer (vgg's head)


def test_features_only_backbones(net):
    name, _ = net
    if name.startswith("torchvision"):
        pytest.skip("built by name through timm only")
    for cls in ("getter", "fx"):
        backbone = timm.create_model(
            f"topdown_{name}", features_only=True, feature_cls=cls, input_size=SIZE
        ).eval()
        with torch.no_grad():
            out = backbone(torch.randn(1, *SIZE))
        assert [t.shape[1] for t in out] == backbone.feature_info.channels()
        assert [SIZE[1] // t.shape[-1] for t in out] == backbone.feature_info.reduction()


def test_layer_decay_puts_the_classifier_on_top_and_ema_follows(net):
    _, td = net
    td = copy.deepcopy(td)
    optimizer = create_optimizer_v2(td, "adamw", lr=1e-3, layer_decay=0.75)
    scales = {g["lr_scale"] for g in optimizer.param_groups}
    classifier = td.get_parameter(td.pretrained_cfg["classifier"] + ".weight")
    top = [
        g["lr_scale"] for g in optimizer.param_groups if any(p is classifier for p in g["params"])
    ]
    assert len(scales) > 3 and top == [max(scales)] == [1.0]
    # every feature parameter has a group below the head, the ones functions read included
    # (ConvNeXt's layer-scale gains), with checkpointing on too
    for checkpointed in (False, True):
        td.set_grad_checkpointing(checkpointed)
        group = td.group_matcher(coarse=False)
        head = group("head.fc.weight")
        fell = [
            n for n, _ in td.named_parameters() if not n.startswith("head.") and group(n) == head
        ]
        assert not fell, f"feature parameters in the head's group: {fell[:3]}"
    td.set_grad_checkpointing(False)
    ema = ModelEmaV3(td, decay=0.5)
    with torch.no_grad():
        for p in td.parameters():
            p.add_(1.0)
    ema.update(td)
    ema_classifier = ema.module.get_parameter(td.pretrained_cfg["classifier"] + ".weight")
    assert torch.allclose(ema_classifier, classifier - 0.5)


def test_grad_checkpointing_switches_at_run_time(net):
    _, td = net
    td = copy.deepcopy(td).train()
    x = torch.randn(2, *SIZE)

    def step():
        for p in td.parameters():
            p.grad = None
        torch.manual_seed(0)
        out = td(x)
        out.sum().backward()
        return out, [p.grad.clone() for p in td.parameters()]

    plain, grads = step()
    td.set_grad_checkpointing(True)
    checked, checked_grads = step()
    assert torch.allclose(plain, checked, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, checked_grads, strict=True))
    td.set_grad_checkpointing(False)
    assert torch.allclose(step()[0], plain, atol=1e-6)


def test_pruning_the_finest_stages_drops_the_head_as_timm_does(net):
    """prune_intermediate_layers(prune_head=False) that drops layers also drops the head (sized
    for the last features), as timm's models do; the net then ends at the last tap kept."""
    _, td = net
    td = copy.deepcopy(td)
    taken = td.prune_intermediate_layers([1, 2], prune_head=False)
    with torch.no_grad():
        out = td(torch.randn(1, *SIZE))
    assert out.dim() == 4 and out.shape[1] == td.feature_info[min(taken)]["num_chs"]
    assert td.num_features == td.head_hidden_size == out.shape[1]


@pytest.mark.parametrize("pool", ["max", "avgmax", "catavgmax"])
def test_global_pool_reaches_the_head(pool):
    net = timm.create_model("topdown_resnet18", num_classes=5, global_pool=pool, input_size=SIZE)
    assert net.global_pool == pool
    features = net.eval().forward_features(torch.randn(2, *SIZE))
    pooled = net.forward_head(features, pre_logits=True)
    avg, top = features.mean((2, 3)), features.amax((2, 3))
    expected = {"max": top, "avgmax": (avg + top) / 2, "catavgmax": torch.cat([avg, top], 1)}
    assert torch.allclose(pooled, expected[pool], atol=1e-6)
    assert net.head_hidden_size == pooled.shape[1]
    with pytest.raises(reverso.OptionError, match="cannot be changed"):
        net.reset_classifier(3, "avg" if pool != "avg" else "max")


@pytest.mark.parametrize(
    ("arch", "argument"),
    [("resnet18", {"drop_rate": 0.5}), ("convnext_atto", {"drop_path_rate": 0.5})],
)
def test_timms_regularisation_arguments_drop_in_train_mode_only(arch, argument):
    net = timm.create_model(f"topdown_{arch}", num_classes=5, input_size=SIZE, **argument)
    x = torch.randn(2, *SIZE)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_the_registry_lists_and_builds_top_down_nets():
    names = timm.list_models("topdown_*")
    assert len(names) == len([n for n in timm.list_models() if not n.startswith("topdown_")])
    assert "topdown_resnet50" in names and timm.is_model("topdown_resnet18")
    unpooled = timm.create_model("topdown_resnet18", num_classes=0, global_pool="", input_size=SIZE)
    unpooled.eval()
    assert unpooled(torch.randn(1, *SIZE)).shape[-2:] == unpooled.pretrained_cfg["pool_size"]
    with pytest.raises(reverso.ReversoError, match="already top-down"):
        reverso.topdown(unpooled, input_size=SIZE)


def test_pretrained_weights_come_from_timms_loading(tmp_path):
    """pretrained=True converts timm's pretrained model, loaded by timm itself: a local file
    through pretrained_cfg_overlay, no network."""
    source = timm.create_model("resnet18")
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    overlay = {"file": str(tmp_path / "weights.pth")}
    td = timm.create_model(
        "topdown_resnet18", pretrained=True, input_size=SIZE, pretrained_cfg_overlay=overlay
    )
    # groups keep their widths and so their weights (the stem takes the coarsest group's width)
    assert torch.equal(
        td.get_parameter("features.layer4.1.conv2.weight"), source.layer4[1].conv2.weight
    )
    path = reverso.save(td, tmp_path / "td.safetensors")  # the recipe names resnet18, no file
    assert "weights.pth" not in str(reverso.load(path).recipe)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_torch_export_keeps_height_and_width_dynamic(name):
    from torch.export import Dim, export

    td = timm.create_model(f"topdown_{name}", num_classes=5, input_size=(3, 64, 64)).eval()
    dims = {2: 32 * Dim("h", min=1, max=16), 3: 32 * Dim("w", min=1, max=16)}
    program = export(td, (torch.randn(1, 3, 64, 64),), dynamic_shapes=(dims,))
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        assert torch.allclose(program.module()(x), td(x), atol=1e-5)
