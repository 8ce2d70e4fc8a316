"""Models written the way users write them, beyond the spec's reference models."""

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
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip
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
