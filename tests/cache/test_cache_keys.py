"""Cache keys pinned as literal strings: a refactor of how components are chosen must not move a cache entry.

The default config's FP32 key is the bundled model's (src/diffquant/pretrained/); the calibration-pair,
FP32 reference-sample and QAT-state keys are those the entries already on users' disks carry.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from diffquant.cache.bundled import bundled_model
from diffquant.config import to_config
from diffquant.evaluation.sampling import reference_samples
from diffquant.pipeline import CachedCalibration, qat_key
from helpers import fp32_key_of

# (overrides, FP32 key, calibration file, reference-sample file of eval seed 1234, QAT state key), computed at ae50bc8;
# the QAT state keys moved once, on purpose, when `quant._target_` replaced `quant.flow` (a finished QAT state re-trains once)
PINNED = {
    "default": ((), "2491a57a6e6eca67", "calib_20869d71ec2163cb.pt", "samples_0675f5b95b099b2e.pt", "ced7d1f0f102fa54"),
    "ddpm-cosine": (
        ("sampler=ddpm", "diffusion=cosine"),
        "5e1450077a8dbe4a",
        "calib_25f0639d59200adc.pt",
        "samples_25286e9c130c23e1.pt",
        "a02a0b3270094f67",
    ),
    "ddim-keys": (
        ("sampler.steps=30", "sampler.eta=1.0", "diffusion.num_timesteps=500"),
        "d5313cf68486ad50",
        "calib_681621762f297cd3.pt",
        "samples_974fd16e769c5197.pt",
        "8746b2f2544c437c",
    ),
}


def reference_file(cfg, folder: Path) -> str:
    """The file name reference_samples gives seed 1234's FP32 samples (made here as a stand-in tensor)."""
    reference_samples(cfg.sampler, cfg.diffusion, cfg.eval.num_samples, folder, 1234, lambda: torch.zeros(1))
    return next(folder.glob("samples_*.pt")).name


@pytest.mark.parametrize("case", list(PINNED))
def test_cache_keys_of_builtin_components_do_not_move(compose_cfg, tmp_path: Path, case: str) -> None:
    overrides, fp32, calib, samples, qat = PINNED[case]
    cfg = to_config(compose_cfg(*overrides))
    assert cfg.eval.seeds == [1234]
    key = fp32_key_of(cfg, 1, 16)
    assert key == fp32
    assert CachedCalibration(cfg, tmp_path, None, 1, 16).path.name == calib
    assert reference_file(cfg, tmp_path / "entry") == samples
    assert qat_key(cfg.quant, cfg.backend, cfg.sampler, cfg.seed, key) == qat


def test_the_preset_name_does_not_split_the_qat_state_of_one_recipe(compose_cfg) -> None:
    preset = to_config(compose_cfg("experiment=qat_w4a4"))
    recipe = copy.deepcopy(preset.quant.__dict__)
    spelled = to_config(compose_cfg("quant=qat", "quant.weight_bits=4", "quant.act_bits=4", "quant.preset=none"))
    assert preset.quant.preset != spelled.quant.preset
    spelled.quant.__dict__.update({k: v for k, v in recipe.items() if k != "preset"})
    key = fp32_key_of(preset, 1, 16)
    assert qat_key(preset.quant, preset.backend, preset.sampler, preset.seed, key) == qat_key(
        spelled.quant, spelled.backend, spelled.sampler, spelled.seed, key
    )
    spelled.quant.qat.steps += 1  # ...and a setting of the recipe still moves it
    assert qat_key(preset.quant, preset.backend, preset.sampler, preset.seed, key) != qat_key(
        spelled.quant, spelled.backend, spelled.sampler, spelled.seed, key
    )


def test_the_default_config_finds_the_bundled_model(compose_cfg) -> None:
    cfg = to_config(compose_cfg())
    assert bundled_model(fp32_key_of(cfg, 1, 16)) is not None
