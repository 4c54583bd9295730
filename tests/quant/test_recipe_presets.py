"""Defaults are recipes: `quant=ptq` / `quant=qat` at a width start from the experiment preset measured best for it."""

from __future__ import annotations

import dataclasses
import re

import pytest
from omegaconf import OmegaConf

from diffquant.config import to_config
from diffquant.errors import DiffquantError
from diffquant.quant.presets import CONF_DIR, available_presets, explicit_paths, settings_paths
from helpers import CONF_DIR as TEST_CONF_DIR

RECIPE_NAME = re.compile(r"^(ptq|qat)_w(\d)(?:a(\d))?$")


def recipe_presets() -> list[str]:
    """The experiment presets named `<method>_w<W>a<A>`: the recipes `quant.preset=auto` picks."""
    return [name for name in available_presets() if RECIPE_NAME.match(name)]


def flat(node: dict, prefix: str = "") -> dict[str, object]:
    """{'recon.method': 'brecq', ...}: nested dicts to dotted paths (layer_bits stays one value)."""
    out: dict[str, object] = {}
    for key, value in node.items():
        if isinstance(value, dict) and key != "layer_bits":
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def quant_of(compose_cfg, *overrides: str) -> dict[str, object]:
    return flat(dataclasses.asdict(to_config(compose_cfg(*overrides)).quant))


def test_the_package_ships_the_presets_the_tests_see() -> None:
    assert CONF_DIR.resolve() == TEST_CONF_DIR.resolve()
    assert {"ptq_w4a8", "qat_w4a8", "qat_w4a4"} <= set(recipe_presets())


@pytest.mark.parametrize("name", recipe_presets())
def test_quant_at_a_width_starts_from_that_widths_preset(compose_cfg, name: str) -> None:
    method, w, a = RECIPE_NAME.match(name).groups()
    width = [f"quant.weight_bits={w}", f"quant.act_bits={a or 'null'}"]
    recipe = flat(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml")["quant"]))
    got = quant_of(compose_cfg, f"quant={method}", *width)
    assert got["preset"] == name
    for path, value in recipe.items():
        assert got[path] == value, path  # every setting of the preset, as the preset has it
    assert quant_of(compose_cfg, f"experiment={name}") == got  # the same as selecting the preset itself


def test_the_command_line_wins_over_the_recipe(compose_cfg) -> None:
    got = quant_of(compose_cfg, "quant=qat", "quant.weight_bits=4", "quant.qat.steps=50", "quant.qat.lr=1e-3")
    assert got["preset"] == "qat_w4a8"
    assert got["qat.steps"] == 50 and got["qat.lr"] == 1e-3  # typed: kept
    assert got["qat.lsq"] is True and got["qat.schedule"] == "cosine"  # left: the recipe's


@pytest.mark.parametrize(
    "method", ["quant.recon.method=adaround", "quant.gptq.enabled=true", "quant.group_size=16", "quant.avg_weight_bits=5"]
)
def test_a_command_line_that_chooses_the_method_gets_no_recipe(compose_cfg, method: str) -> None:
    got = quant_of(compose_cfg, "quant.weight_bits=4", method)
    assert got["preset"] == "auto" and got["layer_bits"] == {} and got["dynamic_input"] is True
    assert got["recon.method"] == ("adaround" if "recon" in method else "none")


def test_preset_none_keeps_the_group_defaults_and_w8a8_has_no_recipe(compose_cfg) -> None:
    defaults = quant_of(compose_cfg, "quant.weight_bits=4", "quant.preset=none")
    plain = quant_of(compose_cfg)
    assert defaults["recon.method"] == "none" and defaults["dynamic_input"] is True and defaults["layer_bits"] == {}
    assert plain["preset"] == "auto"  # W8A8: no ptq_w8a8 preset, the defaults are the measured best there
    assert {k: v for k, v in plain.items() if k not in ("weight_bits", "preset")} == {
        k: v for k, v in defaults.items() if k not in ("weight_bits", "preset")
    }


def test_a_preset_that_is_a_recipe_of_its_own_is_left_alone(compose_cfg) -> None:
    got = quant_of(compose_cfg, "experiment=ptq_w4a8_gptq")  # W4A8 too, but GPTQ instead of BRECQ
    assert got["preset"] == "none" and got["gptq.enabled"] is True and got["recon.method"] == "none"


def test_a_named_preset_applies_at_any_width_and_an_unknown_one_is_refused(compose_cfg) -> None:
    got = quant_of(compose_cfg, "quant.preset=ptq_w4a8")
    assert got["weight_bits"] == 8 and got["recon.method"] == "brecq"
    with pytest.raises(DiffquantError, match=r"^quant.preset=ptq_w3a3: no such preset; allowed: auto, none, .*ptq_w4a8"):
        to_config(compose_cfg("quant.preset=ptq_w3a3"))


def test_explicit_paths_read_the_command_line() -> None:
    overrides = ["quant.recon.method=adaround", "+quant.layer_bits.conv_out=8", "quant=ptq", "model.depth=2"]
    assert explicit_paths(overrides) == {"recon.method", "layer_bits.conv_out"}


def test_the_python_api_starts_from_the_same_recipe(compose_cfg) -> None:
    from diffquant.quant.api import quant_settings

    api = quant_settings("qat", "fbgemm", {"weight_bits": 4, "qat": {"steps": 9}})
    cli = to_config(compose_cfg("quant=qat", "quant.weight_bits=4", "quant.qat.steps=9")).quant
    assert api == cli and api.preset == "qat_w4a8" and api.qat.steps == 9 and api.qat.lsq is True
    assert settings_paths({"qat": {"steps": 9}, "layer_bits": {"conv_out": 8}, "skip": []}) == {
        "qat.steps",
        "layer_bits.conv_out",
        "skip",
    }
