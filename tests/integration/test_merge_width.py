"""merge_width="inner": merges of bottleneck nets fuse at the bottleneck width."""

import timm
import torch

import reverso


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_inner_merge_width_shrinks_bottleneck_merges_and_keeps_basic_block_nets(golden):
    with torch.device("meta"):  # the structure alone: no time spent drawing 100M weights
        bu = timm.create_model("resnet50", num_classes=10)
    unit = reverso.topdown(bu, input_size=(3, 64, 64))
    inner = reverso.topdown(bu, input_size=(3, 64, 64), merge_width="inner")
    # the widest fuse conv: 4096 -> 2048 by 3x3 (75.5M) against 4096 -> 512 by 3x3 + 512 -> 2048
    assert _count(unit) - _count(inner) > 70e6
    assert inner.recipe["options"]["merge_width"] == "inner"
    fuses = [m.fuse for m in inner.modules() if isinstance(m, reverso.nn.Merge)]
    assert all(len(f) == 2 for f in fuses)  # the 3x3 fuse block, then the 1x1 block back
    inner = reverso.nn.init_non_persistent_buffers(inner.to_empty(device="cpu"))
    assert inner(torch.rand(2, 3, 64, 64)).shape == (2, 10)
    # basic blocks have no narrower inner width: the paper's nets are unchanged
    golden = golden.ResNet32()
    same = [
        reverso.topdown(golden, input_size=(3, 32, 32), merge_width=w) for w in ("unit", "inner")
    ]
    assert _count(same[0]) == _count(same[1])
