"""Bundled FP32 models: used only for their own config key and only when their bytes match the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffquant.cache import artifacts, bundled
from diffquant.cache.store import file_key
from diffquant.config import to_config
from diffquant.data.loading import load_data
from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.reporting.tensorboard import RunLogger
from helpers import fp32_key_of


def tiny_fp32(cfg, tmp_path: Path) -> artifacts.FP32Artifact:
    data = load_data(cfg.dataset, cfg.seed)
    d = cfg.diffusion
    diffusion = GaussianDiffusion.from_config(d.target, d.num_timesteps, d.beta_start, d.beta_end)
    return artifacts.get_fp32_model(cfg, data, diffusion, RunLogger(tmp_path / "tb", False))


@pytest.mark.slow
def test_a_bundled_model_replaces_training_for_its_own_config_only(compose_cfg, tmp_path, monkeypatch) -> None:
    cfg = to_config(compose_cfg("experiment=tiny", f"paths.cache_dir={tmp_path / 'cache'}"))
    trained = tiny_fp32(cfg, tmp_path)
    assert not trained.cached
    folder = tmp_path / "bundle"
    made = bundled.make_bundle(trained.entry_dir / "model.pt", "diffquant experiment=tiny", folder)
    manifest = json.loads((folder / f"fp32-{trained.key}.json").read_text())
    assert manifest["sha256"] == file_key(made, length=64) and manifest["key"] == trained.key
    assert manifest["machine"]["model"] and manifest["command"] == "diffquant experiment=tiny"

    monkeypatch.setattr(bundled, "bundle_dir", lambda: folder)
    monkeypatch.setattr(artifacts, "bundled_model", lambda key: bundled.bundled_model(key, folder))

    def no_training(*args, **kwargs):
        raise AssertionError("trained although a bundled model exists")

    monkeypatch.setattr(artifacts, "_train_fp32", no_training)
    fresh = to_config(compose_cfg("experiment=tiny", f"paths.cache_dir={tmp_path / 'cache2'}"))
    loaded = tiny_fp32(fresh, tmp_path)
    assert loaded.key == trained.key and (loaded.entry_dir / "model.pt").is_file()
    for name, value in trained.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], value, rtol=0, atol=0)
    other = to_config(compose_cfg("experiment=tiny", "train.steps=21", f"paths.cache_dir={tmp_path / 'cache3'}"))
    with pytest.raises(AssertionError, match="trained although"):  # another config: its own key, no bundle
        tiny_fp32(other, tmp_path)
    off = to_config(compose_cfg("experiment=tiny", "train.bundled=false", f"paths.cache_dir={tmp_path / 'cache4'}"))
    assert fp32_key_of(off, 1, 8) == trained.key  # the switch does not change what the config trains
    with pytest.raises(AssertionError, match="trained although"):
        tiny_fp32(off, tmp_path)


def test_a_tampered_bundle_is_not_used(tmp_path) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "fp32-abc.pt").write_bytes(b"weights")
    (folder / "fp32-abc.json").write_text(json.dumps({"sha256": file_key(folder / "fp32-abc.pt", length=64)}))
    assert bundled.bundled_model("abc", folder) == folder / "fp32-abc.pt"
    assert bundled.bundled_model("other", folder) is None
    (folder / "fp32-abc.pt").write_bytes(b"weights, changed")
    assert bundled.bundled_model("abc", folder) is None
