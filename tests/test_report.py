"""Figures saved next to results: curves, per-layer bars (the sensitivity hook) and activation ranges."""
from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import pytest

from diffquant.report import save_bar_plot, save_curves, save_range_plot


def test_curves_bars_and_ranges_are_written_as_pngs(tmp_path: Path) -> None:
    save_curves({"W8A8": {0: 1e-4, 500: 3e-4, 980: 2e-3}, "W4A8": {0: 1e-3, 500: 5e-3, 980: 1e-2}}, tmp_path / "c.png",
                "timestep t", "MSE", logy=True)
    save_bar_plot({f"layer{i}": float(i) for i in range(12)}, tmp_path / "sensitivity.png", "Δ FID")
    save_range_plot({"conv_in.input": (-2.0, 3.0), "conv_in.output": (-0.5, 1.0)}, tmp_path / "r.png", "ranges")
    for name in ("c.png", "sensitivity.png", "r.png"):
        image = mpimg.imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("count", [4, 40])
def test_bar_plot_grows_with_the_number_of_layers(tmp_path: Path, count: int) -> None:
    save_bar_plot({f"l{i}": 1.0 for i in range(count)}, tmp_path / "b.png", "x")
    height = mpimg.imread(tmp_path / "b.png").shape[0]
    assert height == pytest.approx(120 * (1.0 + 0.22 * count), abs=2)  # dpi 120, 0.22 in per layer
