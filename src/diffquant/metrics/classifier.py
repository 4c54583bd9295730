"""A small CNN classifier whose penultimate layer is the feature space of the offline FID."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm


class DigitClassifier(nn.Module):
    """Three 3x3 convs, global average pool and a ReLU projection to `feature_dim` features."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, feature_dim: int = 128) -> None:
        super().__init__()
        # Saved with the weights so a checkpoint can rebuild the model: DigitClassifier(**config).
        self.config: dict[str, int] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "image_size": image_size,
            "feature_dim": feature_dim,
        }
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations [N, feature_dim]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits [N, num_classes]."""
        return self.head(self.body(x))


def train_classifier(
    images: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> DigitClassifier:
    """Train a DigitClassifier with AdamW on random shifted batches; returns it in eval mode."""
    torch.manual_seed(seed)
    model = DigitClassifier(images.shape[1], num_classes, images.shape[-1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    model.train()
    bar = tqdm(range(steps), desc="classifier", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator)
        # Light augmentation: shift the whole batch by up to one pixel in each direction.
        shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
        x = torch.roll(images[idx], shifts=shift, dims=(-2, -1))
        loss = F.cross_entropy(model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predicted_classes(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """The arg-max class of each image [N] (int64, on the CPU)."""
    device = _device(model)
    chunks = [model(images[i : i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    """Fraction of `images` whose arg-max logit equals the label."""
    return int((predicted_classes(model, images, batch_size) == labels).sum()) / max(images.shape[0], 1)


@torch.no_grad()
def extract_features(model: DigitClassifier, images: Tensor, batch_size: int = 512) -> Tensor:
    """Penultimate features of `images` as float64 [N, feature_dim] on the CPU."""
    device = _device(model)
    chunks = [
        model.features(images[start : start + batch_size].to(device)).double().cpu()
        for start in range(0, images.shape[0], batch_size)
    ]
    if not chunks:
        return torch.empty(0, model.config["feature_dim"], dtype=torch.float64)
    return torch.cat(chunks)
