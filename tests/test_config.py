"""Every option of every config group composes and validates; bad values give one-line errors."""

from __future__ import annotations

import itertools

import pytest

from diffquant.config import Config, to_config
from diffquant.errors import DiffquantError
from helpers import group_options


@pytest.mark.parametrize(("group", "option"), group_options(), ids=lambda v: str(v))
def test_every_group_option_composes(compose_cfg, group: str, option: str) -> None:
    cfg = to_config(compose_cfg(f"{group}={option}"))
    assert isinstance(cfg, Config)
    if group == "quant":
        assert cfg.quant.method == option
    if group == "backend":
        assert cfg.backend.engine == option
    if group in ("model", "dataset", "sampler"):
        assert getattr(cfg, group).name == option


@pytest.mark.parametrize(
    ("quant", "backend"),
    list(itertools.product(["fp32", "ptq", "qat"], ["fbgemm", "qnnpack", "x86"])),
    ids=lambda v: str(v),
)
def test_quant_backend_product_composes(compose_cfg, quant: str, backend: str) -> None:
    cfg = to_config(compose_cfg(f"quant={quant}", f"backend={backend}"))
    assert (cfg.quant.method, cfg.backend.engine) == (quant, backend)
    assert cfg.backend.int8_scheme == "auto"  # the machine's self-test decides the 8-bit grids


def test_defaults_are_the_documented_experiment(compose_cfg) -> None:
    cfg = to_config(compose_cfg())
    assert (cfg.model.name, cfg.dataset.name, cfg.quant.method, cfg.backend.engine) == ("unet_tiny", "digits", "ptq", "fbgemm")
    assert (cfg.quant.weight_bits, cfg.quant.act_bits, cfg.quant.granularity, cfg.quant.symmetric) == (8, 8, "per_channel", False)
    assert cfg.sampler.name == "ddim"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("quant.weight_bits=12", "quant.weight_bits=12 is out of range; allowed: 2..8"),
        ("quant.act_bits=1", "quant.act_bits=1 is out of range; allowed: 2..8"),
        ("quant.observer=kmeans", "quant.observer='kmeans' is not allowed; allowed: minmax, moving_average, histogram"),
        ("quant.granularity=per_group", "quant.granularity='per_group' is not allowed"),
        ("backend.engine=tensorrt", "backend.engine='tensorrt' is not allowed; allowed: fbgemm, qnnpack, x86"),
        ("sampler.eta=2.0", "sampler.eta=2.0 is out of range; allowed: 0.0..1.0"),
        ("dataset.channels=2", "dataset.channels=2 is not allowed; allowed: 1, 3"),
        ("model.base_channels=30", "must be divisible by model.groups"),
    ],
)
def test_bad_values_name_the_setting(compose_cfg, override: str, message: str) -> None:
    with pytest.raises(DiffquantError) as info:
        to_config(compose_cfg(override))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_layer_bits_and_skip_from_the_command_line(compose_cfg) -> None:
    cfg = to_config(compose_cfg("+quant.layer_bits={conv_out:8,up.0.0.conv1:6}", "quant.skip=[time_embed.*]"))
    assert cfg.quant.layer_bits == {"conv_out": 8, "up.0.0.conv1": 6}
    assert cfg.quant.skip == ["time_embed.*"]
    with pytest.raises(DiffquantError, match="quant.layer_bits.conv_out=9 is out of range"):
        to_config(compose_cfg("+quant.layer_bits={conv_out:9}"))
