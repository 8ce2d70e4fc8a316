"""Datasets read from a local copy (``root``) with torchvision's file layouts, never downloaded:
MNIST, Fashion-MNIST, CIFAR-10 and Imagenette-style image folders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reverso.errors import DatasetError, check_count
from reverso.study.array_pickle import read_array_pickle
from reverso.study.image_files import ImageFiles
from reverso.study.images import Data, TensorImages

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
    """The four IDX files of ``root/folder/raw``, read as they are (torchvision's own reader would
    prefer a ``processed/*.pt`` it finds there, which is a pickle)."""
    root = Path(root).expanduser()
    raw = root / folder / "raw"
    missing = [f for f in MNIST_FILES if not (raw / f).is_file()]
    if missing:
        raise DatasetError(
            f"{name}: looked in {raw} for the unzipped IDX files {', '.join(MNIST_FILES)}; "
            f"missing {', '.join(missing)}. Put the four files there (gunzip the downloads) and "
            f"pass root={root}."
        )
    splits = []
    for images_file, labels_file in (MNIST_FILES[:2], MNIST_FILES[2:]):
        images, labels = read_idx(raw / images_file, 3), read_idx(raw / labels_file, 1)
        if len(images) != len(labels):
            raise DatasetError(
                f"{name}: {raw / images_file} holds {len(images)} images and {raw / labels_file} "
                f"{len(labels)} labels; they must be as many"
            )
        if len(labels) and int(labels.max()) >= len(classes):
            raise DatasetError(f"{name}: labels in {raw} outside 0..{len(classes) - 1}")
        splits.append(TensorImages(torch.from_numpy(images)[:, None], torch.from_numpy(labels)))
    size = tuple(splits[0].images.shape[1:])
    return Data(name, splits[0], splits[1], size, classes, root=root)


def read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``dims`` dimensions (magic ``0 0 8 dims``, then each
    size as a big-endian int32, then the bytes), its size checked against its header."""
    raw = np.fromfile(path, dtype=np.uint8)
    header = 4 + 4 * dims
    if raw.size < header or tuple(raw[:4]) != (0, 0, 8, dims):
        raise DatasetError(
            f"{path} is not an IDX file of unsigned bytes with {dims} dimensions (its first "
            "bytes differ); replace it with the original, unzipped file"
        )
    shape = tuple(int(v) for v in raw[4:header].view(">i4"))
    if raw.size != header + int(np.prod(shape)):
        raise DatasetError(
            f"{path} declares {shape} bytes of data but holds {raw.size - header}; the file is "
            "truncated or corrupt"
        )
    return raw[header:].reshape(shape).astype(np.int64 if dims == 1 else np.uint8)


CIFAR_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def cifar10(root: str | Path, *, pixel_mean: bool = True, verify: bool = True) -> Data:
    """CIFAR-10 from ``root``: the binary version (``cifar-10-batches-bin/``) or the Python
    version (``cifar-10-batches-py/``, read without running any code of the files: only the
    dicts, lists, strings, bytes and numeric arrays the format holds are built). With ``verify``
    each Python batch must be the official file (MD5); pass ``verify=False`` for a copy you
    repacked yourself. With ``pixel_mean`` the training set's per-pixel mean is subtracted (the
    paper's protocol)."""
    root = Path(root).expanduser()
    if (root / "cifar-10-batches-bin").is_dir():
        train, test = _cifar_binary(root / "cifar-10-batches-bin")
    elif (root / "cifar-10-batches-py").is_dir():
        train, test = _cifar_python(root / "cifar-10-batches-py", verify)
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


def _cifar_python(folder: Path, verify: bool) -> tuple[TensorImages, TensorImages]:
    """The pickled batches, each a dict with ``data`` (N x 3072 uint8) and ``labels``."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    splits = []
    for files in (CIFAR10.train_list, CIFAR10.test_list):
        images, labels = [], []
        for name, md5 in files:
            path = folder / name
            if not path.is_file():
                raise DatasetError(f"cifar10: missing {path}")
            if verify and not check_integrity(str(path), md5):
                raise DatasetError(
                    f"cifar10: {path} is not the official CIFAR-10 file (its MD5 differs). "
                    "Replace it with the original, pass verify=False for a copy you repacked "
                    "yourself, or use the binary version (cifar-10-batches-bin/)"
                )
            data, labels_ = _cifar_batch(path)
            images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
            labels.append(torch.from_numpy(labels_))
        splits.append(TensorImages(torch.cat(images), torch.cat(labels)))
    return splits[0], splits[1]


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One Python batch: its images (N x 3072 uint8) and labels (N int64 in 0..9), checked."""
    batch = read_array_pickle(path)
    data = batch.get("data") if isinstance(batch, dict) else None
    labels = batch.get("labels") if isinstance(batch, dict) else None
    shaped = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
    if not (shaped and data.shape[1] == 3072 and isinstance(labels, list)):
        raise DatasetError(
            f"cifar10: {path} does not hold a dict with 'data' (N x 3072 uint8) and 'labels' "
            "(a list of N ints); the file is corrupt"
        )
    if len(labels) != len(data) or not all(type(v) is int and 0 <= v <= 9 for v in labels):
        raise DatasetError(f"cifar10: {path} has labels other than N ints in 0-9; it is corrupt")
    return data, np.asarray(labels, dtype=np.int64)


def image_folder(
    root: str | Path,
    size: int = 128,
    *,
    train: str = "train",
    test: str = "val",
    recipe: str | None = None,
) -> Data:
    """An Imagenette-style folder: ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG``
    (listed as :class:`~reverso.study.image_files.ImageFiles` does: links followed once, only
    regular image files); images are resized (shorter side) and centre-cropped to
    ``size`` and converted to RGB in [0, 1]. ``recipe="imagenette"`` reads them as the reference
    code does instead: training images resized to 156x156 (for size 128; aspect not kept), a
    random crop, a flip and PCA lighting noise; test images resized to ``size`` x ``size``; the
    per-pixel mean of the (resized) training images is subtracted."""
    from torchvision import transforms

    from reverso.study.recipes import imagenette_transforms

    check_count("size", size)
    if recipe not in (None, "imagenette"):
        raise DatasetError(f"image folder: recipe must be None or 'imagenette', got {recipe!r}")
    root = Path(root).expanduser()
    transform = transforms.Compose(
        [
            transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
        ]
    )
    train_transform = test_transform = transform
    if recipe == "imagenette":
        train_transform, test_transform = imagenette_transforms(size)
    splits = {}
    for split in (train, test):
        folder = root / split
        if not folder.is_dir():
            raise DatasetError(
                f"image folder: looked for {folder}/<class>/<image> but {folder} does not exist; "
                f"expected {root}/{train}/ and {root}/{test}/ with one sub-folder per class"
            )
        chosen = train_transform if split == train else test_transform
        splits[split] = ImageFiles(folder, transform=chosen)
    if splits[train].classes != splits[test].classes:
        raise DatasetError(
            f"image folder: {root / train} and {root / test} have different classes: "
            f"{splits[train].classes} vs {splits[test].classes}"
        )
    mean = None
    if recipe == "imagenette":  # the per-pixel mean of the training images, read as test ones
        plain = ImageFiles(root / train, transform=test_transform)
        mean = sum(plain[i][0] for i in range(len(plain))) / max(len(plain), 1)
    return Data(
        "image_folder",
        splits[train],
        splits[test],
        (3, size, size),
        splits[train].classes,
        mean=mean,
        root=root,
        recipe=recipe,
    )
