"""A top-down net of each of timm's tiny test models: it converts, trains, and goes back into
timm's toolchain (create_model by name, features_only backbones, layer-decay groups).
tests/models runs the same checks on real architectures."""

import timm
import torch
from timm.optim import create_optimizer_v2

import reverso.timm  # noqa: F401  (registers the topdown_* names)
from reverso.support import check_timm_model

SIZE = (3, 32, 32)


def test_converts_and_one_step_lowers_the_loss(timm_test_model):
    result = check_timm_model(timm_test_model, input_size=(3, 64, 64))
    assert result.status == "ok", result.message
    assert result.finite and result.loss_after < result.loss_before


def test_is_a_timm_model_by_name_and_a_features_only_backbone(timm_test_model):
    td = timm.create_model(f"topdown_{timm_test_model}", num_classes=5, input_size=SIZE).eval()
    with torch.no_grad():
        assert td(torch.rand(2, *SIZE)).shape == (2, 5)
    backbone = timm.create_model(
        f"topdown_{timm_test_model}", features_only=True, input_size=SIZE
    ).eval()
    with torch.no_grad():
        out = backbone(torch.rand(1, *SIZE))
    assert [t.shape[1] for t in out] == backbone.feature_info.channels()
    assert [SIZE[1] // t.shape[-1] for t in out] == backbone.feature_info.reduction()


def test_layer_decay_puts_the_classifier_in_the_top_group(timm_test_model):
    td = timm.create_model(f"topdown_{timm_test_model}", num_classes=5, input_size=SIZE)
    optimizer = create_optimizer_v2(td, "adamw", lr=1e-3, layer_decay=0.75)
    classifier = td.get_parameter(td.pretrained_cfg["classifier"] + ".weight")
    group = next(g for g in optimizer.param_groups if any(p is classifier for p in g["params"]))
    assert group["lr_scale"] == max(g["lr_scale"] for g in optimizer.param_groups) == 1.0
