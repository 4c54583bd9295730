"""Figures saved next to results: curves, per-layer bars (the sensitivity hook) and activation ranges."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import pytest

from diffquant.reporting.results import save_bar_plot, save_curves, save_range_plot


def test_curves_bars_and_ranges_are_written_as_pngs(tmp_path: Path) -> None:
    save_curves(
        {"W8A8": {0: 1e-4, 500: 3e-4, 980: 2e-3}, "W4A8": {0: 1e-3, 500: 5e-3, 980: 1e-2}},
        tmp_path / "c.png",
        "timestep t",
        "MSE",
        logy=True,
    )
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


def git(cwd: Path, *args: str) -> str:
    """Run git in `cwd` (a throwaway identity for commits) and return its stdout."""
    import subprocess

    out = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def make_repo(root: Path, files: dict[str, str]) -> str:
    """A git repository at `root` with `files` committed; its HEAD commit."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "init")
    return git(root, "rev-parse", "HEAD")


class FakeDistribution:
    """What importlib.metadata.distribution returns, with a chosen direct_url.json."""

    def __init__(self, direct_url: dict | None) -> None:
        self.direct_url = direct_url

    def read_text(self, name: str) -> str | None:
        import json

        return json.dumps(self.direct_url) if name == "direct_url.json" and self.direct_url is not None else None


def test_own_checkout_gives_its_commit_and_dirty_state(tmp_path: Path) -> None:
    from diffquant.reporting.results import source_provenance

    head = make_repo(tmp_path, {"src/diffquant/__init__.py": "", "README.md": "x"})
    prov = source_provenance(tmp_path / "src" / "diffquant" / "__init__.py")
    assert (prov["git_commit"], prov["dirty"], prov["source"]) == (head, False, "git checkout")
    (tmp_path / "untracked.txt").write_text("new")  # untracked files do not make a checkout dirty
    assert source_provenance(tmp_path / "src" / "diffquant" / "__init__.py")["dirty"] is False
    (tmp_path / "README.md").write_text("changed")
    assert source_provenance(tmp_path / "src" / "diffquant" / "__init__.py")["dirty"] is True


@pytest.mark.parametrize(
    ("direct_url", "expected"),
    [
        ({"url": "https://github.com/x/diffquant", "vcs_info": {"vcs": "git", "commit_id": "a" * 40}}, "a" * 40),
        ({"url": "file:///src/diffquant", "dir_info": {"editable": False}}, "unknown"),
        (None, "unknown"),
    ],
    ids=["pip-vcs", "pip-dir", "no-direct-url"],
)
def test_installed_inside_another_repository_never_reports_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct_url: dict | None, expected: str
) -> None:
    import importlib.metadata

    from diffquant.reporting.results import source_provenance

    # their repository vendors a copy at src/diffquant and has diffquant installed in a venv inside it
    theirs = make_repo(tmp_path, {"src/diffquant/__init__.py": "# theirs", "venv/lib/diffquant/__init__.py": ""})
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: FakeDistribution(direct_url))
    prov = source_provenance(tmp_path / "venv" / "lib" / "diffquant" / "__init__.py")
    assert prov["git_commit"] == expected != theirs and prov["dirty"] is None
    assert prov["source"] == ("pip direct_url.json" if expected != "unknown" else "unknown")


def test_no_git_checkout_and_no_distribution_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    import diffquant
    from diffquant.reporting.results import source_provenance

    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    (tmp_path / "diffquant").mkdir()
    (tmp_path / "diffquant" / "__init__.py").write_text("")
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git must not find a repository above tmp_path
    assert source_provenance(tmp_path / "diffquant" / "__init__.py") == {
        "git_commit": "unknown",
        "dirty": None,
        "source": "unknown",
        "diffquant_version": diffquant.__version__,
    }
