"""Every option of every config group composes and validates; bad values give one-line errors."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import pytest
import torch
from omegaconf import OmegaConf

from diffquant.components import import_target, signature_of
from diffquant.config import DATASET_OWN_KEYS, MODEL_OWN_KEYS, MODEL_SUPPLIED, Config, to_config
from diffquant.data.schemas import dataset_schemas
from diffquant.errors import DiffquantError
from diffquant.models.schemas import model_schemas
from diffquant.quant.config import QuantConfig
from diffquant.quant.engine import SCHEMES
from diffquant.quant.qconfig import make_qconfig
from helpers import CONF_DIR, group_options

# `custom` files start empty (`_target_: ???`): composed with a target, as their comment says.
CUSTOM_TARGETS = {"model": "helpers.custom_model.SkipNet", "dataset": "helpers.custom_model.load_blobs"}


@pytest.mark.parametrize(("group", "option"), group_options(), ids=lambda v: str(v))
def test_every_group_option_composes(compose_cfg, group: str, option: str) -> None:
    extra = [f"{group}._target_={CUSTOM_TARGETS[group]}"] if option == "custom" else []
    cfg = to_config(compose_cfg(f"{group}={option}", *extra))
    assert isinstance(cfg, Config)
    if group == "quant":
        assert cfg.quant.method == option
    if group == "backend":
        assert cfg.backend.engine == option
    if group in ("model", "dataset") and option != "custom":
        assert getattr(cfg, group).name == option
        assert getattr(cfg, group).target == OmegaConf.load(CONF_DIR / group / f"{option}.yaml")["_target_"]
    if group in ("sampler", "diffusion"):  # a name and a `_target_`, as the file gives them
        node = getattr(cfg, group)
        assert (node.name if group == "sampler" else node.schedule, node.target) == (
            option,
            OmegaConf.load(CONF_DIR / group / f"{option}.yaml")["_target_"],
        )


@pytest.mark.parametrize("group", ["model", "dataset"])
def test_a_custom_file_without_a_target_says_what_to_set(compose_cfg, group: str) -> None:
    with pytest.raises(DiffquantError, match=rf"^{group}\._target_ is not set; give {group}\._target_=package\.module\.Name"):
        to_config(compose_cfg(f"{group}=custom"))


MODEL_FILES = [stem for group, stem in group_options() if group == "model" and stem != "custom"]


@pytest.mark.parametrize(
    ("quant", "backend", "model"),
    list(itertools.product(["fp32", "ptq", "qat"], ["fbgemm", "qnnpack", "x86"], MODEL_FILES)),
    ids=lambda v: str(v),
)
def test_quant_backend_model_product_composes(compose_cfg, quant: str, backend: str, model: str) -> None:
    cfg = to_config(compose_cfg(f"quant={quant}", f"backend={backend}", f"model={model}"))
    assert (cfg.quant.method, cfg.backend.engine, cfg.model.name) == (quant, backend, model)
    assert cfg.backend.int8_scheme == "auto"  # the machine's self-test decides the 8-bit grids


def test_defaults_are_the_documented_experiment(compose_cfg) -> None:
    cfg = to_config(compose_cfg())
    assert (cfg.model.name, cfg.dataset.name, cfg.quant.method, cfg.backend.engine) == ("unet_tiny", "digits", "ptq", "fbgemm")
    assert (cfg.model.target, cfg.dataset.target) == ("diffquant.models.unet.UNet", "diffquant.data.datasets.load_digits")
    assert (cfg.quant.weight_bits, cfg.quant.act_bits, cfg.quant.granularity, cfg.quant.symmetric) == (8, 8, "per_channel", None)
    assert cfg.quant.bias_correction == 2
    assert cfg.sampler.name == "ddim"


@pytest.mark.parametrize(
    ("overrides", "scheme", "symmetric"),
    [
        ({}, "w8a8", True),  # auto: the full 8-bit weight grid is symmetric
        ({}, "w8a7", True),
        ({}, "w7a8", False),  # auto: 7-bit weights stay affine
        ({"weight_bits": 4}, "w8a8", False),  # auto below 8 bits: affine, as before the auto rule
        ({"symmetric": False}, "w8a8", False),  # an explicit choice wins
        ({"symmetric": True}, "w7a8", True),
    ],
)
def test_auto_weight_symmetry_follows_the_weight_grid(overrides: dict, scheme: str, symmetric: bool) -> None:
    quant = QuantConfig(method="ptq", **overrides)
    assert quant.weight_symmetric(SCHEMES[scheme]) is symmetric
    qscheme = make_qconfig(quant.spec(SCHEMES[scheme])).weight().qscheme
    assert qscheme == (torch.per_channel_symmetric if symmetric else torch.per_channel_affine)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("quant.weight_bits=12", "quant.weight_bits=12 is out of range; allowed: 2..8"),
        ("quant.act_bits=1", "quant.act_bits=1 is out of range; allowed: 2..8"),
        ("quant.observer=kmeans", "quant.observer='kmeans' is not allowed; allowed: minmax, moving_average, histogram"),
        ("quant.granularity=per_group", "quant.granularity='per_group' is not allowed"),
        ("backend.engine=tensorrt", "backend.engine='tensorrt' is not allowed; allowed: fbgemm, qnnpack, x86"),
        ("sampler.eta=2.0", "sampler.eta=2.0 is out of range; allowed: 0.0..1.0"),
        ("quant.gptq.damp=0", "quant.gptq.damp=0.0 is out of range; allowed: > 0"),
        (
            "quant.gptq.enabled=true quant.recon.method=brecq",
            "quant.gptq.enabled=true and quant.recon.method=brecq both choose the weights' rounding; use one",
        ),
        ("quant.lowrank_rank=-4", "quant.lowrank_rank=-4 is out of range; allowed: >= 0"),
        ("dataset.channels=2", "dataset.channels=2 is not allowed; allowed: 1, 3"),
        ("model.base_channels=30", "must be divisible by model.groups"),
        ("model.base_channels=abc", "model.base_channels='abc': Value 'abc' of type 'str' could not be converted to Integer"),
        (
            "+model.base_chanels=16",
            "model.base_chanels=16 is not a parameter of diffquant.models.unet.UNet; did you mean model.base_channels?",
        ),
        (
            "+dataset.imagesize=8",
            "dataset.imagesize=8 is not a parameter of diffquant.data.datasets.load_digits; did you mean dataset.image_size?",
        ),
        ("+model.in_channels=3", "model.in_channels=3 cannot be set: diffquant passes the data's channels"),
        ("model=diffusers_unet model.pretrained=/x model.checkpoint=/y.pt", "model.pretrained and model.checkpoint are both set"),
        (
            "model._target_=helpers.custom_model.SkipNett",
            "module 'helpers.custom_model' has no attribute 'SkipNett'; did you mean",
        ),
    ],
)
def test_bad_values_name_the_setting(compose_cfg, override: str, message: str) -> None:
    with pytest.raises(DiffquantError) as info:
        to_config(compose_cfg(*override.split(" ")))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("overrides", [["experiment=ptq_w4a8_gptq"], ["quant=qat", "quant.gptq.enabled=true"]])
def test_gptq_composes_for_ptq_and_qat(compose_cfg, overrides: list[str]) -> None:
    cfg = to_config(compose_cfg(*overrides))
    assert cfg.quant.gptq.enabled and cfg.quant.recon.method == "none"
    assert (cfg.quant.gptq.num_samples, cfg.quant.gptq.damp, cfg.quant.gptq.block_size) == (256, 0.01, 128)
    if overrides[0].startswith("experiment"):
        assert (cfg.quant.weight_bits, cfg.quant.layer_bits, cfg.quant.dynamic_input) == (4, {"conv_out": 8}, False)


def test_layer_bits_and_skip_from_the_command_line(compose_cfg) -> None:
    cfg = to_config(compose_cfg("+quant.layer_bits={conv_out:8,up.0.0.conv1:6}", "quant.skip=[time_embed.*]"))
    assert cfg.quant.layer_bits == {"conv_out": 8, "up.0.0.conv1": 6}
    assert cfg.quant.skip == ["time_embed.*"]
    with pytest.raises(DiffquantError, match="quant.layer_bits.conv_out=9 is out of range"):
        to_config(compose_cfg("+quant.layer_bits={conv_out:9}"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=unet_small"], ("model", "unet_small", "base_channels", 64)),
        (["dataset=mnist"], ("dataset", "mnist", "image_size", 28)),
        (["model=dit_s", "model.depth=6"], ("model", "dit_s", "depth", 6)),
        (["dataset.image_size=8"], ("dataset", "digits", "image_size", 8)),
    ],
    ids=["model-file", "dataset-file", "model-key", "dataset-key"],
)
def test_the_keys_users_know_keep_working(compose_cfg, overrides: list[str], expected: tuple) -> None:
    group, name, key, value = expected
    cfg = to_config(compose_cfg(*overrides, "quant.weight_bits=4", "backend=x86"))
    assert (getattr(cfg, group).name, getattr(cfg, group).kwargs[key]) == (name, value)
    assert (cfg.quant.weight_bits, cfg.backend.engine) == (4, "x86")


def test_a_user_model_on_top_of_the_default_model_file(compose_cfg, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="diffquant")
    cfg = to_config(compose_cfg("model._target_=helpers.custom_model.SkipNet", "+model.width=64"))
    assert (cfg.model.target, cfg.model.kwargs, cfg.model.name) == ("helpers.custom_model.SkipNet", {"width": 64}, "SkipNet")
    assert cfg.model.supplied == ("in_channels", "image_size")
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert ignored == [
        "model._target_=helpers.custom_model.SkipNet does not take base_channels, channel_mults, num_res_blocks, "
        "attn_resolutions, dropout, groups, num_classes (inherited from a group file or preset): ignored"
    ]


def test_a_key_typed_for_a_user_model_must_be_its_parameter(compose_cfg) -> None:
    with pytest.raises(DiffquantError) as info:
        to_config(compose_cfg("model._target_=helpers.custom_model.SkipNet", "model.base_channels=16"))
    assert str(info.value) == (
        "model.base_channels=16 is not a parameter of helpers.custom_model.SkipNet; it takes: width, heads"
    )


def test_a_user_loader_gets_the_inherited_keys_it_takes(compose_cfg) -> None:
    cfg = to_config(compose_cfg("dataset._target_=helpers.custom_model.load_blobs", "experiment=tiny", "seed=3"))
    assert cfg.dataset.kwargs == {"image_size": 8, "channels": 1}  # holdout_fraction, max_train: not its parameters
    assert cfg.dataset.arguments(seed=cfg.seed) == {"image_size": 8, "channels": 1, "seed": 3}


def test_a_config_folder_on_the_search_path_adds_a_model_file(compose_cfg, tmp_path) -> None:
    folder = tmp_path / "my_conf" / "model"
    folder.mkdir(parents=True)
    (folder / "my_unet.yaml").write_text("_target_: helpers.custom_model.SkipNet\nname: my_unet\nwidth: 24\nheads: 4\n")
    cfg = to_config(compose_cfg(f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "model=my_unet"))
    assert (cfg.model.name, cfg.model.target, cfg.model.kwargs) == (
        "my_unet",
        "helpers.custom_model.SkipNet",
        {"width": 24, "heads": 4},
    )


def target_files() -> list[tuple[str, str]]:
    """(group, option) of every model and data set file."""
    return [(g, p.stem) for g in ("model", "dataset") for p in sorted((CONF_DIR / g).glob("*.yaml")) if p.stem != "custom"]


@pytest.mark.parametrize(("group", "option"), target_files(), ids=lambda v: str(v))
def test_every_target_matches_its_signature(group: str, option: str) -> None:
    """torchtune-style: the file's keys are parameters of its `_target_`, read from the signature (nothing is built)."""
    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
    own = MODEL_OWN_KEYS if group == "model" else DATASET_OWN_KEYS
    signature = signature_of(import_target(node["_target_"], f"{group}._target_"), option)
    assert set(node) - set(own) <= set(signature.names)
    schema = next(s for s in (model_schemas() if group == "model" else dataset_schemas()) if node["_target_"] in s.targets)
    assert {f.name for f in dataclasses.fields(schema)} == set(node) - set(own)  # the schema covers the file, no more
    assert set(signature.required) <= set(MODEL_SUPPLIED if group == "model" else ()) | {
        f.name for f in dataclasses.fields(schema)
    }


@pytest.mark.parametrize("schema", [*model_schemas(), *dataset_schemas()], ids=lambda s: s.__name__)
def test_every_builtin_schema_fits_its_targets(schema: type) -> None:
    for target in schema.targets:
        names = signature_of(import_target(target, "_target_"), target).names
        assert {f.name for f in dataclasses.fields(schema)} <= set(names), target
