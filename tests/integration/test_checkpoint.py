"""Activation checkpointing (the ``checkpoint`` pass) and bytes saved for backward."""

import copy

import pytest
import timm
import torch
from reverso.passes.checkpoint import _Costs, _greedy, plan_segments
from torch import nn

import reverso
from reverso.rewrite.extract import replace_run


def test_saved_bytes_counts_what_autograd_keeps_once_and_no_parameters():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    x = torch.rand(2, 3, 16, 16)
    # the conv keeps its input (its weight is the model's own), the ReLU its output
    assert reverso.saved_bytes(model, x) == 2 * 3 * 16 * 16 * 4 + 2 * 8 * 14 * 14 * 4
    # a tensor saved by two layers is one allocation
    twice = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 3, 1))
    assert reverso.saved_bytes(twice, x) == 2 * 3 * 16 * 16 * 4


def test_saved_bytes_leaves_mode_and_running_stats_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    before = copy.deepcopy(model.state_dict())
    reverso.saved_bytes(model, torch.rand(2, 3, 8, 8))
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def resnet_td():
    torch.manual_seed(0)
    bu = timm.create_model("resnet18", num_classes=10)
    return bu, reverso.topdown(bu, input_size=(3, 64, 64))


def _step(model, x, seed=0):
    torch.manual_seed(seed)
    model.train()
    model.zero_grad()
    y = model(x)
    y.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return y.detach(), grads, {k: b.clone() for k, b in model.named_buffers()}


def test_checkpointed_topdown_net_equals_the_plain_one(resnet_td):
    """Same outputs, same gradients of every parameter, BatchNorm statistics updated once, the
    same state_dict keys, the segments in the code, and less saved for backward than the
    bottom-up net."""
    bu, td = resnet_td
    ck = reverso.checkpoint(td)
    assert isinstance(ck, reverso.TopDownNet) and "self.segment_0(" in ck.features.code
    assert list(ck.state_dict()) == list(td.state_dict())
    x = torch.rand(4, 3, 64, 64)
    plain, checked = _step(copy.deepcopy(td), x), _step(ck, x)
    assert torch.allclose(plain[0], checked[0], atol=1e-6)
    for k, g in plain[1].items():
        assert torch.allclose(g, checked[1][k], rtol=1e-5, atol=1e-6), k
    for k, b in plain[2].items():
        assert torch.equal(b, checked[2][k]), k  # running stats (and counters) updated once
    saved = {m: reverso.saved_bytes(net, x) for m, net in (("bu", bu), ("td", td), ("ck", ck))}
    assert saved["td"] > 3 * saved["bu"] and saved["ck"] <= saved["bu"]


def test_dropout_masks_are_replayed_and_eval_and_no_grad_run_plainly():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Dropout2d(0.3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    ck = reverso.checkpoint(model, (3, 16, 16))
    assert isinstance(ck, torch.fx.GraphModule) and list(ck.state_dict()) == list(
        model.state_dict()
    )
    assert any(isinstance(m, reverso.nn.CheckpointSegment) for m in ck.modules())
    x = torch.rand(4, 3, 16, 16)
    plain, checked = _step(model, x, seed=3), _step(ck, x, seed=3)
    assert torch.equal(plain[0], checked[0])
    assert all(torch.allclose(g, checked[1][k]) for k, g in plain[1].items())
    ck.eval()
    with torch.no_grad():
        assert torch.allclose(ck(x), model.eval()(x))


def test_budget_trades_recompute_for_memory(golden):
    model = golden.LeNetFC()
    tight = plan_segments(reverso.trace(model, (1, 28, 28)))
    assert all(tight.checkpointed)
    gm = reverso.trace(model, (1, 28, 28))
    within = plan_segments(gm, budget=tight.peak * 1.6)
    assert within.peak <= tight.peak * 1.6 and within.recompute < tight.recompute
    everything = plan_segments(gm, budget=sum(tight.internal) * 2)
    assert not any(everything.checkpointed)  # the whole forward fits: nothing is recomputed
    plain = reverso.checkpoint(model, (1, 28, 28), budget=sum(tight.internal) * 2)
    assert not any(isinstance(m, reverso.nn.CheckpointSegment) for m in plain.modules())
    with pytest.raises(reverso.OptionError, match="budget"):
        reverso.checkpoint(model, (64, 1, 28, 28), budget=tight.peak)  # per batch of 64: too small


def test_in_place_ops_are_never_cut_from_the_value_they_change():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.keep = nn.Identity()  # hands its input back: mul_ changes a's output

        def forward(self, x):
            y = self.keep(self.a(x))
            y.mul_(2.0)
            y = torch.relu_(self.b(y))
            return y.mean((2, 3))

    model = InPlace()
    x = torch.rand(2, 3, 12, 12)
    gm = reverso.trace(model, (3, 12, 12))
    nodes = [n for n in gm.graph.nodes if n.op.startswith("call")]
    segments = _greedy(_Costs(gm, nodes), 0.0)  # a cut wherever one is allowed
    starts = {nodes[s].name for s, _ in segments}
    # never right before an in-place op, nor between it and what it changes through an alias
    assert not starts & {"keep", "mul_", "relu_"}
    for i, (s, e) in enumerate(segments):
        replace_run(gm, nodes[s:e], f"segment_{i}", reverso.nn.CheckpointSegment)
    gm.recompile()
    _, grads, _ = _step(gm, x)
    _, ref, _ = _step(model, x)
    assert all(torch.allclose(g, grads[k]) for k, g in ref.items())


@pytest.mark.parametrize("variant", ["channels_last", "autocast", "compile"])
def test_checkpointing_works_with_channels_last_autocast_and_compile(variant, converted):
    torch.manual_seed(0)
    td = converted("LeNetFC", (1, 28, 28))[1]
    ck = reverso.checkpoint(td)
    x = torch.rand(4, 1, 28, 28)
    if variant == "channels_last":
        ck, x = ck.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        ref = _step(copy.deepcopy(td), x)
        out = _step(ck, x)
        # float tolerance: a conv bias before BatchNorm has a zero gradient up to rounding
        assert all(torch.allclose(g, out[1][k], rtol=1e-4, atol=1e-4) for k, g in ref[1].items())
    elif variant == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = _step(ck, x)
        assert all(torch.isfinite(g).all() for g in out[1].values())
    else:
        compiled = torch.compile(ck, backend="aot_eager")
        ref = _step(copy.deepcopy(td), x)
        out = _step(compiled, x)
        assert torch.allclose(ref[0], out[0], atol=1e-5)


def test_checkpointing_under_distributed_data_parallel(tmp_path, converted):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        td = converted("LeNetFC", (1, 28, 28))[1]
        ck = reverso.checkpoint(td)
        ddp = nn.parallel.DistributedDataParallel(ck)
        x = torch.rand(4, 1, 28, 28)
        ref = _step(copy.deepcopy(td), x)
        ddp(x).square().sum().backward()
        assert all(torch.allclose(p.grad, ref[1][k], atol=1e-6) for k, p in ck.named_parameters())
    finally:
        dist.destroy_process_group()


def test_topdown_memory_option_and_save_load(tmp_path, golden):
    td = reverso.topdown(
        reverso.models.create("lenet_fc"), input_size=(1, 28, 28), memory="checkpoint"
    )
    assert "segment_0" in td.features.code
    path = reverso.save(td, tmp_path / "td.safetensors")
    again = reverso.load(path)
    assert "segment_0" in again.features.code
    with pytest.raises(reverso.OptionError, match="memory"):
        reverso.topdown(golden.LeNetFC(), input_size=(1, 28, 28), memory="swap")


def test_summary_shows_saved_bytes_per_stage_and_as_checkpointed():
    td = reverso.topdown(reverso.models.create("lenet_fc"), input_size=(1, 28, 28))
    plain = reverso.summary(td)
    image = torch.rand(2, 1, 28, 28)
    assert "saved MB" in str(plain)
    # stages and head are measured apart: a map both keep counts in each
    assert plain.saved_bytes == pytest.approx(reverso.saved_bytes(td, image) / 2, rel=0.1)
    checked = reverso.summary(reverso.checkpoint(td))
    assert checked.params == plain.params and [r.name for r in checked.rows] == [
        r.name for r in plain.rows
    ]
    assert checked.saved_as_run < plain.saved_bytes / 3 and "checkpointed:" in str(checked)


def test_njet_memory_option(converted):
    td = converted("LeNetFC", (1, 28, 28))[1]
    njet = reverso.njet(td, memory="checkpoint")
    assert isinstance(njet, reverso.TopDownNet) and "segment_0" in njet.features.code
    assert any(isinstance(m, reverso.nn.NJetConv2d) for m in njet.modules())
    x = torch.rand(2, 1, 28, 28)
    njet(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in njet.parameters() if p.grad is not None)
