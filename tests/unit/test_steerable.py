"""Steering matrices and dynamic steerable convs (docs/methods/structured.md, sections 3, 4, 8)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from reverso.nn import DynamicSteerableConv2d, steering_matrix
from reverso.nn.gaussian import gaussian_derivatives_1d
from reverso.nn.steerable import gradient_pose
from reverso.nn.steering import trig_monomials


def analytic_block(n: int, x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """(n + 1, ...): G_{x^(n-b) y^b} at the points (x, y), the continuous Gaussian's derivatives."""
    gx = gaussian_derivatives_1d(sigma, n, x, normalize=False)
    gy = gaussian_derivatives_1d(sigma, n, y, normalize=False)
    return torch.stack([gx[n - b] * gy[b] for b in range(n + 1)])


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("theta", [0.3, -1.1, 2.5, math.pi / 2])
def test_steering_turns_the_sampled_block_exactly(n, theta):
    """The filters turned counter-clockwise as displayed (x right, y down) by theta, sampled on a
    13 x 13 grid, equal R_n(theta) times the sampled block."""
    r = torch.arange(-6.0, 7.0, dtype=torch.float64)
    y, x = torch.meshgrid(r, r, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    turned = analytic_block(n, x * c - y * s, x * s + y * c, 1.2)  # f(Q^-1 p)
    block = analytic_block(n, x, y, 1.2)
    steered = torch.einsum(
        "ab,bij->aij", steering_matrix(n, torch.tensor(theta, dtype=torch.float64)), block
    )
    assert torch.allclose(steered, turned, atol=1e-12)


def test_a_quarter_turn_takes_x_to_minus_y():
    assert torch.allclose(
        steering_matrix(1, math.pi / 2), torch.tensor([[0.0, -1.0], [1.0, 0.0]]), atol=1e-7
    )


@pytest.mark.parametrize("n", range(5))
def test_group_law_identity_and_half_turn(n):
    a, b = torch.tensor(0.7, dtype=torch.float64), torch.tensor(-2.1, dtype=torch.float64)
    eye = torch.eye(n + 1, dtype=torch.float64)
    assert torch.allclose(
        steering_matrix(n, a) @ steering_matrix(n, b), steering_matrix(n, a + b), atol=1e-12
    )
    assert torch.allclose(steering_matrix(n, 0.0).double(), eye)
    assert torch.allclose(
        steering_matrix(n, torch.tensor(2 * math.pi, dtype=torch.float64)), eye, atol=1e-12
    )
    assert torch.allclose(
        steering_matrix(n, torch.tensor(math.pi, dtype=torch.float64)), (-1) ** n * eye, atol=1e-12
    )


def test_the_explicit_matrices_of_the_spec():
    t = torch.tensor(0.4, dtype=torch.float64)
    c, s = math.cos(0.4), math.sin(0.4)
    r2 = [[c * c, -2 * c * s, s * s], [c * s, c * c - s * s, -c * s], [s * s, 2 * c * s, c * c]]
    r3 = [
        [c**3, -3 * c * c * s, 3 * c * s * s, -(s**3)],
        [c * c * s, c**3 - 2 * c * s * s, s**3 - 2 * c * c * s, c * s * s],
        [c * s * s, 2 * c * c * s - s**3, c**3 - 2 * c * s * s, -c * c * s],
        [s**3, 3 * c * s * s, 3 * c * c * s, c**3],
    ]
    assert torch.allclose(steering_matrix(2, t), torch.tensor(r2, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(steering_matrix(3, t), torch.tensor(r3, dtype=torch.float64), atol=1e-14)
    batch = steering_matrix(2, torch.zeros(4, 5))
    assert batch.shape == (4, 5, 3, 3)


@pytest.mark.parametrize("mode", ["angle", "free"])
@pytest.mark.parametrize("pose", ["per_in", "shared"])
def test_a_new_layer_is_the_static_frame_conv(mode, pose):
    torch.manual_seed(0)
    layer = DynamicSteerableConv2d(3, 5, order=2, pose=pose, mode=mode, stride=2)
    x = torch.randn(2, 3, 12, 12)
    expected = F.conv2d(x, layer.effective_weight(), layer.mix.bias, 2, layer.padding)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_a_kernel_in_the_frames_span_converts_exactly():
    torch.manual_seed(0)
    layer = DynamicSteerableConv2d(4, 6, order=2, sigma=0.8, kernel_size=3)
    coeff = torch.randn(6, 4, layer.atoms.shape[0])
    kernel = torch.einsum("ocm,myx->ocyx", coeff, layer.atoms)
    bias = torch.randn(6)
    assert layer.load_kernels(kernel, bias) < 1e-6
    x = torch.randn(2, 4, 10, 10)
    assert torch.allclose(layer(x), F.conv2d(x, kernel, bias, padding=1), atol=1e-5)


def rot(t):
    return torch.rot90(t, 1, (-2, -1))


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("pose", ["per_in", "shared"])
def test_a_quarter_turn_commutes_with_steering(order, pose):
    """y(rot90 x; rot90 theta + pi/2) = rot90 y(x; theta), for any supplied pose field."""
    torch.manual_seed(0)
    layer = DynamicSteerableConv2d(3, 4, order=order, pose=pose).double()
    groups = 3 if pose == "per_in" else 1
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64)
    theta = (torch.rand(2, groups, 11, 11, dtype=torch.float64) - 0.5) * 2 * math.pi
    turned = layer(rot(x), pose=rot(theta) + math.pi / 2)
    assert torch.allclose(turned, rot(layer(x, pose=theta)), atol=1e-12)


def test_the_oracle_pose_turns_with_the_image_and_makes_responses_invariant():
    torch.manual_seed(0)
    layer = DynamicSteerableConv2d(2, 3, order=2).double()
    x = torch.randn(1, 2, 13, 13, dtype=torch.float64)
    z, zr = layer.frame_responses(x), layer.frame_responses(rot(x))
    theta, theta_r = gradient_pose(z), gradient_pose(zr)
    wrapped = torch.remainder(theta_r - rot(theta) - math.pi / 2 + math.pi, 2 * math.pi) - math.pi
    assert wrapped.abs().max() < 1e-9
    steered = layer.steer(z, layer.gates(theta))
    steered_r = layer.steer(zr, layer.gates(theta_r))
    assert torch.allclose(steered_r, rot(steered), atol=1e-12)  # rot90-invariant responses
    magnitude = torch.sqrt(z[:, :, 1] ** 2 + z[:, :, 2] ** 2)
    assert torch.allclose(steered[:, :, 1], magnitude, atol=1e-12)  # (|grad|, 0)
    assert steered[:, :, 2].abs().max() < 1e-12


def test_angle_mode_equals_free_mode_fed_with_the_trig_monomials():
    torch.manual_seed(0)
    angle = DynamicSteerableConv2d(3, 4, order=3, mode="angle").double()
    free = DynamicSteerableConv2d(3, 4, order=3, mode="free").double()
    free.mix.load_state_dict(angle.mix.state_dict())
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    theta = torch.randn(2, 3, 9, 9, dtype=torch.float64) * 2
    gates = torch.cat([trig_monomials(n, theta) for n in (1, 2, 3)], dim=-1).movedim(-1, 2)
    assert torch.allclose(angle(x, pose=theta), free(x, pose=gates), atol=1e-12)


@pytest.mark.parametrize("mode", ["angle", "free"])
def test_gradcheck_through_the_pose_net_and_the_steering(mode):
    torch.manual_seed(0)
    layer = DynamicSteerableConv2d(2, 2, order=2, hidden=4, mode=mode).double()
    torch.nn.init.normal_(layer.pose_net[-1].weight, std=0.5)  # a pose net that is not zero
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_finite_at_the_ends_of_the_angle_range():
    layer = DynamicSteerableConv2d(2, 2, order=3).double()
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    for theta in (math.pi, -math.pi):
        pose = torch.full((1, 2, 6, 6), theta, dtype=torch.float64, requires_grad=True)
        y = layer(x, pose=pose)
        y.sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(pose.grad).all()


def test_the_pose_net_learns_and_bad_settings_are_refused():
    torch.manual_seed(0)
    layer = DynamicSteerableConv2d(2, 2, order=1, min_order=1)  # the blob experiment's pair
    assert layer.atoms.shape[0] == 2
    layer(torch.randn(1, 2, 8, 8)).square().sum().backward()
    assert layer.pose_net[-1].weight.grad.abs().sum() > 0  # zero init, yet a gradient
    with pytest.raises(ValueError, match="pose must be"):
        DynamicSteerableConv2d(2, 2, pose="per_out")
    with pytest.raises(ValueError, match="odd size"):
        DynamicSteerableConv2d(2, 2, kernel_size=4)


def test_other_angles_commute_approximately_on_smooth_images():
    """A smoke test (docs/methods/structured.md, section 8, item 6): a pre-blurred image turned
    by 30 degrees (bilinear), with the pose turned by the same angle, gives the turned output in
    the interior, to a small relative error (sampling breaks exactness)."""
    from torchvision.transforms.functional import InterpolationMode, rotate

    torch.manual_seed(0)
    layer = DynamicSteerableConv2d(2, 3, order=2, sigma=1.5).double()
    blur = torch.exp(-(torch.arange(-6.0, 7.0) ** 2) / (2 * 2.0**2)).double()
    blur = (blur[:, None] * blur[None, :] / blur.sum() ** 2).expand(2, 1, 13, 13)
    x = F.conv2d(torch.randn(1, 2, 60, 60, dtype=torch.float64), blur, padding=6, groups=2)
    theta = torch.full((1, 2, 60, 60), 0.4, dtype=torch.float64)
    alpha = 30.0

    def turn(t):
        return rotate(t, alpha, interpolation=InterpolationMode.BILINEAR)

    turned = layer(turn(x), pose=theta + math.radians(alpha))
    expected = turn(layer(x, pose=theta))
    inner = (slice(None), slice(None), slice(22, 38), slice(22, 38))
    error = (turned[inner] - expected[inner]).norm() / expected[inner].norm()
    assert error < 0.05
    unsteered = (layer(turn(x), pose=theta)[inner] - expected[inner]).norm() / expected[
        inner
    ].norm()
    assert unsteered > 5 * error  # without turning the pose it is far off


def reference_steering(z, theta, min_order, order):
    """R_n(theta) z_n per pixel with autograd's own gradients: an einsum over steering_matrix."""
    sizes = [n + 1 for n in range(min_order, order + 1)]
    rows = []
    for n, zn in zip(range(min_order, order + 1), z.split(sizes, dim=2), strict=True):
        r = steering_matrix(n, theta).expand(-1, zn.shape[1], -1, -1, -1, -1)  # (B, C, H, W, ., .)
        rows.append(torch.einsum("nchwij,ncjhw->ncihw", r, zn))
    return torch.cat(rows, dim=2)


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("min_order", [0, 1])
def test_the_steering_functions_and_their_backward_match_autograd(groups, min_order):
    """rotate_responses (the group-law backward) and steer_responses (gates) against an einsum of
    the steering matrices: values, and the gradients of z and of theta or the gates."""
    from reverso.nn.steering import rotate_responses, steer_responses, steering_terms

    torch.manual_seed(0)
    order = 3
    m = (order + 1) * (order + 2) // 2 - min_order * (min_order + 1) // 2
    z = torch.randn(2, 3, m, 2, 1, dtype=torch.float64, requires_grad=True)
    theta = (4 * torch.rand(2, groups, 2, 1, dtype=torch.float64) - 2).requires_grad_()
    plan = steering_terms(min_order, order)
    weights = torch.randn_like(z)
    expected = reference_steering(z, theta, min_order, order)
    want = torch.autograd.grad((expected * weights).sum(), (z, theta))
    got = rotate_responses(z, theta, plan)
    assert torch.allclose(got, expected, atol=1e-12)
    for a, b in zip(torch.autograd.grad((got * weights).sum(), (z, theta)), want, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    gates = [trig_monomials(n, theta).movedim(-1, 2) for n in range(max(1, min_order), order + 1)]
    got = steer_responses(z, gates, plan)
    assert torch.allclose(got, expected, atol=1e-12)
    assert torch.allclose(torch.autograd.grad((got * weights).sum(), z)[0], want[0], atol=1e-10)
    assert torch.autograd.gradcheck(lambda z, *g: steer_responses(z, list(g), plan), (z, *gates))
    assert torch.autograd.gradcheck(lambda z, t: rotate_responses(z, t, plan), (z, theta))


@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_conv_is_a_1x1_conv(bias):
    from reverso.nn.pointwise import pointwise_conv

    torch.manual_seed(0)
    x = torch.randn(3, 12, 5, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 12, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    assert torch.allclose(pointwise_conv(x, w, b), F.conv2d(x, w, b), atol=1e-12)
    assert torch.autograd.gradcheck(pointwise_conv, (x, w, b))
    channels_last = x.detach().to(memory_format=torch.channels_last)
    assert torch.allclose(pointwise_conv(channels_last, w, b), F.conv2d(x, w, b), atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_the_folded_pose_net_equals_the_pose_net_on_the_responses(stride):
    """The first pose layer runs as one conv of x with the folded kernel: the same pose as the
    1x1 conv on the frame responses it stands for."""
    torch.manual_seed(0)
    layer = DynamicSteerableConv2d(3, 4, order=2, stride=stride).double()
    for p in layer.pose_net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    z = layer.frame_responses(x).flatten(1, 2)
    expected = math.pi * torch.tanh(layer.pose_net(z))
    assert torch.allclose(layer.estimate_pose(x), expected, atol=1e-12)


def test_the_steering_reads_the_same_when_compiling(monkeypatch):
    """The branch torch.compile takes (an assignment instead of ``out=``) gives the same values."""
    from reverso.nn.steering import rotate_responses, steering_terms

    torch.manual_seed(0)
    z, theta = torch.randn(2, 3, 6, 4, 4), torch.randn(2, 3, 4, 4)
    eager = rotate_responses(z, theta, steering_terms(0, 2))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.equal(rotate_responses(z, theta, steering_terms(0, 2)), eager)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("mode", ["angle", "free"])
def test_the_steerable_conv_on_cuda_matches_the_cpu_without_host_sync(mode, no_host_sync):
    """The same values and gradients on the GPU as on the CPU, and a train step that never
    waits for the device (the steering's Functions read no value on the host)."""
    torch.manual_seed(0)
    layer = DynamicSteerableConv2d(4, 6, order=2, mode=mode)
    torch.nn.init.normal_(layer.pose_net[-1].weight, std=0.3)
    x = torch.rand(2, 4, 12, 12, requires_grad=True)
    layer(x).square().sum().backward()
    gpu, xg = copy.deepcopy(layer).cuda(), x.detach().cuda().requires_grad_()
    gpu.zero_grad()
    with no_host_sync():
        y = gpu(xg)
        y.square().sum().backward()
    assert torch.allclose(y.cpu(), layer(x), atol=1e-4)
    assert torch.allclose(xg.grad.cpu(), x.grad, atol=1e-3)
    for p, q in zip(gpu.parameters(), layer.parameters(), strict=True):
        assert torch.allclose(p.grad.cpu(), q.grad, atol=1e-3, rtol=1e-3)
