"""Per-stage summaries: parameters, FLOPs against the conv formula, activation memory."""

import pytest
import torch
from torch import nn

import reverso
from reverso.study.summary import side_by_side


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 5, padding=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(x, 2)
        x = torch.relu(self.conv2(x))
        x = nn.functional.max_pool2d(x, 2)
        return self.fc(x.mean((2, 3)))


def conv_flops(c_in, c_out, k, h, w):
    return 2 * c_in * c_out * k * k * h * w  # a multiply-add counts 2


def test_flops_of_known_convs_match_the_formula():
    s = reverso.summary(TwoConvs(), (3, 32, 32))
    assert [r.name for r in s.rows] == ["G1", "T1", "G2", "T2", "head"]
    assert s["G1"].flops == conv_flops(3, 8, 3, 32, 32)
    assert s["G2"].flops == conv_flops(8, 16, 5, 16, 16)
    assert s["head"].flops == 2 * 16 * 10
    assert s.flops == conv_flops(3, 8, 3, 32, 32) + conv_flops(8, 16, 5, 16, 16) + 320
    assert s["G1"].params == 3 * 8 * 9 + 8 and s.params == sum(
        p.numel() for p in TwoConvs().parameters()
    )


def test_activation_memory_counts_every_tensor_a_stage_creates():
    s = reverso.summary(TwoConvs(), (3, 32, 32))
    # conv output and relu output, float32, one image
    assert s["G1"].activation_bytes == 2 * 8 * 32 * 32 * 4
    assert s["T1"].activation_bytes >= 8 * 16 * 16 * 4  # the pooled map (plus its indices)


def test_top_down_summary_accounts_for_everything_it_runs(golden):
    model = golden.LeNetFC()
    td = reverso.topdown(model, input_size=(1, 28, 28))
    s = reverso.summary(td)
    assert s.params == sum(p.numel() for p in td.parameters()) == 14452
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        td.eval()(torch.rand(1, 1, 28, 28))
    assert s.flops == counter.get_total_flops()
    # the top-down net does its widest work last, at full resolution: more FLOPs and memory
    bu = reverso.summary(model, (1, 28, 28))
    assert s.flops > bu.flops and s.activation_bytes > bu.activation_bytes
    assert s.rows[0].name == "pyramid" and s["pyramid"].flops > 0  # the blur is a conv
    text = side_by_side(bu, s)
    assert "FLOPs" in text and "act. MB" in text and "top-down" in text


def test_summary_of_a_timm_model_by_name():
    s = reverso.summary("resnet18", (3, 64, 64))
    import timm

    model = timm.create_model("resnet18")
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        model.eval()(torch.rand(1, 3, 64, 64))
    assert s.flops == counter.get_total_flops()
    assert [r.level for r in s.rows[:2]] == [1, 2]


def test_summary_leaves_the_model_in_training_mode():
    model = TwoConvs().train()
    reverso.summary(model, (3, 16, 16))
    assert model.training


def test_summary_needs_an_input_size():
    with pytest.raises(reverso.OptionError, match="input_size"):
        reverso.summary(TwoConvs())
