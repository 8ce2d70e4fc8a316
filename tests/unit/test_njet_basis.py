"""The Gaussian-derivative basis: every property of docs/methods/njet.md, section 7."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from reverso.nn.gaussian import (
    basis_indices,
    basis_size,
    gaussian_basis_2d,
    gaussian_derivatives_1d,
    grid,
    hermite,
    radius_for,
)
from reverso.nn.njet import NJetConv2d

sigmas = st.floats(0.5, 4.0)
orders = st.integers(0, 4)
SETTINGS = settings(max_examples=30, deadline=None)


def g1d(sigma, order, radius, **kw):
    x = grid(radius, dtype=torch.float64)
    return x, gaussian_derivatives_1d(torch.tensor(sigma, dtype=torch.float64), order, x, **kw)


# 1. basis count, kernel size rule, same-size output
@pytest.mark.parametrize(("order", "count"), [(1, 3), (2, 6), (3, 10), (4, 15)])
def test_basis_count(order, count):
    assert basis_size(order) == count == len(basis_indices(order))


@SETTINGS
@given(sigma=sigmas)
def test_kernel_size_follows_the_rule(sigma):
    paper = NJetConv2d(1, 1, sigma=sigma, learn_sigma=False)
    reference = NJetConv2d(1, 1, sigma=sigma, learn_sigma=False, size_rule="reference")
    assert paper.kernel_size[0] == 2 * math.ceil(2 * sigma - 1e-9) + 1
    assert reference.kernel_size[0] == 2 * math.ceil(2 * sigma + 0.5 - 1e-9) + 1
    # the learnable layer's support is masked to the rule even though its grid is larger
    learnable = NJetConv2d(1, 1, sigma=sigma).double()
    support = (learnable.basis().abs().sum(0) > 0).sum(0).max().item()
    assert support == paper.kernel_size[0]
    x = torch.rand(1, 1, 13, 9)
    assert paper(x).shape == reference(x).shape == learnable.float()(x).shape == x.shape


# 2. rank one
@SETTINGS
@given(sigma=sigmas, order=orders)
def test_each_basis_filter_is_an_outer_product(sigma, order):
    x = grid(radius_for(sigma), dtype=torch.float64)
    b2 = gaussian_basis_2d(torch.tensor(sigma, dtype=torch.float64), order, x)
    b1 = gaussian_derivatives_1d(
        torch.tensor(sigma, dtype=torch.float64), order, x, scale_normalize=True
    )
    for f, (i, j) in enumerate(basis_indices(order)):
        assert torch.allclose(b2[f], torch.outer(b1[j], b1[i]), atol=1e-14)
        singular = torch.linalg.svdvals(b2[f])
        assert singular[1:].max() <= 1e-12 * max(singular[0].item(), 1e-30)


# 3. Hermite form against the closed forms; the recurrence
@SETTINGS
@given(sigma=sigmas)
def test_hermite_form_equals_closed_forms(sigma):
    x, g = g1d(sigma, 3, 3 * math.ceil(3 * sigma))
    g0 = g[0]
    s = sigma
    assert torch.allclose(g[1], -x / s**2 * g0, atol=1e-14)
    assert torch.allclose(g[2], (x**2 - s**2) / s**4 * g0, atol=1e-14)
    assert torch.allclose(g[3], (3 * s**2 * x - x**3) / s**6 * g0, atol=1e-14)


def test_hermite_recurrence():
    t = torch.linspace(-3, 3, 13, dtype=torch.float64)
    h = hermite(6, t)
    assert torch.allclose(h[2], 4 * t**2 - 2) and torch.allclose(h[3], 8 * t**3 - 12 * t)
    for m in range(2, 7):
        assert torch.allclose(h[m], 2 * t * h[m - 1] - 2 * (m - 1) * h[m - 2])


# 4. scipy oracle
@SETTINGS
@given(sigma=sigmas, order=orders, radius=st.integers(2, 12))
def test_matches_scipy_gaussian_filter1d_on_a_delta(sigma, order, radius):
    _, g = g1d(sigma, order, radius)
    delta = np.zeros(2 * radius + 1)
    delta[radius] = 1.0
    for m in range(order + 1):
        ref = ndimage.gaussian_filter1d(delta, sigma, order=m, mode="constant", radius=radius)
        assert np.allclose(g[m].numpy(), ref, atol=1e-12, rtol=0)


# 5. sums
@SETTINGS
@given(sigma=sigmas, order=orders)
def test_sums(sigma, order):
    _, g = g1d(sigma, order, radius_for(sigma))
    assert abs(g[0].sum().item() - 1) < 1e-12
    for m in range(1, order + 1, 2):
        assert abs(g[m].sum().item()) < 1e-12  # antisymmetric


# 6. moments
@SETTINGS
@given(sigma=st.floats(1.0, 3.0), order=st.integers(1, 3))
def test_moments_with_a_wide_enough_support(sigma, order):
    """sum_x x^m G^m ~ (-1)^m m!, lower moments ~ 0. The m-th moment weights the tails, which the
    support (4 sigma) truncates: measured worst cases over sigma in [1, 3] are 0.05%, 0.5% and 3.1%
    of m! for m = 1, 2, 3 (13% for m = 4, hence order <= 3 here)."""
    x, g = g1d(sigma, order, radius_for(sigma, extent=4))
    for m in range(1, order + 1):
        moments = [(x**k * g[m]).sum().item() for k in range(m + 1)]
        assert abs(moments[m] - (-1) ** m * math.factorial(m)) < 0.04 * math.factorial(m)
        assert all(abs(v) < 1e-3 * math.factorial(m) for v in moments[:m])


def test_moments_fail_when_sampling_is_too_coarse():
    for sigma, extent in ((1.0, 2), (0.5, 4)):
        x, g = g1d(sigma, 2, radius_for(sigma, extent=extent))
        assert (
            abs((x**2 * g[2]).sum().item() - 2) > 0.05
        )  # fails at extent 2 or sigma 0.5 (docs/methods/njet.md, section 7, item 6)


# 7. parity and transpose
@SETTINGS
@given(sigma=sigmas, order=orders)
def test_parity_and_transpose(sigma, order):
    x = grid(radius_for(sigma), dtype=torch.float64)
    b = gaussian_basis_2d(torch.tensor(sigma, dtype=torch.float64), order, x)
    index = {ij: f for f, ij in enumerate(basis_indices(order))}
    for (i, j), f in index.items():
        assert torch.allclose(b[f].flip(-1), (-1) ** i * b[f], atol=1e-14)  # flip x (columns)
        assert torch.allclose(b[f].flip(-2), (-1) ** j * b[f], atol=1e-14)  # flip y (rows)
        assert torch.allclose(b[f].T, b[index[(j, i)]], atol=1e-14)


# 8. steering: x grows along columns (right), y along rows (down); u = x cos(t) + y sin(t)
@SETTINGS
@given(sigma=sigmas, theta=st.floats(0, 2 * math.pi))
def test_steering_is_exact_on_the_grid(sigma, theta):
    x = grid(radius_for(sigma, extent=3), dtype=torch.float64)
    s = torch.tensor(sigma, dtype=torch.float64)
    g = gaussian_derivatives_1d(s, 3, x)  # not scale-normalised
    b = {ij: torch.outer(g[ij[1]], g[ij[0]]) for ij in basis_indices(3)}
    X, Y = x[None, :].expand(len(x), -1), x[:, None].expand(-1, len(x))
    u = X * math.cos(theta) + Y * math.sin(theta)
    G = b[(0, 0)]  # isotropic on the grid: the product of two equal sampled Gaussians
    c, sn = math.cos(theta), math.sin(theta)
    first = c * b[(1, 0)] + sn * b[(0, 1)]
    second = c**2 * b[(2, 0)] + 2 * c * sn * b[(1, 1)] + sn**2 * b[(0, 2)]
    third = (
        c**3 * b[(3, 0)] + 3 * c**2 * sn * b[(2, 1)] + 3 * c * sn**2 * b[(1, 2)] + sn**3 * b[(0, 3)]
    )
    assert torch.allclose(first, -u / s**2 * G, atol=1e-14)
    assert torch.allclose(second, (u**2 - s**2) / s**4 * G, atol=1e-14)
    assert torch.allclose(third, (3 * s**2 * u - u**3) / s**6 * G, atol=1e-13)


# 9. heat equation through autograd
@SETTINGS
@given(sigma=sigmas)
def test_heat_equation(sigma):
    x = grid(radius_for(sigma, extent=3), dtype=torch.float64)
    s = torch.tensor(sigma, dtype=torch.float64, requires_grad=True)
    g = gaussian_derivatives_1d(s, 2, x, normalize=False)
    G = torch.outer(g[0], g[0])
    (dG,) = torch.autograd.grad(G.sum(), s, retain_graph=True)
    # the pointwise version: d/dsigma of every tap (forward mode: one pass for all taps)
    dG_full = torch.func.jacfwd(
        lambda t: torch.outer(*[gaussian_derivatives_1d(t, 2, x, normalize=False)[0]] * 2)
    )(s.detach())
    laplacian = torch.outer(g[0], g[2]) + torch.outer(g[2], g[0])
    assert torch.allclose(dG_full.view_as(G), sigma * laplacian.detach(), atol=1e-12)
    assert torch.allclose(dG, (sigma * laplacian).sum().detach(), atol=1e-10)


# 10. semigroup, with an error that shrinks as sigma and the support grow
def semigroup_error(s1, s2, extent):
    s3 = math.sqrt(s1**2 + s2**2)
    r1, r2, r3 = (radius_for(s, extent=extent) for s in (s1, s2, s3))
    _, a = g1d(s1, 0, r1)
    _, b = g1d(s2, 0, r2)
    _, c = g1d(s3, 0, r1 + r2)
    conv = np.convolve(a[0].numpy(), b[0].numpy())
    return np.abs(conv - c[0].numpy()).max() / c[0].numpy().max(), r3


def test_semigroup():
    """G(s1) * G(s2) = G(sqrt(s1^2 + s2^2)): sampling breaks it for small sigma (0.5: 14%), the
    truncated support for short extents (sigma 2: 4% at k = 2); both errors vanish as they grow."""
    by_sigma = [semigroup_error(s, s, extent=6)[0] for s in (0.5, 1.0, 2.0, 4.0)]
    assert by_sigma[0] > by_sigma[1] > by_sigma[2]  # then the floor of a 6-sigma support, ~1e-9
    assert max(by_sigma[2:]) < 1e-8
    by_extent = [semigroup_error(2.0, 2.0, extent=k)[0] for k in (2, 3, 4, 6)]
    assert all(b < a for a, b in itertools.pairwise(by_extent)) and by_extent[-1] < 1e-6


# 11. linearity and collapse
@SETTINGS
@given(sigma=st.floats(0.5, 2.0), order=st.integers(1, 3), stride=st.integers(1, 2))
def test_layer_is_a_conv_with_its_effective_kernel(sigma, order, stride):
    torch.manual_seed(0)
    layer = NJetConv2d(3, 4, order=order, sigma=sigma, stride=stride).double()
    x = torch.rand(2, 3, 11, 9, dtype=torch.float64)
    ref = F.conv2d(x, layer.effective_weight(), layer.bias, stride, layer.radius)
    assert torch.allclose(layer(x), ref, atol=1e-12)
    assert torch.allclose(layer.collapse()(x), ref, atol=1e-12)
    assert torch.allclose(
        layer(2 * x + 1) - 2 * layer(x),
        layer(torch.ones_like(x)) - layer.bias.view(1, -1, 1, 1),
        atol=1e-10,
    )


def test_one_hot_alpha_reproduces_one_basis_filter():
    layer = NJetConv2d(1, 1, order=3, sigma=1.5, bias=False).double()
    basis = layer.basis()
    for f in range(basis.shape[0]):
        with torch.no_grad():
            layer.alpha.zero_()
            layer.alpha[0, 0, f] = 1.0
        assert torch.allclose(layer.effective_weight()[0, 0], basis[f])


# 12. F.conv2d is cross-correlation: odd orders act with the opposite sign of a true convolution
def test_odd_orders_act_with_flipped_sign():
    sigma = 1.5
    layer = NJetConv2d(1, 1, order=1, sigma=sigma, extent=4, bias=False, learn_sigma=False).double()
    with torch.no_grad():
        layer.alpha.zero_()
        layer.alpha[0, 0, basis_indices(1).index((1, 0))] = 1.0  # sigma * d/dx
    ramp = torch.arange(40, dtype=torch.float64).expand(1, 1, 40, 40).clone()  # f(x, y) = x
    out = layer(ramp)[0, 0, 10:-10, 10:-10]
    # scipy convolves: the smoothed derivative of f = x is +1; F.conv2d correlates: -1 (times sigma)
    derivative = ndimage.gaussian_filter(ramp[0, 0].numpy(), sigma, order=(0, 1), truncate=4.0)[
        10:-10, 10:-10
    ]
    assert np.allclose(derivative, 1.0, atol=1e-3)
    assert np.allclose(out.detach().numpy(), -sigma * derivative, atol=1e-12)
