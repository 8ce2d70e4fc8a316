"""Models written the way users write them, beyond the top-down paper's reference models."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import reverso
from reverso.nn import Merge


class LeNet5(nn.Module):
    """Unpadded 5x5 convs (maps shrink without downsampling) and a flatten + MLP head."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))))


def test_unpadded_convs_do_not_count_as_downsampling():
    report = reverso.analyze(LeNet5(), (1, 28, 28))
    assert [t.kind for t in report.transitions] == [
        "standalone",
        "standalone",
    ]  # the two pools only
    assert report.levels == 2


def test_flatten_head_is_rebuilt_for_the_top_down_feature_map():
    td = reverso.topdown(LeNet5(), input_size=(1, 28, 28))
    fc1 = next(m for m in td.head.modules() if isinstance(m, nn.Linear))
    assert (
        fc1.in_features == 6 * 28 * 28
    )  # the top-down net ends at full resolution with conv1's 6 channels
    assert td(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_all_convolutional_net_with_strided_convs():
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(64, 10, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    report = reverso.analyze(model, (3, 32, 32))
    assert [t.kind for t in report.transitions] == ["inside", "inside"]  # strided convs open groups
    td = reverso.topdown(model, input_size=(3, 32, 32))
    assert sum(isinstance(m, Merge) for m in td.modules()) == 2
    assert td.forward_features(torch.rand(1, 3, 32, 32)).shape[-2:] == (32, 32)


def test_dilated_resnet_keeps_only_its_real_downsampling():
    model = torchvision.models.resnet50(
        num_classes=10, replace_stride_with_dilation=[False, True, True]
    )
    report = reverso.analyze(model, (3, 64, 64))
    assert report.levels == 3  # output stride 8: stem conv, max-pool, layer2
    td = reverso.topdown(model, input_size=(3, 64, 64))
    assert td(torch.rand(2, 3, 64, 64)).shape == (2, 10)


def _cbr(i, o, stride=1, k=3):
    return nn.Sequential(
        nn.Conv2d(i, o, k, stride, k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU()
    )


def _trains(net, size, batch=2):
    """One forward and backward: the output's shape, every gradient finite."""
    y = net.train()(torch.rand(batch, *size))
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    return y.shape


def test_all_strided_cnn_reverses_every_level():
    """Every conv strided (a DCGAN discriminator's layout): nothing runs at the input's level,
    and the strided layers are the levels to reverse, not a patch embedding."""
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3)]
    model = nn.Sequential(_cbr(3, 8, 2), _cbr(8, 16, 2), _cbr(16, 32, 2), *head)
    report = reverso.analyze(model, (3, 64, 64))
    assert len(report.transitions) == 3 and report.levels == 3
    td = reverso.topdown(model, input_size=(3, 64, 64))
    # it starts on the image at level 3 and merges the image at levels 2 and 1, where it ends
    assert sum(isinstance(m, Merge) for m in td.modules()) == 2
    assert td.forward_features(torch.rand(1, 3, 64, 64)).shape[-2:] == (32, 32)
    assert _trains(td, (3, 64, 64)) == (2, 3)


def test_strided_stem_then_one_resolution_is_a_cnn_but_tokens_are_a_transformer():
    body = [nn.Conv2d(3, 16, 4, 4), nn.GroupNorm(4, 16), nn.GELU(), nn.Conv2d(16, 32, 2, 2)]
    cnn = nn.Sequential(
        *body,
        nn.Conv2d(32, 32, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 3),
    )
    for arrangement in ("td", "uni", "rev"):  # rev moves the even 2x2 kernel to a strided conv
        td = reverso.topdown(cnn, input_size=(3, 64, 64), arrangement=arrangement)
        assert _trains(td, (3, 64, 64)) == (2, 3)

    class Tokens(nn.Module):  # the same stem, then a transformer on (B, N, C) tokens
        def __init__(self):
            super().__init__()
            self.stem, self.mix, self.fc = nn.Sequential(*body), nn.Linear(32, 32), nn.Linear(32, 3)

        def forward(self, x):
            tokens = self.stem(x).flatten(2).transpose(1, 2)
            return self.fc(self.mix(tokens).mean(1))

    with pytest.raises(reverso.NoDownsamplingError, match=r"patch embedding.*tokens"):
        reverso.topdown(Tokens(), input_size=(3, 64, 64))


class PoolsWithIndices(nn.Module):
    """Max-pools asked for their indices, which only ``unpool`` reads."""

    def __init__(self, unpool: bool):
        super().__init__()
        self.a, self.b, self.c = _cbr(3, 8), _cbr(8, 16), _cbr(16, 16)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2) if unpool else None
        self.gpool, self.fc = nn.AdaptiveMaxPool2d(1, return_indices=True), nn.Linear(16, 3)

    def forward(self, x):
        x, indices = self.pool(self.a(x))
        if self.unpool is not None:  # down and back up inside one block, then down again
            x = F.max_pool2d(self.unpool(x, indices), 2)
        x, _ = F.max_pool2d(self.b(x), 2, return_indices=True)
        y, _ = self.gpool(self.c(x))
        return self.fc(y.flatten(1))


@pytest.mark.parametrize("unpool", [False, True])
def test_max_pools_that_return_indices(unpool):
    model = PoolsWithIndices(unpool).eval()
    td = reverso.topdown(model, input_size=(3, 32, 32))
    assert len(reverso.analyze(model, (3, 32, 32)).transitions) == 2
    assert _trains(td, (3, 32, 32)) == (2, 3)
    assert model.pool.return_indices and model.gpool.return_indices  # the model is untouched
    if not unpool:
        x = torch.rand(2, 3, 32, 32)
        same = reverso.antialias(model, input_size=(3, 32, 32), filter_size=1, stem=True)
        torch.testing.assert_close(same.eval()(x), model(x))  # the pools are blur pools now
        return
    with pytest.raises(reverso.UnsupportedTopologyError, match=r"'pool'.*indices.*MaxUnpool2d"):
        reverso.antialias(model, input_size=(3, 32, 32))


@pytest.mark.parametrize(
    "down",
    [
        lambda: nn.Upsample(scale_factor=0.5, mode="bilinear"),
        lambda: nn.Upsample(scale_factor=0.5, mode="nearest"),
    ],
)
def test_a_resize_that_shrinks_is_a_pool(down):
    model = nn.Sequential(
        _cbr(3, 8),
        down(),
        _cbr(8, 16),
        down(),
        _cbr(16, 16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    kinds = [t.kind for t in reverso.analyze(model, (3, 32, 32)).transitions]
    assert kinds == ["standalone", "standalone"]
    td = reverso.topdown(model, input_size=(3, 32, 32))
    assert not any(isinstance(m, nn.Upsample) for m in td.modules())  # mirrored, not kept
    assert _trains(td, (3, 32, 32)) == (2, 3)


def test_functional_interpolate_downsampling():
    class Interp(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = _cbr(3, 8), _cbr(8, 16), nn.Linear(16, 3)

        def forward(self, x):
            x = F.interpolate(self.a(x), scale_factor=0.5, mode="bilinear")
            return self.fc(self.b(x).mean((2, 3)))

    assert _trains(reverso.topdown(Interp(), input_size=(3, 32, 32)), (3, 32, 32)) == (2, 3)


class ViewHead(nn.Module):
    """A flatten head written with ``x.view``, which needs a dense map."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(_cbr(3, 8), nn.MaxPool2d(2), _cbr(8, 16), nn.MaxPool2d(2))
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = self.f(x)
        return self.fc(x.view(x.size(0), -1))


def test_layers_hand_on_dense_maps_to_a_view_head():
    """A strided slice (antialias with filter_size=1) and a cropped blur upsampling are views; the
    layers return them dense, in their input's layout."""
    model = ViewHead().eval()
    x = torch.rand(2, 3, 32, 32)
    same = reverso.antialias(model, input_size=(3, 32, 32), filter_size=1).eval()
    torch.testing.assert_close(same(x), model(x))
    td = reverso.topdown(model, input_size=(3, 32, 32), upsample="blur", merge_width="inner")
    assert _trains(td, (3, 32, 32)) == (2, 10)
    up = reverso.nn.Upsample("blur")
    y = up(torch.rand(1, 4, 5, 5).to(memory_format=torch.channels_last), torch.rand(1, 1, 9, 9))
    assert y.shape == (1, 4, 9, 9) and y.is_contiguous(memory_format=torch.channels_last)


def test_instance_norms_follow_new_widths():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1),
        nn.InstanceNorm2d(16, affine=True),
        nn.LeakyReLU(0.2),
        nn.Conv2d(16, 32, 3, 2, 1),
        nn.InstanceNorm2d(32, track_running_stats=True),
        nn.PReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 3),
    )
    for arrangement in ("td", "rev", 24):
        td = reverso.topdown(model, input_size=(3, 32, 32), arrangement=arrangement)
        norms = [m for m in td.features.modules() if isinstance(m, nn.InstanceNorm2d)]
        assert norms and all(m.weight is None or m.weight.numel() == m.num_features for m in norms)
        assert _trains(td, (3, 32, 32)) == (2, 3)


class CifarBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out += self.shortcut(x)
        return F.relu(out)


class CifarNet(nn.Module):
    """The layout of popular CIFAR training code: the last 4x4 map pooled by a window of its
    size (``F.avg_pool2d(out, 4)``, or computed from the shape), then ``view`` and a Linear."""

    def __init__(self, pool: str):
        super().__init__()
        self.pool = pool
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.layers = nn.Sequential(
            CifarBlock(8, 8, 1), CifarBlock(8, 16, 2), CifarBlock(16, 16, 2), CifarBlock(16, 32, 2)
        )
        self.avg = nn.AvgPool2d(4)
        self.linear = nn.Linear(32, 10)

    def forward(self, x):
        out = self.layers(self.stem(x))
        if self.pool == "fixed":
            out = F.avg_pool2d(out, 4)
        elif self.pool == "from_shape":
            out = F.avg_pool2d(out, out.size()[2:])
        elif self.pool == "module":
            out = self.avg(out)
        else:
            out = F.max_pool2d(out, out.size(3))
        return self.linear(out.view(out.size(0), -1))


@pytest.mark.parametrize("pool", ["fixed", "from_shape", "module", "max"])
def test_a_window_as_large_as_the_last_map_is_global_pooling(pool):
    """At the traced size the pool reads the whole map: it is the head's global pooling (not a
    fourth downsampling), so the top-down net pools its full-resolution map globally and takes
    other input sizes."""
    model = CifarNet(pool).eval()
    report = reverso.analyze(model, (3, 32, 32))
    assert len(report.transitions) == 3 and report.levels == 3
    assert report.units[-1].nodes[0].startswith("adaptive_")  # the head starts at the pool
    td = reverso.topdown(model, input_size=(3, 32, 32))
    for side in (32, 40, 64):
        assert td.eval()(torch.rand(2, 3, side, side)).shape == (2, 10)
    assert _trains(td, (3, 32, 32)) == (2, 10)
    # the head's pool is no aliasing: six strided convs, the first kept (stem=False)
    blurred = reverso.antialias(model, input_size=(3, 32, 32))
    assert sum(isinstance(m, reverso.nn.BlurPool2d) for m in blurred.modules()) == 5
    x = torch.rand(2, 3, 32, 32)
    same = reverso.antialias(model, input_size=(3, 32, 32), filter_size=1, stem=True).eval()
    torch.testing.assert_close(same(x), model(x))


class BiasedNet(nn.Module):
    """Convs with biases (timm's and torchvision's have none) and a mean head."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, 2, 1)
        self.c3, self.fc = nn.Conv2d(16, 16, 3, 2, 1), nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


def _resnet10t():
    import timm

    return timm.create_model("resnet10t", num_classes=10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "convert, make",
    [("topdown", BiasedNet), ("antialias", BiasedNet), ("hierarchical", BiasedNet),
     ("reversible", _resnet10t)],
)  # fmt: skip
def test_a_model_in_another_dtype_is_converted_in_that_dtype(convert, make, dtype):
    """The layers a pass makes take the model's dtype (they were float32: a float64 or bfloat16
    model failed inside the pass or at its first forward, or kept float32 filters), and a
    bfloat16 reversible net runs its branches in bfloat16 around the float32 trunk."""
    torch.manual_seed(0)
    converted = getattr(reverso, convert)(make().to(dtype), input_size=(3, 32, 32))
    tensors = [*converted.parameters(), *converted.buffers()]
    assert {t.dtype for t in tensors if t.is_floating_point()} == {dtype}
    y = converted(torch.rand(2, 3, 32, 32, dtype=dtype))
    y.float().sum().backward()
    assert y.dtype == dtype and y.shape == (2, 10) and torch.isfinite(y).all()
    assert all(p.grad is not None and p.grad.dtype == dtype for p in converted.parameters())


@pytest.mark.parametrize("convert", ["antialias", "reversible", "njet", "checkpoint"])
def test_a_model_on_the_meta_device_converts_to_one_on_the_meta_device(convert):
    """Every layer a pass makes or rebuilds lives where the model does (antialias's blurs and
    reversible's rebuilt convs were created on the CPU, in a network otherwise on meta)."""
    with torch.device("meta"):
        model = _resnet10t()
    converted = getattr(reverso, convert)(model, input_size=(3, 32, 32))
    assert {t.device.type for t in [*converted.parameters(), *converted.buffers()]} == {"meta"}
    converted = reverso.nn.init_non_persistent_buffers(converted.to_empty(device="cpu"))
    for blur in (m for m in converted.modules() if isinstance(m, reverso.nn.BlurPool2d)):
        fresh = reverso.nn.BlurPool2d(blur.channels, blur.filter_size, blur.stride)
        assert torch.equal(dict(blur.named_buffers())["filt"], dict(fresh.named_buffers())["filt"])
    # materialised, it takes the weights of the same conversion built on the CPU
    reference = getattr(reverso, convert)(_resnet10t(), input_size=(3, 32, 32)).eval()
    converted.load_state_dict(reference.state_dict())
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(converted.eval()(x), reference(x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_the_study_and_testing_tools_feed_a_model_in_its_own_dtype(dtype):
    """erf and reverso.testing drew float32 inputs, which a float64 or bfloat16 model refused."""
    from reverso.testing import check_topdown

    model = BiasedNet().to(dtype)
    td = check_topdown(model, (3, 32, 32))
    assert next(td.parameters()).dtype == dtype
    for net in (model, td):
        erf = reverso.erf(net, input_size=(3, 32, 32), samples=2)
        assert erf.map.shape == (32, 32) and torch.isfinite(erf.map).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_training_and_evaluation_tools_take_a_model_in_another_dtype(dtype):
    """reverso's data is float32: train, evaluate, gradcam, the shift metrics and the attacks
    (foolbox's float32 batches) now hand the model its batches in its own dtype."""
    from reverso.study.images import Data, TensorImages

    torch.manual_seed(0)
    images, labels = torch.rand(48, 3, 32, 32), torch.randint(0, 10, (48,))
    data = Data(
        "toy",
        TensorImages(images[:32], labels[:32]),
        TensorImages(images[32:], labels[32:]),
        (3, 32, 32),
        [str(i) for i in range(10)],
    )
    td = reverso.topdown(BiasedNet().to(dtype), input_size=(3, 32, 32))
    result = reverso.train(td, data, epochs=1, batch_size=16, progress=False)
    assert 0 <= result.runs[0].test_accuracy <= 1 and 0 <= reverso.evaluate(td, data) <= 1
    x = images[:4]
    assert torch.isfinite(reverso.gradcam(td, x, target=1).maps).all()
    assert 0 <= reverso.shift_adversary_accuracy(td, x, labels[:4], max_shift=1) <= 1
    assert 0 <= reverso.shift_consistency(td, x, max_shift=2, pairs=1) <= 1
    report = reverso.robustness(
        td, data, attacks="gaussian_noise", repeats=1, samples=4, levels=[0], progress=False
    )
    result = report["gaussian_noise"]
    assert report.levels == (0,) and result.norms.shape == (4,) and (result.norms >= 0).all()
