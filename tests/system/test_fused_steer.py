"""The fused frame-conv-and-steering kernels (reverso.nn.fused_steer) against the PyTorch route:
on the CPU through Triton's interpreter (a subprocess, since the interpreter is chosen when the
kernels are defined), on a GPU directly."""

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

from reverso.nn import DynamicSteerableConv2d, fused_steer
from reverso.nn.padding import output_size
from reverso.nn.steering import rotate_responses

pytest.importorskip("triton")

# (order, min_order, frame size, stride, padding, pose): the default layer and a strided
# shared-pose order-1 layer (the interpreter's default run); a strided shared-pose 5x5 frame of
# orders 1..3 and an unpadded order-2 5x5 frame without order 0 (slow in the interpreter)
CASES = [(2, 0, 3, 1, 1, "per_in"), (1, 0, 3, 2, 1, "shared")]
SLOW_CASES = [(3, 1, 5, 2, 2, "shared"), (2, 1, 5, 1, 0, "per_in")]


def compare(case, device, dtype=torch.float32, size=(6, 5), batch=1):
    """max |fused - reference| of the steered maps and of the gradients of x and theta, each
    relative to the largest reference value; the reference is the PyTorch route in float64 on the
    CPU, from the same inputs."""
    order, min_order, k, stride, padding, pose = case
    torch.manual_seed(0)
    layer = DynamicSteerableConv2d(
        2,
        4,
        order=order,
        min_order=min_order,
        kernel_size=k,
        stride=stride,
        padding=padding,
        pose=pose,
    )
    x = torch.randn(batch, 2, *size).to(dtype)
    size_out = [output_size(n, k, stride, padding, padding) for n in size]
    theta = torch.randn(batch, layer.groups, *size_out).to(dtype)
    grad = torch.randn(batch, 2, layer.atoms.shape[0], *size_out).to(dtype)
    exact = [t.double().requires_grad_() for t in (x, theta)]
    ref = rotate_responses(layer.double().frame_responses(exact[0]), exact[1], layer._plan)
    expected = [ref, *torch.autograd.grad(ref, exact, grad.double())]
    fused = [t.to(device).requires_grad_() for t in (x, theta)]
    tables = [t.to(device) for t in fused_steer.tables(layer.atoms, layer._plan)]
    out = fused_steer.frame_steer(*fused, tables, layer.atoms.shape[0], stride, padding)
    got = [out, *torch.autograd.grad(out, fused, grad.to(device))]
    return [
        float((a.detach().cpu().double() - b.detach()).abs().max() / b.detach().abs().max())
        for a, b in zip(got, expected, strict=True)
    ]


@pytest.mark.parametrize(
    "cases", [CASES, pytest.param(SLOW_CASES, marks=pytest.mark.slow)], ids=["fast", "slow"]
)
def test_the_fused_kernels_match_the_pytorch_route_in_triton_interpreter(cases):
    script = textwrap.dedent(f"""
        import os
        os.environ["TRITON_INTERPRET"] = "1"
        import sys
        sys.path.insert(0, {str(__file__.rsplit("/", 1)[0])!r})
        from test_fused_steer import compare
        for case in {cases!r}:
            print(max(compare(case, "cpu")))
    """)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    errors = [float(line) for line in run.stdout.split()]
    assert len(errors) == len(cases) and max(errors) < 1e-5, errors


def test_a_layer_runs_fused_only_when_asked_and_where_the_kernels_apply():
    layer = DynamicSteerableConv2d(3, 4)
    assert not layer.fused  # opt-in
    layer.fused = True
    x = torch.rand(2, 3, 8, 8)
    pose = torch.zeros(2, 3, 8, 8)
    assert not layer._runs_fused(x, pose)  # a CPU tensor
    if torch.cuda.is_available():
        gpu = copy.deepcopy(layer).cuda()
        assert gpu._runs_fused(x.cuda(), pose.cuda())
        assert not gpu._runs_fused(x.cuda(), pose[:1, :1].cuda())  # a broadcast pose
        assert not gpu._runs_fused(x.cuda().double(), pose.cuda().double())
        gpu.fused = False
        assert not gpu._runs_fused(x.cuda(), pose.cuda())
        free = DynamicSteerableConv2d(3, 4, mode="free").cuda()
        free.fused = True
        assert not free._runs_fused(x.cuda(), pose.cuda())


def test_the_kernel_tables_follow_the_frame_a_layer_loads():
    layer = DynamicSteerableConv2d(3, 4, sigma=0.9)
    layer.load_state_dict(DynamicSteerableConv2d(3, 4, sigma=1.0).state_dict())
    expected = fused_steer.tables(DynamicSteerableConv2d(3, 4, sigma=1.0).atoms, layer._plan)
    got = (layer.steer_taps, layer.steer_a, layer.steer_turned, layer.steer_rows)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("case", CASES + SLOW_CASES)
def test_the_fused_kernels_match_the_pytorch_route_on_cuda(case):
    assert max(compare(case, "cuda", size=(37, 29), batch=3)) < 1e-5
    assert max(compare(case, "cuda", torch.bfloat16, size=(16, 16))) < 0.02  # bf16 storage


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_fused_layer_on_cuda_trains_like_the_pytorch_route_without_host_sync(no_host_sync):
    torch.manual_seed(0)
    unfused = DynamicSteerableConv2d(8, 16).cuda()
    torch.nn.init.normal_(unfused.pose_net[-1].weight, std=0.3)
    layer = copy.deepcopy(unfused)
    layer.fused = True
    x = torch.rand(4, 8, 24, 24, device="cuda")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # both in float32
        expected = unfused(x)
        expected.square().mean().backward()
        layer(x).sum().backward()  # compiles the kernels
        layer.zero_grad()
        with no_host_sync():
            y = layer(x)
            y.square().mean().backward()
    assert torch.allclose(y, expected, atol=1e-4)
    for p, q in zip(layer.parameters(), unfused.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-3)
