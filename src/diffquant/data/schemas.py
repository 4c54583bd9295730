"""Typed schemas of the built-in data set loaders: the settings each reads, with their range checks.

A `dataset` node whose `_target_` is one of a schema's `targets` is validated against it; any other
loader against its own signature. `seed` is not a field: the pipeline passes the run's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from diffquant.errors import check_choice, check_range


@dataclass
class ImageSetConfig:
    """What every built-in loader reads: the image size and channels, and how many images to keep."""

    targets: ClassVar[tuple[str, ...]] = ()
    image_size: int = 16
    channels: int = 1
    max_train: Optional[int] = None  # keep the first images of each split

    def __post_init__(self) -> None:
        check_range("dataset.image_size", self.image_size, 4, 256)
        check_choice("dataset.channels", self.channels, (1, 3))
        if self.max_train is not None:
            check_range("dataset.max_train", self.max_train, 1)


@dataclass
class DigitsConfig(ImageSetConfig):
    """`load_digits`: scikit-learn's bundled digits, split at random."""

    targets: ClassVar[tuple[str, ...]] = ("diffquant.data.datasets.load_digits",)
    holdout_fraction: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("dataset.holdout_fraction", self.holdout_fraction, 0.01, 0.9)


@dataclass
class TorchvisionConfig(ImageSetConfig):
    """torchvision's MNIST, Fashion-MNIST and CIFAR-10 (their official test split is the held-out set)."""

    targets: ClassVar[tuple[str, ...]] = tuple(
        f"diffquant.data.datasets.load_{name}" for name in ("mnist", "fashion_mnist", "cifar10")
    )
    root: Optional[str] = None
    download: bool = False


@dataclass
class ImageFolderConfig(ImageSetConfig):
    """`load_image_folder`: any folder of images, split at random."""

    targets: ClassVar[tuple[str, ...]] = ("diffquant.data.image_folder.load_image_folder",)
    root: Optional[str] = None
    holdout_fraction: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("dataset.holdout_fraction", self.holdout_fraction, 0.01, 0.9)


def dataset_schemas() -> tuple[type, ...]:
    """The schemas of the built-in data set loaders."""
    return (DigitsConfig, TorchvisionConfig, ImageFolderConfig)
