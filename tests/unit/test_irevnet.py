"""i-RevNet: coupling blocks, the memory-saving backward and the two reference models
(docs/methods/irevnet.md, section 8)."""

import copy

import pytest
import torch
from torch import nn

import reverso
from reverso.irevnet import IRevNet, residual_function
from reverso.nn import CouplingBlock, ReversibleSequence, SpaceToDepth


def test_psi_is_its_inverses_adjoint():
    x, y = (
        torch.randn(2, 3, 8, 12, dtype=torch.float64),
        torch.randn(2, 12, 4, 6, dtype=torch.float64),
    )
    psi = SpaceToDepth(2)
    assert torch.allclose((psi(x) * y).sum(), (x * psi.inverse()(y)).sum())


def _block(c, stride, dtype, dropout=0.0):
    torch.manual_seed(0)
    f = residual_function(c, c * stride * stride, stride, first=False, dropout=dropout)
    return CouplingBlock(f, stride).to(dtype)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("train", [False, True])
def test_block_inverse(stride, dtype, tol, train):
    block = _block(8, stride, dtype).train(train)
    x1, x2 = torch.randn(3, 8, 8, 8, dtype=dtype), torch.randn(3, 8, 8, 8, dtype=dtype)
    with torch.no_grad():
        y1, y2 = block(x1, x2)
        r1, r2 = block.inverse(y1, y2)  # train mode: the same batch gives the same statistics
    scale = max(x1.abs().max(), x2.abs().max())
    assert (r1 - x1).abs().max() <= tol * scale and (r2 - x2).abs().max() <= tol * scale
    assert y1.shape == y2.shape == (3, 8 * stride * stride, 8 // stride, 8 // stride)


def _sequence(dtype, dropout=0.0, memory_saving=True, depth=4):
    blocks = [_block(4, 1, dtype, dropout) for _ in range(depth - 1)] + [
        _block(4, 2, dtype, dropout)
    ]
    for i, b in enumerate(blocks):  # distinct weights per block
        torch.manual_seed(i)
        for p in b.parameters():
            p.data.normal_(0, 0.3)
    return ReversibleSequence(blocks, memory_saving=memory_saving).to(dtype)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_memory_saving_backward_equals_plain_autograd(dtype, rtol, dropout):
    saving = _sequence(dtype, dropout).train()
    plain = copy.deepcopy(saving)
    plain.memory_saving = False
    x = torch.randn(4, 8, 8, 8, dtype=dtype)
    results = []
    for model in (saving, plain):
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(7)
        y = model(xi)
        (y * torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((y.detach(), xi.grad, grads, [b.clone() for b in model.buffers()]))
    (y_a, gx_a, gp_a, bn_a), (y_b, gx_b, gp_b, bn_b) = results
    assert torch.allclose(y_a, y_b, rtol=rtol, atol=rtol)
    assert torch.allclose(gx_a, gx_b, rtol=rtol, atol=rtol)
    assert all(torch.allclose(a, b, rtol=rtol, atol=rtol) for a, b in zip(gp_a, gp_b, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(bn_a, bn_b, strict=True))  # one update per step


def test_autograd_grad_and_autocast_keep_the_trunk_in_float32():
    seq = _sequence(torch.float32)
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    _, *gp = torch.autograd.grad(seq(x).sum(), [x, *seq.parameters()])
    assert all(g is not None for g in gp)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = seq(x.bfloat16())
    assert y.dtype == torch.float32
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in seq.parameters())


def test_saved_bytes_of_a_memory_saving_run_do_not_grow_with_depth():
    x = torch.randn(2, 8, 16, 16)
    saving = [reverso.saved_bytes(_sequence(torch.float32, depth=d), x) for d in (2, 4, 8)]
    plain = [
        reverso.saved_bytes(_sequence(torch.float32, depth=d, memory_saving=False), x)
        for d in (2, 4, 8)
    ]
    assert saving[0] == saving[1] == saving[2]
    assert plain[2] - plain[1] == pytest.approx(2 * (plain[1] - plain[0]), rel=0.05)


def test_reference_models_have_the_papers_parameter_counts():
    count = {
        n: sum(p.numel() for p in reverso.models.create(n).parameters())
        for n in ("irevnet_imagenet", "irevnet_cifar")
    }
    assert count == {"irevnet_imagenet": 29_201_092, "irevnet_cifar": 6_274_826}
    # the authors' code builds model (b) with 3x3 kernels in all three convs of F
    stages = ((6, 2, 24), (16, 2, 96), (72, 2, 384), (6, 2, 1536))
    code = IRevNet(stages, init_block=2, kernels=(3, 3, 3))
    assert sum(p.numel() for p in code.parameters()) == 125_120_356


def test_bijective_model_inverts_and_keeps_its_coefficient_count():
    torch.manual_seed(0)
    model = reverso.models.create("irevnet_imagenet").eval()
    x = torch.rand(16, 3, 32, 32)  # uniform noise; 32 px is the smallest size the net takes
    sizes = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: sizes.append(o[0].numel())) for m in model.body
    ]
    with torch.no_grad():
        phi = model.forward_features(x)
        back = model.inverse(phi)
    for h in hooks:
        h.remove()
    assert set(sizes) == {3 * 32 * 32}  # C x H x W constant through the body
    error = ((back - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)).mean()
    assert error < 1e-5


def test_injective_model_left_inverse_and_zero_padding():
    torch.manual_seed(0)
    model = IRevNet(((2, 1, 16), (2, 2, 64)), num_classes=10, init_block=0).eval()
    x = torch.rand(16, 3, 16, 16)
    padded = model.body[0](x)
    assert padded.shape[1] == 32 and torch.equal(padded[:, 3:], torch.zeros_like(padded[:, 3:]))
    with torch.no_grad():
        back = model.inverse(model.forward_features(x))
    error = ((back - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)).mean()
    assert error < 1e-5
    assert model(x).shape == (16, 10)


def test_whole_net_gradients_and_fx_leaf():
    torch.manual_seed(0)
    model = IRevNet(((2, 1, 8), (2, 2, 32)), num_classes=4, init_block=2, dropout=0.2)
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, ReversibleSequence):
            m.memory_saving = False
    x = torch.rand(4, 3, 16, 16)
    for net in (model, plain):
        torch.manual_seed(3)
        net(x).logsumexp(1).sum().backward()
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    gm = reverso.trace(model, (3, 16, 16))
    assert any(
        isinstance(gm.get_submodule(n.target), ReversibleSequence)
        for n in gm.graph.nodes
        if n.op == "call_module"
    )


def test_wrong_stride_widths_are_refused():
    with pytest.raises(ValueError, match="per half"):
        IRevNet(((1, 2, 10),), init_block=2)
    with pytest.raises(ValueError, match="stride"):
        CouplingBlock(nn.Identity(), 3)
