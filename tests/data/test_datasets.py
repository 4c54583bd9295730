"""The built-in loaders on bundled digits and on tiny fake MNIST / CIFAR-10 folders in torchvision's format."""

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from diffquant.data.datasets import DataSplit, iterate_batches, load_cifar10, load_digits, load_fashion_mnist, load_mnist
from diffquant.errors import DiffquantError

LOADERS = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist, "cifar10": load_cifar10}


def write_fake_mnist(root: Path, n_train: int = 12, n_test: int = 6, folder: str = "MNIST") -> None:
    """Uncompressed idx files under root/<folder>/raw, the names torchvision's MNIST._check_exists wants.

    FashionMNIST subclasses MNIST: same file names and format, under root/FashionMNIST/raw.

    idx header: big-endian magic (0x00000803 = uint8, 3 dims for images; 0x00000801 for labels),
    then one big-endian uint32 per dimension, then the raw uint8 values.
    Image i holds a single pixel of 255 at (i % 28, 3) and zeros elsewhere; its label is i % 10.
    """
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[np.arange(n), np.arange(n) % 28, 3] = 255
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())


def write_fake_cifar10(root: Path, per_batch: int = 2, n_test: int = 4) -> None:
    """Pickled batches under root/cifar-10-batches-py as in the official python archive.

    Each row of "data" is 3072 uint8 values, channel-major (all R, then G, then B, each 32x32
    row-major). Image i has pure red (255, 0, 0) at pixel (2, 5) and is black elsewhere.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n: int, offset: int) -> dict:
        data = np.zeros((n, 3, 32, 32), dtype=np.uint8)
        data[:, 0, 2, 5] = 255
        return {"data": data.reshape(n, 3072), "labels": [(offset + i) % 10 for i in range(n)]}

    for k in range(1, 6):
        (folder / f"data_batch_{k}").write_bytes(pickle.dumps(batch(per_batch, k * per_batch)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test, 0)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))


@pytest.fixture
def skip_cifar_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks the md5 of every CIFAR-10 file (in CIFAR10._check_integrity and in
    _load_meta, both through torchvision.datasets.cifar.check_integrity); fake files cannot match,
    so keep only the existence check."""
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def test_digits_shapes_range_and_split() -> None:
    split = load_digits(image_size=16, channels=1, holdout_fraction=0.2)
    n_test = round(1797 * 0.2)
    assert split.train_images.shape == (1797 - n_test, 1, 16, 16)
    assert split.test_images.shape == (n_test, 1, 16, 16)
    assert split.train_images.dtype == torch.float32 and split.train_labels.dtype == torch.int64
    assert split.train_images.min() >= -1.0 and split.train_images.max() <= 1.0
    assert split.train_images.min() == -1.0  # the blank border of a digit
    assert (split.channels, split.image_size, split.num_classes) == (1, 16, 10)


def test_digits_native_size_keeps_pixel_values() -> None:
    split = load_digits(image_size=8, channels=1)
    values = torch.cat([split.train_images, split.test_images]).unique()
    expected = torch.arange(17, dtype=torch.float32) / 16 * 2 - 1  # levels 0..16 mapped to [-1, 1]
    assert torch.allclose(values, expected)


def test_digits_split_is_seeded() -> None:
    a = load_digits(image_size=8, channels=1, seed=3)
    b = load_digits(image_size=8, channels=1, seed=3)
    c = load_digits(image_size=8, channels=1, seed=4)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.test_images, c.test_images)
    assert a.train_images.shape == c.train_images.shape


def test_digits_rejects_three_channels() -> None:
    with pytest.raises(DiffquantError, match="dataset.channels"):
        load_digits(image_size=16, channels=3)


def test_max_train_truncates_both_splits() -> None:
    split = load_digits(image_size=8, channels=1, max_train=50)
    assert split.train_images.shape[0] == 50 and split.test_images.shape[0] == 50


def test_mnist_native_size(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    split = load_mnist(root=str(tmp_path), image_size=28, channels=1)
    assert split.train_images.shape == (12, 1, 28, 28) and split.test_images.shape == (6, 1, 28, 28)
    assert split.train_labels.tolist() == [i % 10 for i in range(12)]
    assert split.train_images[5, 0, 5, 3] == 1.0  # 255 -> 1.0
    assert split.train_images[5, 0, 5, 4] == -1.0  # 0 -> -1.0
    assert split.train_images.sum() == 12 * 1.0 - (12 * 28 * 28 - 12)


def test_mnist_resized_to_three_channels(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path)
    split = load_mnist(root=str(tmp_path), image_size=32, channels=3, max_train=4)
    assert split.train_images.shape == (4, 3, 32, 32) and split.test_images.shape == (4, 3, 32, 32)
    assert torch.equal(split.train_images[:, 0], split.train_images[:, 2])
    assert split.train_images.min() >= -1.0 and split.train_images.max() <= 1.0
    assert split.train_images.max() > -1.0  # the bright pixel survives resizing


def test_fashion_mnist_reads_its_own_folder(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path, n_train=10, n_test=4, folder="FashionMNIST")
    split = load_fashion_mnist(root=str(tmp_path), image_size=16, channels=1)
    assert split.train_images.shape == (10, 1, 16, 16) and split.test_images.shape == (4, 1, 16, 16)
    assert split.train_labels.tolist() == [i % 10 for i in range(10)] and split.test_labels.tolist() == [0, 1, 2, 3]
    assert split.train_images.min() == -1.0 and -1.0 < split.train_images.max() <= 1.0
    write_fake_mnist(tmp_path / "mnist_only")
    with pytest.raises(DiffquantError, match="FashionMNIST files"):  # MNIST's folder is not Fashion-MNIST's
        load_fashion_mnist(root=str(tmp_path / "mnist_only"), image_size=28, channels=1)


def test_cifar10_rgb_layout(tmp_path: Path, skip_cifar_md5: None) -> None:
    write_fake_cifar10(tmp_path)
    split = load_cifar10(root=str(tmp_path), image_size=32, channels=3)
    assert split.train_images.shape == (10, 3, 32, 32) and split.test_images.shape == (4, 3, 32, 32)
    assert split.train_labels.tolist() == [(2 + i) % 10 for i in range(10)]
    assert torch.equal(split.train_images[:, :, 2, 5], torch.tensor([[1.0, -1.0, -1.0]] * 10))
    assert split.train_images.sum() == 10 * (1.0 - (3 * 32 * 32 - 1))


def test_cifar10_to_grayscale_uses_luminance(tmp_path: Path, skip_cifar_md5: None) -> None:
    write_fake_cifar10(tmp_path)
    split = load_cifar10(root=str(tmp_path), image_size=32, channels=1)
    assert split.test_images.shape == (4, 1, 32, 32)
    assert split.test_images[0, 0, 2, 5].item() == pytest.approx(0.299 * 2 - 1, abs=1e-6)
    small = load_cifar10(root=str(tmp_path), image_size=16, channels=1)
    assert small.train_images.shape == (10, 1, 16, 16)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
@pytest.mark.parametrize("root", [None, "", "missing"], ids=["none", "empty", "missing-folder"])
def test_missing_root_explains_the_fix(tmp_path: Path, name: str, root: str | None) -> None:
    if root == "missing":
        root = str(tmp_path / "missing")
    with pytest.raises(DiffquantError, match="dataset.root") as info:
        LOADERS[name](root=root, image_size=28, channels=1)
    assert "download" in str(info.value)


def test_empty_root_wraps_torchvision_error(tmp_path: Path) -> None:
    with pytest.raises(DiffquantError, match="Dataset not found") as info:
        load_mnist(root=str(tmp_path), image_size=28, channels=1)
    assert "dataset.root" in str(info.value) and "dataset.download=true" in str(info.value)


def test_cifar10_checksum_mismatch_is_wrapped(tmp_path: Path) -> None:
    write_fake_cifar10(tmp_path)  # real md5 check: the fake files count as corrupted
    with pytest.raises(DiffquantError, match="corrupted") as info:
        load_cifar10(root=str(tmp_path), image_size=32, channels=3)
    assert "dataset.root" in str(info.value) and "CIFAR10" in str(info.value)


def test_datasplit_properties_and_validation() -> None:
    images = torch.zeros(4, 3, 8, 8)
    split = DataSplit(images, torch.tensor([0, 1, 2, 6]), images[:2], torch.tensor([0, 1]))
    assert (split.channels, split.image_size, split.num_classes) == (3, 8, 7)
    with pytest.raises(ValueError):
        DataSplit(images, torch.tensor([0, 1]), images, torch.tensor([0, 1, 2, 3]))


def test_iterate_batches_is_seeded_and_clipped() -> None:
    images = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1)
    first = iterate_batches(images, 4, torch.Generator().manual_seed(0))
    second = iterate_batches(images, 4, torch.Generator().manual_seed(0))
    batches = [next(first) for _ in range(3)]
    assert all(torch.equal(b, next(second)) for b in batches)
    assert all(b.shape == (4, 1, 1, 1) for b in batches)
    assert not torch.equal(batches[0], batches[1])
    assert next(iterate_batches(images, 64, torch.Generator())).shape == (10, 1, 1, 1)


def test_digits_read_from_the_csv_equal_scikit_learns_loader() -> None:
    from sklearn.datasets import load_digits as sklearn_digits

    from diffquant.data.datasets import digits_arrays

    images, labels = digits_arrays()
    bunch = sklearn_digits()
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(labels, bunch.target)
    assert images.shape == (1797, 8, 8) and labels.dtype.kind == "i"
