"""TensorBoard logging for one run: scalars, series, image grids, histograms, custom scalars, HParams, text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary


def to_grid(images: Tensor, nrow: int = 8, padding: int = 1) -> Tensor:
    """[N, C, H, W] in [-1, 1] -> a [3, H', W'] grid in [0, 1] with white padding (torchvision's make_grid layout)."""
    images = (images.clamp(-1, 1) + 1) / 2
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = torch.ones(c, rows * (h + padding) + padding, (w + padding) * cols + padding)
    for i in range(n):
        y, x = divmod(i, cols)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


class RunLogger:
    """A thin SummaryWriter wrapper that is a no-op when TensorBoard logging is disabled."""

    def __init__(self, log_dir: Path, enabled: bool = True) -> None:
        self.log_dir = log_dir
        self.writer = SummaryWriter(str(log_dir)) if enabled else None

    def scalar(self, tag: str, value: float, step: int = 0) -> None:
        if self.writer is not None and value is not None:
            self.writer.add_scalar(tag, value, step)

    def scalars(self, values: dict[str, float | None], step: int = 0) -> None:
        for tag, value in values.items():
            if value is not None:
                self.scalar(tag, value, step)

    def series(self, tag: str, values: dict[int, float]) -> None:
        """A curve over an integer x axis (e.g. the timestep) as the steps of one scalar tag."""
        for x, value in values.items():
            self.scalar(tag, value, x)

    def image(self, tag: str, grid: Tensor) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, grid, 0)

    def figure(self, tag: str, fig: object) -> None:
        """A matplotlib figure as an image (the figure stays open for saving to disk)."""
        if self.writer is not None:
            self.writer.add_figure(tag, fig, 0, close=False)

    def histograms(self, model: nn.Module, prefix: str) -> None:
        """Weight histograms; int8 modules are dequantized so they show the values actually used."""
        if self.writer is None:
            return
        for name, value in model.state_dict().items():
            if not isinstance(value, Tensor) or value.numel() < 2 or not name.endswith("weight"):
                continue
            tensor = value.dequantize() if value.is_quantized else value
            self.writer.add_histogram(f"{prefix}/{name}", tensor.float(), 0)

    def histogram(self, tag: str, values: Tensor) -> None:
        if self.writer is not None and values.numel() > 0:
            self.writer.add_histogram(tag, values.detach().float(), 0)

    def custom_scalars(self, layout: dict[str, dict[str, list[str]]]) -> None:
        """Custom Scalars dashboard: {category: {chart: [exact tags]}}, each chart overlays its tags."""
        if self.writer is None:
            return
        self.writer.add_custom_scalars(
            {
                category: {chart: ["Multiline", [f"^{re.escape(tag)}$" for tag in tags]] for chart, tags in charts.items()}
                for category, charts in layout.items()
            }
        )

    def hparams(self, params: dict[str, Any], metrics: dict[str, float | None]) -> None:
        """HParams entry for this run; the metric tags refer to scalars logged in this same run."""
        if self.writer is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
        finite = {k: float(v) for k, v in metrics.items() if v is not None and torch.isfinite(torch.tensor(float(v)))}
        writer = self.writer._get_file_writer()
        for summary in hparams_summary(clean, finite):
            writer.add_summary(summary)

    def text(self, tag: str, text: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, 0)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
