"""The layers the passes emit: image pyramid, upsampling and merge, each on its own."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from reverso.nn import (
    BlurPool2d,
    GaussianBlur2d,
    ImagePyramid,
    Merge,
    NJetConv2d,
    Upsample,
    binomial_taps,
    gaussian_taps,
    init_non_persistent_buffers,
    triangle_taps,
)


def test_taps_are_normalised_and_exact():
    assert torch.allclose(binomial_taps(5), torch.tensor([1, 4, 6, 4, 1], dtype=torch.float64) / 16)
    assert binomial_taps(1).tolist() == [1.0]
    g = gaussian_taps(2.0)
    assert g.numel() == 2 * 6 + 1 and abs(g.sum().item() - 1) < 1e-12
    assert triangle_taps(2).tolist() == [0.5, 1.0, 0.5]


def _tf_gaussian_resize_1d(signal: np.ndarray, n_out: int) -> np.ndarray:
    """An independent transcription of TensorFlow's Gaussian kernel (scale_and_translate with
    antialias, shrinking): a loop over output pixels, kernel radius 1.5 in kernel space."""
    n_in = len(signal)
    inv_scale = n_in / n_out
    out = np.empty(n_out)
    for i in range(n_out):
        sample = (i + 0.5) * inv_scale
        span_start = int(np.ceil(sample - 1.5 * inv_scale - 0.5))
        span_end = int(np.floor(sample + 1.5 * inv_scale - 0.5))
        total = acc = 0.0
        for j in range(max(span_start, 0), min(span_end, n_in - 1) + 1):
            x = (j + 0.5 - sample) / inv_scale
            if abs(x) >= 1.5:
                continue
            weight = np.exp(-(x * x) / (2 * 0.25))
            total += weight
            acc += weight * signal[j]
        out[i] = acc / total
    return out


@pytest.mark.parametrize("size", [(32, 32), (37, 30), (28, 45)])
@pytest.mark.parametrize("level", [1, 2, 3])
def test_default_pyramid_is_tensorflows_gaussian_resize(size, level):
    """Even, odd and non-square inputs: each level to 1e-6 of TF's kernel, on half-pixel
    centres, renormalised at the borders, scale = input size / output size."""
    f = 2**level
    x = torch.rand(1, 1, *size, dtype=torch.float64)
    out = ImagePyramid([level]).double()(x)[0][0, 0].numpy()
    h, w = -(-size[0] // f), -(-size[1] // f)
    rows = np.stack([_tf_gaussian_resize_1d(r, w) for r in x[0, 0].numpy()])
    ref = np.stack([_tf_gaussian_resize_1d(c, h) for c in rows.T]).T
    assert out.shape == ref.shape == (h, w)
    assert np.abs(out - ref).max() < 1e-6
    assert torch.allclose(
        ImagePyramid([level])(torch.full((1, 3, *size), 2.0))[0], torch.tensor(2.0)
    )


@pytest.mark.parametrize("level", [1, 2, 3])
def test_reflect_gaussian_pyramid_level_matches_scipy(level):
    """Level l = Gaussian blur with sigma f/2 (half-width ceil(3 sigma), reflect), then x[::f, ::f]."""
    f = 2**level
    x = torch.rand(1, 2, 37, 30, dtype=torch.float64)
    out = ImagePyramid([level], kind="gaussian_reflect").double()(x)[0]
    sigma = f / 2
    ref = np.stack(
        [
            ndimage.gaussian_filter(
                x[0, c].numpy(), sigma, mode="mirror", truncate=np.ceil(3 * sigma) / sigma
            )
            for c in range(2)
        ]
    )[:, ::f, ::f]
    assert out.shape == (1, 2, *ref.shape[1:])
    assert np.allclose(out[0].numpy(), ref, atol=1e-10)


def test_pyramid_sizes_follow_subsampling_for_odd_inputs():
    x = torch.rand(2, 3, 67, 45)
    for level, out in zip([0, 1, 2, 5], ImagePyramid([0, 1, 2, 5])(x), strict=True):
        assert out.shape == x[..., :: 2**level, :: 2**level].shape
    assert torch.equal(ImagePyramid([0])(x)[0], x)  # level 0 is the input itself


def test_pyramid_preserves_constants_and_falls_back_on_tiny_maps():
    x = torch.full((1, 1, 5, 5), 3.0)
    for kind in ("gaussian", "gaussian_reflect", "binomial", "cascade"):
        out = ImagePyramid([1, 2, 3], kind)(x)  # level 3 needs a kernel larger than the map
        assert all(torch.allclose(o, torch.full_like(o, 3.0)) for o in out)


def test_binomial_and_cascade_pyramids():
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    (b1,) = ImagePyramid([1], "binomial").double()(x)
    ref = ndimage.correlate1d(
        ndimage.correlate1d(x[0, 0].numpy(), binomial_taps(5).numpy(), 0, mode="mirror"),
        binomial_taps(5).numpy(),
        1,
        mode="mirror",
    )[::2, ::2]
    assert np.allclose(b1[0, 0].numpy(), ref)
    c1, c2 = ImagePyramid([1, 2], "cascade").double()(x)
    (again,) = ImagePyramid([1], "cascade").double()(c1)
    assert torch.allclose(c2, again)  # each level is made from the previous one


def test_pyramid_filters_are_fixed_buffers():
    p = ImagePyramid([1, 2], "gaussian_reflect")
    assert list(p.parameters()) == [] and p.state_dict() == {}
    assert {n for n, _ in p.named_buffers()} == {"taps_1", "taps_2"}
    tf = ImagePyramid([1, 2])  # TF's weights depend on the input size: made in forward
    assert list(tf.parameters()) == [] and tf.state_dict() == {}


def test_nearest_upsample_to_exact_size():
    x = torch.rand(2, 3, 4, 5)
    up = Upsample("nearest", 2)
    assert torch.equal(
        up(x, torch.empty(0, 0, 8, 10)), x.repeat_interleave(2, -2).repeat_interleave(2, -1)
    )
    assert up(x, torch.empty(0, 0, 7, 9)).shape == (
        2,
        3,
        7,
        9,
    )  # odd targets: size=, not scale_factor=


def test_bilinear_upsample_keeps_constants():
    x = torch.full((1, 2, 3, 3), 2.5)
    assert torch.allclose(
        Upsample("bilinear")(x, torch.empty(1, 1, 6, 5)), torch.full((1, 2, 6, 5), 2.5)
    )


@pytest.mark.parametrize("factor", [2, 4])
def test_blur_upsample_interpolates(factor):
    x = torch.rand(1, 2, 5, 6, dtype=torch.float64)
    up = Upsample("blur", factor).double()
    y = up(x, torch.empty(1, 1, 5 * factor, 6 * factor))
    assert y.shape == (1, 2, 5 * factor, 6 * factor)
    assert torch.allclose(y[..., ::factor, ::factor], x)  # kept samples are the input itself
    mid = y[..., : 4 * factor, : 5 * factor]
    assert (
        mid.min() >= x.min() - 1e-12 and mid.max() <= x.max() + 1e-12
    )  # interpolation, no overshoot
    if factor == 2:  # [1, 2, 1]: in-between samples are averages of their neighbours
        assert torch.allclose(y[..., 0, 1], (x[..., 0, 0] + x[..., 0, 1]) / 2)


@pytest.mark.parametrize("variant", ["add", "concat", "add_concat"])
def test_merge_variants(variant):
    torch.manual_seed(0)
    lateral = nn.Conv2d(3, 8, 3, padding=1)
    project = nn.Conv2d(16, 8, 1)
    fuse = nn.Conv2d(16, 8, 3, padding=1) if variant != "add" else None
    merge = Merge(variant, lateral, project=project, upsample=Upsample("nearest"), fuse=fuse)
    x, image = torch.rand(2, 16, 4, 5), torch.rand(2, 3, 8, 9)
    out = merge(x, image)
    assert out.shape == (2, 8, 8, 9)
    s = lateral(image)
    low = Upsample("nearest")(project(x), s)
    expected = {
        "add": low + s,
        "concat": fuse(torch.cat([low, s], 1)) if fuse else None,
        "add_concat": fuse(torch.cat([low + s, s], 1)) if fuse else None,
    }[variant]
    assert torch.allclose(out, expected)


def test_merge_rejects_inconsistent_parts():
    with pytest.raises(ValueError, match="fuse"):
        Merge("add_concat", nn.Identity())
    with pytest.raises(ValueError, match="merge must be one of"):
        Merge("sum", nn.Identity())


def test_layers_gradcheck_in_float64():
    x = torch.rand(1, 2, 9, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ImagePyramid([1, 2]).double()(t)[1], (x,))
    small = torch.rand(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    like = torch.empty(1, 1, 6, 7)
    for mode in ("nearest", "bilinear", "blur"):
        up = Upsample(mode).double()
        assert torch.autograd.gradcheck(lambda t, up=up: up(t, like), (small,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layers_run_in_half_precision(dtype):
    x = torch.rand(1, 3, 16, 16).to(dtype)
    levels = ImagePyramid([1, 2])(x)
    assert all(t.dtype == dtype for t in levels)
    for mode in ("nearest", "bilinear", "blur"):
        assert Upsample(mode)(levels[1], levels[0]).dtype == dtype


@pytest.mark.parametrize(
    "build",
    [
        lambda: GaussianBlur2d(1.5),
        lambda: BlurPool2d(4, filter_size=5),
        lambda: ImagePyramid((0, 1, 2), kind="gaussian_reflect"),
        lambda: ImagePyramid((1, 3), kind="binomial"),
        lambda: ImagePyramid((0, 2), kind="cascade"),
        lambda: Upsample("blur", factor=4),
        lambda: NJetConv2d(3, 4, order=2, sigma=1.5),
    ],
)
def test_fixed_filters_survive_meta_construction_and_to_empty(build):
    # as with timm's layers: build the structure without memory, materialise, re-create the
    # non-persistent buffers (not in the state_dict) from the layer's settings
    reference = build()
    with torch.device("meta"):
        layer = build()
    layer = init_non_persistent_buffers(layer.to_empty(device="cpu"))
    buffers = dict(reference.named_buffers())
    assert buffers and set(buffers) == set(dict(layer.named_buffers()))
    for name, value in layer.named_buffers():
        if name not in reference.state_dict():  # persistent ones come from a checkpoint
            assert value.dtype == buffers[name].dtype and torch.equal(value, buffers[name]), name


def test_space_to_depth_is_the_codes_permutation_and_inverts_exactly():
    from timm.layers import SpaceToDepth as TimmSpaceToDepth

    from reverso.nn import NeighbourhoodToDepth, SpaceToDepth

    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    for b in (2, 4):
        s = SpaceToDepth(b)
        y = s(x)
        assert y.shape == (2, 3 * b * b, 8 // b, 12 // b)
        # the i-RevNet code's order: out[n, (hi*b + wi)*C + c, h, w] = x[n, c, h*b + hi, w*b + wi]
        hi, wi, c = 1, b - 1, 2
        assert torch.equal(y[:, (hi * b + wi) * 3 + c], x[:, c, hi::b, wi::b])
        assert torch.equal(s.inverse()(y), x)  # bit-exact
        assert torch.equal(y.flatten().sort().values, x.flatten().sort().values)  # a permutation
        # at stride 1: every pixel's neighbourhood; the block grid of it is the strided version
        p = (b - 1) // 2
        assert torch.equal(NeighbourhoodToDepth(b)(x)[..., p::b, p::b], y)
    assert torch.equal(SpaceToDepth(4)(x.float()), TimmSpaceToDepth(4)(x.float()))
    with pytest.raises(ValueError, match="divisible by 4"):
        SpaceToDepth(4)(torch.randn(1, 3, 6, 8))


def test_merge_crops_the_lateral_to_a_trimmed_map():
    from reverso.nn import Merge

    merge = Merge("add", nn.Identity())
    x, image = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 10, 11)
    torch.testing.assert_close(merge(x, image), x + image[..., 1:9, 1:9])
    same = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(merge(x, same), x + same)


def test_blurpool_takes_the_official_pad_type_names():
    from reverso.nn import BlurPool2d

    x = torch.rand(2, 3, 9, 10)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    filt = (taps[:, None] * taps[None, :] / 64).expand(3, 1, 4, 4)
    expected = F.conv2d(F.pad(x, (1, 2, 1, 2)), filt, stride=2, groups=3)  # antialiased-cnns, zero
    assert torch.allclose(BlurPool2d(3, 4, 2, pad_type="zero")(x), expected, atol=1e-6)
    assert BlurPool2d(3, pad_type="refl").pad_mode == "reflect"
    assert BlurPool2d(3, pad_type="repl").pad_mode == "replicate"
    with pytest.raises(ValueError, match="pad_type"):
        BlurPool2d(3, pad_type="circular")


@pytest.mark.parametrize(("kernel", "padding", "dilation"), [(2, 0, 1), (3, 1, 1), (3, 1, 2)])
def test_a_blur_pool_with_its_max_pool_equals_the_two_layers(kernel, padding, dilation):
    """BlurPool2d(max_kernel=...) runs the stride-1 max-pool itself (on channels-last maps on the
    CPU): the same values and gradients as nn.MaxPool2d then BlurPool2d, in the input's layout."""
    from reverso.nn import BlurPool2d
    from reverso.nn.layout import memory_format_of

    torch.manual_seed(0)
    fused = BlurPool2d(6, 4, 2, max_kernel=kernel, max_padding=padding, max_dilation=dilation)
    blur = BlurPool2d(6, 4, 2)
    pool = nn.MaxPool2d(kernel, 1, padding, dilation)
    for x in (
        torch.randn(2, 6, 13, 10),
        torch.randn(2, 6, 13, 10).to(memory_format=torch.channels_last),
    ):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = fused(a)
        assert torch.equal(out, blur(pool(b)))
        assert out.is_contiguous(memory_format=memory_format_of(x))
        out.square().sum().backward()
        blur(pool(b)).square().sum().backward()
        torch.testing.assert_close(a.grad, b.grad)
        assert memory_format_of(a.grad) == memory_format_of(x)  # no channels-last gradient leaks
    assert BlurPool2d.from_config(fused.config()).config() == fused.config()
    x = torch.randn(6, 13, 6)  # an unbatched map whose height is not its channels
    assert torch.equal(fused(x), fused(x[None])[0])
    assert torch.equal(blur(x), blur(x[None])[0])
    unblurred = BlurPool2d(6, 1, 2, max_kernel=kernel, max_padding=padding, max_dilation=dilation)
    x = torch.randn(2, 6, 13, 10)
    assert torch.equal(unblurred(x), pool(x)[..., ::2, ::2])


def test_the_blur_backward_is_the_padded_blurs_gradient():
    """On the CPU BlurPool2d computes its input's gradient on the unpadded map (a transposed conv
    plus the padding's border rows and columns): the gradient of padding then convolving, for
    every filter size, stride, padding mode, odd and even sizes, tiny maps (reflect falling back
    to replicate) and both layouts; the forward is bit for bit the same with and without grad."""
    import itertools

    from reverso.nn import BlurPool2d
    from reverso.nn.layout import memory_format_of

    torch.manual_seed(0)
    cases = itertools.product(
        range(2, 8), (1, 2, 3), ("reflect", "replicate", "zeros"), ((9, 12), (8, 7), (3, 4))
    )
    cases = [*cases, (4, 2, "reflect", (4, 600))]  # longer than MAX_BORDER_AXIS: autograd's
    for size, stride, mode, (h, w) in cases:
        blur = BlurPool2d(3, size, stride, mode).double()
        pad = "constant" if mode == "zeros" else mode
        if pad == "reflect" and max(blur.padding) >= min(h, w):
            pad = "replicate"
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(2, 3, h, w, dtype=torch.float64).contiguous(memory_format=layout)
            x.requires_grad_()
            out = blur(x)
            with torch.no_grad():
                assert torch.equal(out, blur(x))
            oracle = F.conv2d(F.pad(x, blur.padding, mode=pad), blur.filt, stride=stride, groups=3)
            g = torch.randn_like(out)
            (ours,) = torch.autograd.grad(out, x, g)
            (expected,) = torch.autograd.grad(oracle, x, g)
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
            assert memory_format_of(ours) == memory_format_of(x)
    # second derivatives (gradient penalties) go through the backward's own ops
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(BlurPool2d(2, 4, 2).double(), (x,))


@pytest.mark.parametrize("max_kernel", [0, 2])
def test_the_blur_backward_under_autocast_torch_func_forward_ad_and_jit_trace(max_kernel):
    """BlurPool2d's own backward (CPU, autograd recording) under the tools users combine it with:
    bfloat16 autocast (a lower-precision gradient reaches it), torch.func's grad and per-sample
    grads, forward-mode AD, and torch.jit.trace (which records the padded blur instead)."""
    import io

    import torch.autograd.forward_ad as fwAD

    from reverso.nn import BlurPool2d

    torch.manual_seed(0)
    blur = BlurPool2d(4, 4, 2, max_kernel=max_kernel)
    x = torch.randn(2, 4, 8, 8)
    a = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = blur(a)
    out.float().square().sum().backward()
    b = x.clone().requires_grad_()
    blur(b).square().sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0.05, atol=0.05)
    torch.testing.assert_close(torch.func.grad(lambda t: blur(t).square().sum())(x), b.grad)
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), blur)
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss(p, sample):
        return torch.func.functional_call(net, p, (sample[None],)).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
    assert per_sample["0.weight"].shape == (2, 4, 4, 3, 3)
    with fwAD.dual_level():
        tangent = torch.randn_like(x)
        dual = fwAD.make_dual(x.clone().requires_grad_(), tangent)
        out = fwAD.unpack_dual(blur(dual)).tangent
    _, expected = torch.func.jvp(blur, (x,), (tangent,))
    torch.testing.assert_close(out, expected)
    traced = torch.jit.trace(net, torch.randn(2, 4, 16, 16))  # grad enabled, as by default
    torch.jit.save(traced, io.BytesIO())
