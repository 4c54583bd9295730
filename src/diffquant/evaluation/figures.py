"""The evaluation's PNG figures: sample grids (by class when labels were requested), ε error per timestep,
trajectory error and activation ranges, written beside results.json."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from diffquant.diffusion.guidance import Guide
from diffquant.reporting.results import save_class_grid, save_comparison_grid, save_curves, save_eps_plot, save_range_plot


def guide_note(guide: Guide) -> str:
    """`guidance 3` or `no guidance` for figure titles."""
    return "no guidance" if not guide.batched else f"guidance scale {guide.scale:g}"


def save_run_figures(
    out_dir: Path,
    label: str,
    samples: dict[str, Tensor],
    grid_images: int,
    eps_per_t: dict[int, float],
    traj: dict[int, float],
    ranges: dict[str, tuple[float, float]],
    class_guide: Guide | None = None,
) -> None:
    """samples.png (held-out real, FP32, quantized, |difference| x4), samples_by_class.png where `class_guide`
    is given (the samples were drawn per requested label), eps_rel_err.png, traj_eps_mse.png, act_ranges.png.

    `samples` holds `real`, `fp32` and `quantized` image batches in [-1, 1]; `grid_images` of each are shown.
    """
    n = grid_images
    real, fp32, quantized = samples["real"], samples["fp32"], samples["quantized"]
    save_comparison_grid(
        {
            "real (held-out)": real[:n],
            "FP32": fp32[:n],
            label: quantized[:n],
            "|quantized − FP32| x4": (quantized[:n] - fp32[:n]).abs().mul(4).sub(1),
        },
        out_dir / "samples.png",
    )
    if class_guide is not None:
        k = class_guide.num_labels
        rows = max(1, n // k)
        save_class_grid(
            {"FP32": fp32[: rows * k], label: quantized[: rows * k]}, k, out_dir / "samples_by_class.png", guide_note(class_guide)
        )
    save_eps_plot(eps_per_t, out_dir / "eps_rel_err.png", label)
    save_curves(
        {label: traj}, out_dir / "traj_eps_mse.png", "timestep t (along the quantized trajectory)", "MSE(ε_q, ε_fp32)", logy=True
    )
    if ranges:
        save_range_plot(ranges, out_dir / "act_ranges.png", label)
