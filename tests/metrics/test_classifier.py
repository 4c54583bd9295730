"""The FID feature classifier learns digits and is reproducible."""

import pytest
import torch

from diffquant.data.datasets import load_digits
from diffquant.metrics.classifier import DigitClassifier, accuracy, extract_features, train_classifier


@pytest.fixture(scope="module")
def digits16():
    return load_digits(image_size=16, channels=1, holdout_fraction=0.1, seed=0)


@pytest.mark.slow
def test_learns_held_out_digits(digits16) -> None:
    # 300 steps at the default lr take ~3 s on 2 cores; 150 steps reach only ~0.83 at lr 2e-3.
    model = train_classifier(digits16.train_images, digits16.train_labels, num_classes=10, steps=300, seed=0, progress=False)
    assert not model.training
    assert accuracy(model, digits16.test_images, digits16.test_labels) > 0.85
    torch.manual_seed(0)
    untrained = DigitClassifier(1, 10, 16)
    assert accuracy(untrained, digits16.test_images, digits16.test_labels) < 0.4


def test_features_shape_and_dtype(digits16) -> None:
    model = DigitClassifier(1, 10, 16, feature_dim=24)
    feats = extract_features(model, digits16.test_images, batch_size=64)
    assert feats.shape == (digits16.test_images.shape[0], 24) and feats.dtype == torch.float64
    assert torch.allclose(feats[:5].float(), model.features(digits16.test_images[:5]))
    assert model(digits16.test_images[:3]).shape == (3, 10)


def test_config_rebuilds_model() -> None:
    model = DigitClassifier(3, 7, 32, feature_dim=16)
    rebuilt = DigitClassifier(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rebuilt(x), model(x)) and rebuilt(x).shape == (2, 7)


def test_training_is_seeded(digits16) -> None:
    images, labels = digits16.train_images[:256], digits16.train_labels[:256]
    a = train_classifier(images, labels, num_classes=10, steps=3, batch_size=32, seed=7, progress=False)
    b = train_classifier(images, labels, num_classes=10, steps=3, batch_size=32, seed=7, progress=False)
    c = train_classifier(images, labels, num_classes=10, steps=3, batch_size=32, seed=8, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.head.weight, c.head.weight)
