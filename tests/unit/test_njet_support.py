"""NJetConv2d's support follows sigma (issue 13): exact outputs for every support it passes
through, no ceiling on sigma, hysteresis, sizes kept, bounded recompiles, no host sync on CUDA."""

import copy
import math
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F

from reverso.nn import NJetConv2d
from reverso.nn.gaussian import gaussian_basis_2d, grid, radius_for


def set_sigma(layer, sigma):
    with torch.no_grad():
        layer.scale.fill_(torch.log2(torch.tensor(sigma, dtype=torch.float64)).item())


def reference(layer, x, sigma):
    """A plain conv with the kernel of the exact size for ``sigma`` (the authors' route)."""
    sigma = layer.sigma.item()
    r = radius_for(sigma, layer.extent, layer.size_rule)
    basis = gaussian_basis_2d(torch.tensor(sigma, dtype=x.dtype), layer.order, grid(r, x.dtype))
    weight = torch.einsum("ocf,fyx->ocyx", layer.alpha, basis)
    pads = tuple(r + o for o in layer._pad_offset)
    return F.conv2d(F.pad(x, pads), weight, layer.bias, layer.stride)


@pytest.mark.parametrize("padding", [None, 0])  # "same" and "valid" at the initial grid
def test_every_support_gives_the_exact_kernels_output(padding):
    torch.manual_seed(0)
    dense = NJetConv2d(3, 4, sigma=0.7, route="dense", padding=padding).double()
    separable = NJetConv2d(3, 4, sigma=0.7, route="separable", padding=padding).double()
    separable.load_state_dict(dense.state_dict())
    x = torch.rand(2, 3, 29, 27, dtype=torch.float64)
    sizes, radii = set(), []
    for sigma in (0.7, 0.95, 1.3, 1.8, 2.6, 3.4, 2.2, 1.1, 0.45):  # 0.45: below the start
        for layer in (dense, separable):
            set_sigma(layer, sigma)
            out = layer(x)  # training mode: the grid follows sigma
            assert torch.allclose(out, reference(layer, x, sigma), atol=1e-10), (sigma, layer.route)
        radii.append(dense.radius)
        sizes.add(tuple(out.shape))
    assert len(set(radii)) >= 6 and len(sizes) == 1  # many grids, one output size
    assert max(radii) == radius_for(3.4) and radii[0] == radius_for(0.7)


def test_no_ceiling_the_gradient_of_sigma_never_vanishes():
    x = torch.rand(1, 2, 48, 48)
    layer = NJetConv2d(2, 2, sigma=1.0)
    for sigma in (1.0, 1.99, 2.0, 2.01, 4.0, 7.5):
        set_sigma(layer, sigma)
        layer.zero_grad()
        layer(x).pow(2).mean().backward()
        assert layer.sigma.item() == pytest.approx(sigma)
        assert layer.scale.grad.abs().item() > 0, sigma
    bounded = NJetConv2d(2, 2, sigma=1.0, sigma_max=2.0)  # a bound only when asked for
    set_sigma(bounded, 3.0)
    assert bounded.sigma.item() == 2.0


def test_sigma_learns_past_twice_its_start():
    """Fit a wide blur: sigma starts at 1 and must grow to about 3."""
    torch.manual_seed(0)
    x = torch.rand(8, 1, 40, 40)
    target_layer = NJetConv2d(1, 1, order=0, sigma=3.0, learn_sigma=False, bias=False)
    with torch.no_grad():
        target_layer.alpha.fill_(1.0)
        target = target_layer(x)
    layer = NJetConv2d(1, 1, order=0, sigma=1.0, bias=False)
    with torch.no_grad():
        layer.alpha.fill_(1.0)
    opt = torch.optim.Adam([layer.scale], lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        F.mse_loss(layer(x), target).backward()
        opt.step()
    assert layer.sigma.item() > 2.5 and layer.radius >= radius_for(2.5)


def test_hysteresis_keeps_the_grid_when_sigma_hovers_at_a_boundary():
    layer = NJetConv2d(2, 2, sigma=1.0)
    x = torch.rand(1, 2, 16, 16)
    radii = []
    for sigma in (0.99, 1.01, 0.98, 1.02, 0.97, 1.01, 0.95):  # the 5x5 / 7x7 boundary is 1.0
        set_sigma(layer, sigma)
        layer(x)
        radii.append(layer.radius)
    assert radii == [2, 3, 3, 3, 3, 3, 3]  # grown at once, not shrunk back within 10%
    set_sigma(layer, 0.85)
    layer(x)
    assert layer.radius == 2


def test_eval_and_loading_fit_the_exact_support():
    layer = NJetConv2d(2, 3, sigma=1.0)
    set_sigma(layer, 2.7)
    assert layer.eval().radius == radius_for(2.7)
    fresh = NJetConv2d(2, 3, sigma=1.0)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.radius == radius_for(2.7)
    x = torch.rand(1, 2, 20, 20)
    assert torch.allclose(fresh.eval()(x), layer(x), atol=1e-6)
    nested = torch.nn.Sequential(torch.nn.Identity(), NJetConv2d(2, 3, sigma=1.0))
    nested.load_state_dict({f"1.{k}": v for k, v in layer.state_dict().items()})
    assert nested[1].radius == radius_for(2.7)  # the hook runs inside a parent's load too
    clone = pickle.loads(pickle.dumps(copy.deepcopy(layer)))  # no CUDA event travels along
    assert clone.radius == layer.radius and clone._host_sigma.pending is None


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_diverged_sigma_gives_non_finite_outputs_not_an_error(value):
    """A step that made sigma NaN or inf (or ``to_empty`` memory) keeps the grid, and
    ``eval()``, a state_dict load and the next forward do not raise (they raised Python's
    "cannot convert float NaN to integer"); a NaN sigma gives NaN outputs."""
    layer = NJetConv2d(2, 3, sigma=1.0)
    radius = layer.radius
    with torch.no_grad():
        layer.scale.fill_(value)
    y = layer(torch.rand(1, 2, 12, 12))
    assert layer.radius == radius and torch.isnan(y).all() == math.isnan(value)
    assert layer.eval().radius == radius
    fresh = NJetConv2d(2, 3, sigma=1.0)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.radius == radius


def test_warns_once_when_the_support_outgrows_the_input():
    layer = NJetConv2d(1, 1, sigma=1.0)
    set_sigma(layer, 6.0)  # a 25-pixel support
    with pytest.warns(UserWarning, match="larger than its 12x12 input"):
        layer(torch.rand(1, 1, 12, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.rand(1, 1, 12, 12))


def test_torch_compile_recompiles_only_when_the_support_changes():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    layer = NJetConv2d(2, 2, sigma=1.2)
    compiled = torch.compile(layer, backend="eager")
    x = torch.rand(1, 2, 16, 16)
    for sigma in (1.2, 1.25, 1.3, 1.35, 1.4):  # one support (7x7)
        set_sigma(layer, sigma)
        assert torch.allclose(compiled(x), reference(layer, x, sigma), atol=1e-5)
    once = counters["stats"]["unique_graphs"]
    for sigma in (1.6, 1.7, 2.1, 2.2):  # two more supports
        set_sigma(layer, sigma)
        assert torch.allclose(compiled(x), reference(layer, x, sigma), atol=1e-5)
    assert (
        counters["stats"]["unique_graphs"] - once <= 2 * 2
    )  # per support: at most the graph and its resume
    fixed = NJetConv2d(2, 2, sigma=1.2, learn_sigma=False)
    assert torch._dynamo.explain(fixed)(x).graph_break_count == 0
    assert torch._dynamo.explain(layer.eval())(x).graph_break_count == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("route", ["dense", "separable"])
def test_no_host_sync_in_forward_on_cuda(route, no_host_sync):
    layer = NJetConv2d(8, 8, sigma=1.0, route=route).cuda()
    x = torch.rand(2, 8, 32, 32, device="cuda")
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x)  # the first step allocates the pinned copy
    with no_host_sync():
        for _ in range(5):
            opt.zero_grad()
            layer(x).square().mean().backward()
            opt.step()
    torch.cuda.synchronize()
    layer(x)
    assert layer.radius == radius_for(layer.sigma.item())  # the host caught up
