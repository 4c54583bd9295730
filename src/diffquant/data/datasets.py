"""Built-in data set loaders (`dataset._target_`): bundled digits, torchvision MNIST / Fashion-MNIST / CIFAR-10.

Each returns a `DataSplit` of in-memory tensors in [-1, 1]; any folder of images is `data/image_folder.py`.
A loader takes its settings as keyword arguments from the `dataset` node (and `seed` from the run).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffquant.errors import DiffquantError


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field is ambiguous
class DataSplit:
    """Train and held-out images (float32 [N, C, H, W] in [-1, 1]) with int64 labels [N]."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor

    def __post_init__(self) -> None:
        for images, labels in ((self.train_images, self.train_labels), (self.test_images, self.test_labels)):
            if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
                raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError("train and held-out images differ in shape")

    @property
    def channels(self) -> int:
        """Number of image channels."""
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        """Side length of the (square) images."""
        return int(self.train_images.shape[-1])

    @property
    def num_classes(self) -> int:
        """Largest label over both splits, plus one."""
        return int(torch.cat([self.train_labels, self.test_labels]).max().item()) + 1


def load_digits(
    image_size: int = 16, channels: int = 1, holdout_fraction: float = 0.2, max_train: int | None = None, seed: int = 0
) -> DataSplit:
    """scikit-learn's bundled 8x8 digits, resized to `image_size`, split at random (seeded) with `holdout_fraction` held out."""
    if channels != 1:
        raise DiffquantError(f"dataset.channels={channels} but dataset=digits is grayscale; set dataset.channels=1.")
    pixels, target = digits_arrays()
    images = torch.from_numpy(pixels).float().unsqueeze(1) / 16.0
    labels = torch.from_numpy(target).long()
    return keep_first(random_split(_to_signed(_resize(images, image_size)), labels, holdout_fraction, seed), max_train)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images [1797, 8, 8] in 0..16 and labels, as `sklearn.datasets.load_digits` gives them.

    Read from the CSV scikit-learn ships (what load_digits reads), so a run does not pay for importing
    scikit-learn (seconds per process); its own loader where the file is not found.
    """
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits as sklearn_digits

        bunch = sklearn_digits()
        return bunch.images, bunch.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def load_mnist(
    root: str | None, image_size: int = 28, channels: int = 1, download: bool = False, max_train: int | None = None
) -> DataSplit:
    """torchvision MNIST from `root` (its official train / test split)."""
    return keep_first(_load_torchvision("mnist", "MNIST", root, image_size, channels, download), max_train)


def load_fashion_mnist(
    root: str | None, image_size: int = 28, channels: int = 1, download: bool = False, max_train: int | None = None
) -> DataSplit:
    """torchvision Fashion-MNIST from `root` (its official train / test split)."""
    return keep_first(_load_torchvision("fashion_mnist", "FashionMNIST", root, image_size, channels, download), max_train)


def load_cifar10(
    root: str | None, image_size: int = 32, channels: int = 3, download: bool = False, max_train: int | None = None
) -> DataSplit:
    """torchvision CIFAR-10 from `root` (its official train / test split)."""
    return keep_first(_load_torchvision("cifar10", "CIFAR10", root, image_size, channels, download), max_train)


def keep_first(split: DataSplit, max_train: int | None) -> DataSplit:
    """The first `max_train` images of each split (all of them for None)."""
    if max_train is None:
        return split
    if max_train < 1:
        raise DiffquantError(f"dataset.max_train={max_train} must be positive or null (keep all).")
    return DataSplit(
        split.train_images[:max_train],
        split.train_labels[:max_train],
        split.test_images[:max_train],
        split.test_labels[:max_train],
    )


def iterate_batches(images: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Yield random batches of `images` (sampled with replacement) forever."""
    n = images.shape[0]
    if n == 0 or batch_size < 1:
        raise ValueError(f"need images and a positive batch size, got N={n}, batch_size={batch_size}")
    size = min(batch_size, n)
    while True:
        yield images[torch.randint(0, n, (size,), generator=generator)]


def iterate_labelled(
    images: Tensor, labels: Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield random (images, labels) batches (sampled with replacement) forever, for conditional models."""
    n = images.shape[0]
    if n == 0 or batch_size < 1:
        raise ValueError(f"need images and a positive batch size, got N={n}, batch_size={batch_size}")
    size = min(batch_size, n)
    while True:
        idx = torch.randint(0, n, (size,), generator=generator)
        yield images[idx], labels[idx]


def random_split(images: Tensor, labels: Tensor, holdout_fraction: float, seed: int) -> DataSplit:
    """A seeded random train / held-out split with `holdout_fraction` (at least one image each) held out."""
    if not 0.0 < holdout_fraction < 1.0:
        raise DiffquantError(f"dataset.holdout_fraction={holdout_fraction} must lie strictly between 0 and 1.")
    n = images.shape[0]
    n_test = max(1, min(n - 1, round(n * holdout_fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    return DataSplit(images[train], labels[train], images[test], labels[test])


def _load_torchvision(name: str, class_name: str, root: str | None, image_size: int, channels: int, download: bool) -> DataSplit:
    from torchvision import datasets as tv_datasets  # imported here: torchvision costs seconds per process

    dataset_cls = getattr(tv_datasets, class_name)
    guidance = (
        f"Point dataset.root at a folder holding the torchvision {class_name} files, "
        "or set dataset.download=true to fetch them (needs internet)."
    )
    if not root:
        raise DiffquantError(f"dataset.root is not set (dataset={name}). {guidance}")
    if not download and not os.path.isdir(root):
        raise DiffquantError(f"dataset.root={root!r} does not exist (dataset={name}). {guidance}")
    try:
        train = dataset_cls(root, train=True, download=download)
        test = dataset_cls(root, train=False, download=download)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        detail = " ".join(str(err).split())
        raise DiffquantError(f"Could not load dataset={name} from dataset.root={root!r}: {detail}. {guidance}") from err
    return DataSplit(
        _convert(_uint8_images(train.data), image_size, channels),
        _labels(train.targets),
        _convert(_uint8_images(test.data), image_size, channels),
        _labels(test.targets),
    )


def _uint8_images(data: Tensor | np.ndarray) -> Tensor:
    """MNIST `.data` is a uint8 tensor [N, H, W]; CIFAR-10 `.data` a uint8 array [N, H, W, C]."""
    if isinstance(data, np.ndarray):
        return torch.from_numpy(data).permute(0, 3, 1, 2)
    return data.unsqueeze(1)


def _labels(targets: Tensor | list[int]) -> Tensor:
    return torch.as_tensor(targets, dtype=torch.int64)


def _convert(images: Tensor, image_size: int, channels: int) -> Tensor:
    """uint8 [N, C, H, W] -> float32 [N, channels, image_size, image_size] in [-1, 1]."""
    x = images.float() / 255.0
    if x.shape[1] == 3 and channels == 1:  # before resizing: a third of the work
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        x = (x * weights).sum(dim=1, keepdim=True)
    x = _resize(x, image_size)
    if x.shape[1] == 1 and channels == 3:  # after resizing: a third of the work
        x = x.repeat(1, 3, 1, 1)
    return _to_signed(x)


def _resize(images: Tensor, image_size: int) -> Tensor:
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images
    resized = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return resized.clamp(0.0, 1.0)


def _to_signed(images: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1], float32, contiguous."""
    return (images * 2.0 - 1.0).float().contiguous()
