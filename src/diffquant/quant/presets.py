"""Defaults are recipes: `quant=ptq` / `quant=qat` at a bit width start from the preset measured best for it.

The recipe of method `m` at W<w>A<a> is the experiment preset `conf/experiment/<m>_w<w>a<a>.yaml` (for
example `ptq_w4a8`, `qat_w4a4`), the same file `experiment=<name>` selects: one source per recipe. With
`quant.preset=auto` (the default) its `quant` settings replace the ones still at their group
defaults (`conf/quant/<m>.yaml`), unless the command line set them: a setting typed on the command line
or changed by another preset always wins. A command line that itself chooses the method (any of
`METHOD_KEYS`: reconstruction, GPTQ, formats, budgets, observers, ...) gets no recipe: it compares that
method on the group defaults. `quant.preset=none` keeps the group defaults; a preset's name
applies that preset's recipe at any width. Widths with no preset file (W8A8: the defaults are the
measured best there) keep the group defaults and `quant.preset` stays `auto`; otherwise it becomes
the applied preset's name, which the saved config and results.json record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from diffquant.errors import DiffquantError
from diffquant.quant.config import QuantConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
OVERRIDE_PATH = re.compile(r"^[+~]{0,2}quant\.([\w.]+)=")
WIDTH_KEYS = ("weight_bits", "act_bits")  # the width picks the recipe; the recipe does not set it
# Settings that choose a method: a user who sets one compares that method, so `auto` adds no recipe to it.
# The others (calib.*, qat.* training length and rate, save, sensitivity, ...) keep the recipe.
METHOD_KEYS = frozenset(
    (
        "recon", "gptq", "group_size", "weight_format", "act_format", "size_budget_bytes", "avg_weight_bits", "mixed",
        "lowrank_rank", "act_timestep_groups", "smooth_alpha", "rotate", "layer_bits", "skip", "keep_float",
        "split_shortcut", "dynamic_input", "observer", "percentile", "granularity", "symmetric", "bias_correction",
    )
)  # fmt: skip


def preset_name(method: str, weight_bits: int, act_bits: int | None) -> str:
    """The experiment preset holding the recipe of `method` at this width (`ptq_w4a8`; weight-only: `ptq_w4`)."""
    return f"{method}_w{weight_bits}" + ("" if act_bits is None else f"a{act_bits}")


def available_presets() -> list[str]:
    """Every experiment preset's name."""
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def chooses_method(explicit: Iterable[str]) -> bool:
    """Whether the user picked how weights or activations are rounded or calibrated (a method of their own)."""
    return any(path.split(".")[0] in METHOD_KEYS for path in explicit)


def explicit_paths(overrides: Iterable[str]) -> set[str]:
    """Dotted paths under `quant` that the command line sets (`quant.recon.method=...` -> `recon.method`)."""
    paths = set()
    for override in overrides:
        match = OVERRIDE_PATH.match(override)
        if match:
            paths.add(match.group(1))
    return paths


def recipe_of(name: str) -> DictConfig:
    """The `quant` settings of experiment preset `name`, without the width."""
    path = CONF_DIR / "experiment" / f"{name}.yaml"
    if not path.is_file():
        raise DiffquantError(f"quant.preset={name}: no such preset; allowed: auto, none, {', '.join(available_presets())}")
    quant = OmegaConf.load(path).get("quant", OmegaConf.create({}))
    return OmegaConf.masked_copy(quant, [k for k in quant if k not in WIDTH_KEYS])


def group_defaults(method: str) -> DictConfig:
    """The schema's defaults under `conf/quant/<method>.yaml`: what `quant=<method>` composes before any preset."""
    return OmegaConf.merge(OmegaConf.structured(QuantConfig), OmegaConf.load(CONF_DIR / "quant" / f"{method}.yaml"))


def merge_recipe(node: DictConfig, recipe: DictConfig, defaults: DictConfig, explicit: set[str], prefix: str = "") -> list[str]:
    """In place: each recipe value replaces `node`'s where that is still the group default and not explicit; changed paths."""
    changed = []
    for key, value in recipe.items():
        path = f"{prefix}{key}"
        if path in explicit or key not in node:
            continue
        current, default = node[key], defaults.get(key) if isinstance(defaults, DictConfig) else None
        if isinstance(value, DictConfig) and OmegaConf.get_type(node, key) not in (dict, None):  # a nested group
            changed += merge_recipe(current, value, default, explicit, f"{path}.")
            continue
        if any(p.startswith(f"{path}.") for p in explicit) or plain(current) != plain(default):
            continue  # partly typed on the command line, or changed by another preset
        node[key] = value
        changed.append(path)
    return changed


def apply_to_quant(quant: DictConfig, explicit: set[str]) -> tuple[str, list[str]]:
    """In place on a composed `quant` node: the recipe of its `preset`; the preset applied ('' for none) and the paths set.

    `explicit`: the dotted paths a user set (the command line's `quant.*` overrides, the API's settings).
    """
    if "preset" not in quant:
        return "", []
    choice, method = str(quant.preset), str(quant.get("method", ""))
    if choice == "none" or method not in ("ptq", "qat"):
        return "", []
    name = preset_name(method, int(quant.weight_bits), quant.act_bits) if choice == "auto" else choice
    if choice == "auto" and (name not in available_presets() or chooses_method(explicit)):
        return "", []
    recipe = recipe_of(name)
    with open_dict(quant):
        changed = merge_recipe(quant, recipe, group_defaults(method), explicit)
        quant.preset = name
    return name, changed


def apply_preset(cfg: DictConfig, overrides: Iterable[str]) -> tuple[DictConfig, str, list[str]]:
    """`cfg` (composed) with the recipe of `quant.preset` applied; the preset applied ('' for none) and the paths it set."""
    if not isinstance(cfg.get("quant"), DictConfig):
        return cfg, "", []
    cfg = cfg.copy()
    name, changed = apply_to_quant(cfg.quant, explicit_paths(overrides))
    return cfg, name, changed


def settings_paths(settings: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of the leaves of a nested settings dict (`{"qat": {"steps": 9}}` -> `{"qat.steps"}`), as the
    command line names them: a nested group given in part keeps the recipe's values for the rest."""
    paths = set()
    for key, value in settings.items():
        paths |= settings_paths(value, f"{prefix}{key}.") if isinstance(value, Mapping) and value else {f"{prefix}{key}"}
    return paths


def describe(name: str, changed: list[str]) -> str:
    """The log line of an applied recipe."""
    if not name:
        return ""
    what = ", ".join(changed) if changed else "nothing (every setting it holds was already chosen)"
    return f"quant.preset={name}: the measured-best recipe for this method and width set {what}"


def plain(value: Any) -> Any:
    """A config value as plain Python, so lists and dicts compare by content."""
    return OmegaConf.to_container(value) if isinstance(value, DictConfig) or OmegaConf.is_list(value) else value
