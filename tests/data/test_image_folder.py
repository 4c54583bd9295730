"""dataset=image_folder on tiny PNG folders: class sub-folders, a flat folder, resizing and cropping, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffquant.data.image_folder import load_image_folder
from diffquant.errors import DiffquantError


def write_png(path: Path, value: int, size: tuple[int, int] = (8, 8), mode: str = "L") -> None:
    """A uniform image of `value` (grayscale, or that value in the red channel only for RGB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        Image.fromarray(np.full(size[::-1], value, dtype=np.uint8), "L").save(path)
    else:
        rgb = np.zeros((*size[::-1], 3), dtype=np.uint8)
        rgb[..., 0] = value
        Image.fromarray(rgb, "RGB").save(path)


def load(root: Path | str | None, image_size: int = 8, channels: int = 1, holdout: float = 0.25):
    return load_image_folder(
        root=None if root is None else str(root),
        image_size=image_size,
        channels=channels,
        holdout_fraction=holdout,
        seed=0,
    )


@pytest.fixture
def two_classes(tmp_path: Path) -> Path:
    """cats/ holds 3 black images, dogs/ 5 white ones (8x8 grayscale PNG); a hidden file is ignored."""
    for i in range(3):
        write_png(tmp_path / "cats" / f"c{i}.png", 0)
    for i in range(5):
        write_png(tmp_path / "dogs" / f"d{i}.png", 255)
    (tmp_path / "dogs" / ".DS_Store").write_bytes(b"\0junk")
    return tmp_path


def test_class_subfolders_give_sorted_labels(two_classes: Path) -> None:
    split = load(two_classes)
    assert split.train_images.shape == (6, 1, 8, 8) and split.test_images.shape == (2, 1, 8, 8)
    assert split.train_images.dtype == torch.float32 and split.num_classes == 2
    images = torch.cat([split.train_images, split.test_images])
    labels = torch.cat([split.train_labels, split.test_labels])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 1, 1]  # cats=0, dogs=1 (sorted folder names)
    assert torch.equal(images[labels == 0], torch.full((3, 1, 8, 8), -1.0))  # black -> -1
    assert torch.equal(images[labels == 1], torch.full((5, 1, 8, 8), 1.0))  # white -> +1


def test_flat_folder_labels_everything_zero(tmp_path: Path) -> None:
    for i in range(4):
        write_png(tmp_path / f"img{i}.png", 64 * i)
    split = load(tmp_path, holdout=0.5)
    assert (split.train_images.shape[0], split.test_images.shape[0], split.num_classes) == (2, 2, 1)
    levels = sorted(torch.cat([split.train_images, split.test_images])[:, 0, 0, 0].tolist())
    assert levels == pytest.approx([64 * i / 255 * 2 - 1 for i in range(4)], abs=1e-6)


def test_resize_center_crop_and_channels(tmp_path: Path) -> None:
    """A 24x12 RGB image: shorter side to 4, then the middle 4x4 of 8x4; red becomes luma 0.299 in grayscale."""
    for i in range(2):
        write_png(tmp_path / "a" / f"{i}.png", 255, size=(24, 12), mode="RGB")
    rgb = load(tmp_path, image_size=4, channels=3, holdout=0.5)
    assert rgb.train_images.shape == (1, 3, 4, 4)
    torch.testing.assert_close(rgb.train_images[0, :, 1, 1], torch.tensor([1.0, -1.0, -1.0]))
    gray = load(tmp_path, image_size=4, channels=1, holdout=0.5)
    assert gray.train_images.shape == (1, 1, 4, 4)
    assert gray.train_images[0, 0, 2, 2].item() == pytest.approx(76 / 255 * 2 - 1, abs=1e-6)  # PIL "L": 0.299 * 255


def test_split_is_seeded(two_classes: Path) -> None:
    a, b = load(two_classes), load(two_classes)
    assert torch.equal(a.test_labels, b.test_labels) and torch.equal(a.train_images, b.train_images)


@pytest.mark.parametrize("case", ["unset", "missing", "empty", "one-image"])
def test_unusable_root_names_the_setting(tmp_path: Path, case: str) -> None:
    root: Path | None = {"unset": None, "missing": tmp_path / "nope"}.get(case, tmp_path)
    if case == "one-image":
        write_png(tmp_path / "only.png", 3)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DiffquantError, match="dataset.root") as info:
        load(root)
    assert "\n" not in str(info.value) and "dataset=image_folder" in str(info.value)
    if case == "missing":
        assert str(tmp_path / "nope") in str(info.value) and "does not exist" in str(info.value)
    if case in ("empty", "one-image"):
        assert "need at least 2" in str(info.value)


def test_unreadable_image_names_the_file(two_classes: Path) -> None:
    bad = two_classes / "dogs" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DiffquantError, match="cannot read the image file") as info:
        load(two_classes)
    assert f"dataset.root={str(two_classes)!r}" in str(info.value) and str(bad) in str(info.value)
