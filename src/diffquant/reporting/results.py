"""Run artefacts a person looks at: sample grids, per-timestep and per-layer figures, results.json.

Figures are plain functions of dicts, so any stage can save one next to the results: e.g. a
per-layer sensitivity study calls `save_bar_plot({layer: value}, run_dir / "sensitivity.png", ...)`.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from diffquant.cache.store import atomic_write_json  # noqa: E402
from diffquant.reporting.tensorboard import to_grid  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Save a matplotlib figure atomically (temporary file, then rename) and close it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def save_comparison_grid(panels: dict[str, Tensor], path: Path, nrow: int = 8) -> None:
    """One PNG with titled panels side by side (e.g. real | FP32 | quantized from the same noise)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, images) in zip(axes[0], panels.items()):
        grid = to_grid(images, nrow).permute(1, 2, 0).numpy()
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    save_figure(fig, path)


def save_class_grid(panels: dict[str, Tensor], num_classes: int, path: Path, note: str = "") -> None:
    """Panels of class-conditional samples whose column k holds samples asked for class k (labelled under each panel)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(0.4 * num_classes * len(panels) + 1.0, 3.8), squeeze=False)
    for ax, (title, images) in zip(axes[0], panels.items()):
        grid = to_grid(images, num_classes).permute(1, 2, 0).numpy()
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
        width = grid.shape[1] / num_classes
        ax.set_xticks([width * (k + 0.5) for k in range(num_classes)], [str(k) for k in range(num_classes)], fontsize=7)
        ax.set_yticks([])
        ax.set_xlabel("requested class", fontsize=8)
        ax.set_title(f"{title} ({note})" if note else title, fontsize=9)
    save_figure(fig, path)


def save_curves(curves: dict[str, dict[int, float]], path: Path, xlabel: str, ylabel: str, logy: bool = False) -> None:
    """One line per labelled {x: y} curve (e.g. an error against the timestep)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for label, values in curves.items():
        ax.plot(list(values), list(values.values()), marker="o", markersize=3, label=label)
    if logy and all(v > 0 for values in curves.values() for v in values.values()):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def save_eps_plot(per_t: dict[int, float], path: Path, label: str) -> None:
    """Relative noise-prediction error against the timestep (where quantization hurts)."""
    save_curves({label: per_t}, path, "timestep t", "‖ε_q − ε_fp32‖ / ‖ε_fp32‖")


def save_bar_plot(values: dict[str, float], path: Path, xlabel: str, title: str = "") -> None:
    """Horizontal bars, one per named item (layer), in the given order."""
    fig, ax = plt.subplots(figsize=(6, 1.0 + 0.22 * max(len(values), 1)))
    names = list(values)
    ax.barh(range(len(names)), list(values.values()))
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    save_figure(fig, path)


def save_range_plot(ranges: dict[str, tuple[float, float]], path: Path, title: str = "") -> None:
    """Per-layer [low, high] intervals (e.g. the float range of each activation quantizer)."""
    fig, ax = plt.subplots(figsize=(6, 1.0 + 0.22 * max(len(ranges), 1)))
    names = list(ranges)
    lows, highs = [r[0] for r in ranges.values()], [r[1] for r in ranges.values()]
    ax.barh(range(len(names)), [h - lo for lo, h in zip(lows, highs)], left=lows)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("representable activation range")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    save_figure(fig, path)


def sensitivity_figure(rows: list[dict[str, Any]]) -> plt.Figure:
    """Per-layer SQNR bars: isolated (the layer's own error) and accumulated (inside the quantized model)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(rows)), 3.6))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["sqnr_isolated_db"] for r in rows], width=0.4, label="isolated")
    ax.bar([x + 0.2 for x in xs], [r["sqnr_accumulated_db"] for r in rows], width=0.4, label="accumulated")
    ax.set_xticks(list(xs), [str(r["layer"]) for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR vs FP32 (dB)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def versions() -> dict[str, str]:
    """Versions of what produced the numbers."""
    import hydra
    import torchvision

    import diffquant

    return {
        "diffquant": diffquant.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "hydra": hydra.__version__,
        "python": platform.python_version(),
        "quantized_engine": torch.backends.quantized.engine,
    }


def _git(args: list[str], cwd: Path) -> str | None:
    """stdout of `git <args>` in `cwd`, or None (no git, not a checkout, an error)."""
    import subprocess

    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def source_provenance(package_file: Path | None = None, dist_name: str = "diffquant") -> dict[str, Any]:
    """The commit of diffquant's own source, whether its checkout has uncommitted changes, its version.

    A git checkout counts only if it holds this package's source (`<top>/src/diffquant/__init__.py` is
    `package_file`): installed into someone else's repository, `git rev-parse HEAD` would give their
    commit. Else the commit pip recorded (direct_url.json of a `pip install git+...`), else "unknown";
    `dirty` is None when there is no checkout to ask.
    """
    import importlib.metadata

    import diffquant

    package_file = Path(package_file or diffquant.__file__).resolve()
    top = _git(["rev-parse", "--show-toplevel"], package_file.parent)
    if top and _same_file(Path(top) / "src" / "diffquant" / "__init__.py", package_file):
        commit = _git(["rev-parse", "HEAD"], Path(top))
        status = _git(["status", "--porcelain", "--untracked-files=no"], Path(top))
        if commit:
            return {
                "git_commit": commit,
                "dirty": None if status is None else bool(status),
                "source": "git checkout",
                "diffquant_version": diffquant.__version__,
            }
    commit = "unknown"
    try:
        direct_url = json.loads(importlib.metadata.distribution(dist_name).read_text("direct_url.json") or "{}")
        commit = direct_url.get("vcs_info", {}).get("commit_id") or "unknown"
    except (importlib.metadata.PackageNotFoundError, ValueError, AttributeError):
        pass
    return {
        "git_commit": commit,
        "dirty": None,
        "source": "pip direct_url.json" if commit != "unknown" else "unknown",
        "diffquant_version": diffquant.__version__,
    }


def git_commit() -> str:
    """The commit of diffquant's own source (see `source_provenance`), or "unknown"."""
    return source_provenance()["git_commit"]


def write_results(path: Path, header: dict[str, Any], metrics: dict[str, float | None], extra: dict[str, Any]) -> dict[str, Any]:
    """results.json: method, bits, backend, execution, metrics, versions (written atomically)."""
    results = {**header, "metrics": metrics, **extra, "versions": versions()}
    atomic_write_json(results, path)
    return results
