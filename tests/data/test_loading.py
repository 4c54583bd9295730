"""A loader's return value is checked: the accepted forms, and one line naming `dataset._target_` for each mistake."""

from __future__ import annotations

import pytest
import torch

from diffquant.components import Component
from diffquant.data.datasets import DataSplit
from diffquant.data.loading import as_split, load_data
from diffquant.errors import DiffquantError
from helpers.bad_components import images


def test_two_tuple_gets_zero_labels_and_four_tuple_keeps_them() -> None:
    split = as_split((images(6), images(2)), "pkg.load")
    assert split.train_labels.tolist() == [0] * 6 and split.test_labels.dtype == torch.int64
    labelled = as_split((images(6), images(2), torch.arange(6, dtype=torch.int32), torch.tensor([1, 0])), "pkg.load")
    assert labelled.train_labels.dtype == torch.int64 and labelled.num_classes == 6


def test_a_datasplit_and_a_list_of_equal_images_are_accepted() -> None:
    given = DataSplit(images(6), torch.zeros(6, dtype=torch.long), images(2), torch.zeros(2, dtype=torch.long))
    assert torch.equal(as_split(given, "pkg.load").train_images, given.train_images)
    assert as_split((list(images(3)), images(2)), "pkg.load").train_images.shape == (3, 1, 8, 8)


def test_rounding_just_outside_the_range_is_clamped() -> None:
    split = as_split((images(4) * 1.0005, images(2)), "pkg.load")
    assert split.train_images.abs().max() <= 1.0


def test_load_data_passes_the_seed_to_a_loader_that_takes_it() -> None:
    spec = Component("dataset", "helpers.custom_model.load_blobs", {"num_train": 8, "num_heldout": 2}, supplied=("seed",))
    a, b, c = load_data(spec, 1), load_data(spec, 1), load_data(spec, 2)
    assert torch.equal(a.train_images, b.train_images) and not torch.equal(a.train_images, c.train_images)
    assert a.train_images.shape == (8, 1, 8, 8) and a.train_labels.max() <= 3


@pytest.mark.parametrize(
    ("loader", "message"),
    [
        ("load_unscaled", r"train images lie in \[\d.*, 25\d.*\]; expected values in \[-1, 1\]"),
        ("load_mixed_sizes", r"train images have mixed sizes \(1x8x8, 1x16x16\); expected one size"),
        ("load_mismatched", r"returned train images of 1x8x8 but held-out images of 1x16x16; expected one image size"),
        ("load_uint8", r"train images are torch.uint8; expected float images in \[-1, 1\]"),
        ("load_three_dims", r"train images have shape \(16, 8, 8\); expected 4 dims \[N, C, H, W\]"),
        ("load_bad_labels", r"train labels have shape \(15,\); expected one label per image, \[16\]"),
        ("load_a_dict", r"returned a dict; expected a DataSplit, \(train_images, heldout_images\) or"),
    ],
)
def test_a_bad_return_value_is_one_line_naming_the_loader(loader: str, message: str) -> None:
    spec = Component("dataset", f"helpers.bad_components.{loader}")
    with pytest.raises(DiffquantError, match=rf"^dataset\._target_=helpers\.bad_components\.{loader} {message}") as info:
        load_data(spec, 0)
    assert "\n" not in str(info.value)
