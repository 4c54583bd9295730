"""The FP32 cache key: the model's and data set's import paths and the arguments actually passed, nothing else."""

from __future__ import annotations

from diffquant.config import to_config
from helpers import fp32_key_of, fp32_key_parts_of

USER = ("model._target_=helpers.custom_model.SkipNet", "+model.width=16")


def test_the_key_holds_the_target_and_the_arguments_passed(compose_cfg) -> None:
    parts = fp32_key_parts_of(to_config(compose_cfg(*USER, "dataset._target_=helpers.custom_model.load_blobs")), 1, 8)
    assert parts["model"] == {"_target_": "helpers.custom_model.SkipNet", "width": 16, "in_channels": 1, "image_size": 8}
    assert parts["dataset"] == {"_target_": "helpers.custom_model.load_blobs", "image_size": 16, "channels": 1, "seed": 0}


def test_two_user_models_never_share_an_entry(compose_cfg) -> None:
    a = to_config(compose_cfg(*USER))
    b = to_config(compose_cfg("model._target_=helpers.bad_components.HalfSize"))
    assert fp32_key_of(a, 1, 8) != fp32_key_of(b, 1, 8)
    assert fp32_key_parts_of(b, 1, 8)["model"] == {"_target_": "helpers.bad_components.HalfSize", "in_channels": 1}


def test_inherited_keys_the_target_ignores_do_not_split_an_entry(compose_cfg) -> None:
    plain = to_config(compose_cfg(*USER))
    tiny_keys = to_config(compose_cfg(*USER, "+model.unused=1", "~model.base_channels"), [*USER])  # as if inherited
    assert fp32_key_of(plain, 1, 8) == fp32_key_of(tiny_keys, 1, 8)
    assert fp32_key_of(plain, 1, 8) != fp32_key_of(plain, 3, 8)  # the data's channels are an argument passed


def test_how_often_to_checkpoint_and_the_model_name_do_not_key_the_entry(compose_cfg) -> None:
    base = to_config(compose_cfg())
    other = to_config(compose_cfg("train.checkpoint_every=7", "model.name=renamed"))
    assert fp32_key_of(base, 1, 16) == fp32_key_of(other, 1, 16)
    assert fp32_key_of(base, 1, 16) != fp32_key_of(to_config(compose_cfg("model.base_channels=16")), 1, 16)
