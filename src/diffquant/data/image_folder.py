"""Any folder of images as a data set: read with PIL, resized and center-cropped to a square.

Layout: images in one sub-folder per class (`root/<class>/**/*.png`, labels 0..K-1 in sorted
folder-name order, as torchvision's ImageFolder) or directly in `root` (every label 0).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from diffquant.data.datasets import DataSplit, keep_first, random_split
from diffquant.errors import DiffquantError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
LAYOUT = "a folder of .png / .jpg images, or of one sub-folder of images per class"


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in files
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def find_images(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files, their labels and the class names (empty for a flat folder, where every label is 0)."""
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = [(d.name, files) for d in class_dirs if (files := _images_in(d, recursive=True))]
    if not classes:
        files = _images_in(root, recursive=False)
        return files, [0] * len(files), []
    loose = _images_in(root, recursive=False)
    if loose:
        logging.getLogger("diffquant").warning(
            "dataset.root=%s: %d images next to the class folders are ignored", root, len(loose)
        )
    files = [f for _, fs in classes for f in fs]
    labels = [label for label, (_, fs) in enumerate(classes) for _ in fs]
    return files, labels, [name for name, _ in classes]


def read_image(path: Path, image_size: int, channels: int) -> Tensor:
    """One file as uint8 [channels, image_size, image_size]: shorter side resized, then center-cropped."""
    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB")  # "L": ITU-R 601 luma, as for CIFAR-10
    from torchvision.transforms import functional as TF  # imported here: torchvision costs seconds per process

    img = TF.center_crop(TF.resize(img, image_size), [image_size, image_size])
    return TF.pil_to_tensor(img)


def load_image_folder(
    root: str | None,
    image_size: int = 32,
    channels: int = 3,
    holdout_fraction: float = 0.1,
    max_train: int | None = None,
    seed: int = 0,
) -> DataSplit:
    """The images of `root` split at random (seeded) with `holdout_fraction` held out (`dataset=image_folder`)."""
    images, labels = read_image_folder(root, image_size, channels)
    return keep_first(random_split(images, labels, holdout_fraction, seed), max_train)


def read_image_folder(root: str | None, image_size: int, channels: int) -> tuple[Tensor, Tensor]:
    """All images of `root` as float32 [N, channels, image_size, image_size] in [-1, 1] and int64 labels [N]."""
    if not root:
        raise DiffquantError(f"dataset.root is not set (dataset=image_folder). Point it at {LAYOUT}.")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DiffquantError(f"dataset.root={root!r} does not exist (dataset=image_folder). Point it at {LAYOUT}.")
    files, labels, classes = find_images(folder)
    if len(files) < 2:
        raise DiffquantError(
            f"dataset.root={root!r} holds {len(files)} image files ({', '.join(IMAGE_SUFFIXES)}) "
            f"(dataset=image_folder); need at least 2 for a train / held-out split. Point it at {LAYOUT}."
        )
    images = []
    for path in files:
        try:
            images.append(read_image(path, image_size, channels))
        except (OSError, ValueError, SyntaxError) as err:  # PIL: UnidentifiedImageError is an OSError
            detail = " ".join(str(err).split())
            raise DiffquantError(
                f"dataset.root={root!r} (dataset=image_folder): cannot read the image file "
                f"{str(path)!r} ({type(err).__name__}: {detail})"
            ) from None
    logging.getLogger("diffquant").info(
        "dataset.root=%s: %d images, %s",
        root,
        len(files),
        f"{len(classes)} classes ({', '.join(classes)})" if classes else "no class folders",
    )
    x = torch.stack(images).float() / 255.0 * 2.0 - 1.0
    return x.contiguous(), torch.tensor(labels, dtype=torch.int64)
