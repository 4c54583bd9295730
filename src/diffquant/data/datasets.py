"""Image datasets as in-memory tensors in [-1, 1]: bundled digits, torchvision MNIST / Fashion-MNIST / CIFAR-10,
and any folder of images (`data/image_folder.py`)."""

import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor
from torchvision import datasets as tv_datasets

from diffquant.data.image_folder import load_image_folder
from diffquant.errors import DiffquantError

DATASET_NAMES = ("digits", "mnist", "fashion_mnist", "cifar10", "image_folder")
TORCHVISION_SETS = {"mnist": tv_datasets.MNIST, "fashion_mnist": tv_datasets.FashionMNIST, "cifar10": tv_datasets.CIFAR10}


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


def load_dataset(
    name: str,
    *,
    root: str | None,
    image_size: int,
    channels: int,
    download: bool = False,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
) -> DataSplit:
    """Load `name` resized to `image_size` with `channels` channels, scaled to [-1, 1].

    `digits` and `image_folder` are split at random (seeded) with `holdout_fraction` held out;
    `mnist`, `fashion_mnist` and `cifar10` use their official train / test sets. `max_train` keeps the first images of each split.
    """
    if image_size < 1:
        raise DiffquantError(f"dataset.image_size={image_size} must be a positive integer.")
    if channels not in (1, 3):
        raise DiffquantError(f"dataset.channels={channels} is not supported; use 1 or 3.")
    if max_train is not None and max_train < 1:
        raise DiffquantError(f"dataset.max_train={max_train} must be positive or null (keep all).")
    if name == "digits":
        split = _load_digits(image_size, channels, holdout_fraction, seed)
    elif name in TORCHVISION_SETS:
        split = _load_torchvision(name, root, image_size, channels, download)
    elif name == "image_folder":
        images, labels = load_image_folder(root, image_size, channels)
        split = random_split(images, labels, holdout_fraction, seed)
    else:
        raise DiffquantError(f"dataset.name={name!r} is unknown; choose one of: {', '.join(DATASET_NAMES)}.")
    if max_train is None:
        return split
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


def _load_digits(image_size: int, channels: int, holdout_fraction: float, seed: int) -> DataSplit:
    if channels != 1:
        raise DiffquantError(f"dataset.channels={channels} but dataset=digits is grayscale; set dataset.channels=1.")
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0
    labels = torch.from_numpy(bunch.target).long()
    return random_split(_to_signed(_resize(images, image_size)), labels, holdout_fraction, seed)


def random_split(images: Tensor, labels: Tensor, holdout_fraction: float, seed: int) -> DataSplit:
    """A seeded random train / held-out split with `holdout_fraction` (at least one image each) held out."""
    if not 0.0 < holdout_fraction < 1.0:
        raise DiffquantError(f"dataset.holdout_fraction={holdout_fraction} must lie strictly between 0 and 1.")
    n = images.shape[0]
    n_test = max(1, min(n - 1, round(n * holdout_fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    return DataSplit(images[train], labels[train], images[test], labels[test])


def _load_torchvision(name: str, root: str | None, image_size: int, channels: int, download: bool) -> DataSplit:
    dataset_cls = TORCHVISION_SETS[name]
    guidance = (
        f"Point dataset.root at a folder holding the torchvision {dataset_cls.__name__} files, "
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
