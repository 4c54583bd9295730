"""The model stage builds `model._target_` and probes it with one forward: the wrong signature or shape is one line."""

from __future__ import annotations

import re

import pytest
import torch

from diffquant.errors import DiffquantError
from diffquant.models import build_model, probe_model
from helpers import model_spec
from helpers.custom_model import SkipNet


def test_a_user_model_gets_the_data_shape_and_passes_the_probe() -> None:
    model = build_model(model_spec("helpers.custom_model.SkipNet", width=8), 3, 16)
    assert isinstance(model, SkipNet) and model.stem[0].in_channels == 3
    probe_model(model, "helpers.custom_model.SkipNet", 3, 16)
    assert model.training  # the probe runs in eval mode and restores the mode


def test_the_probe_changes_no_state() -> None:
    model = SkipNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe_model(model, "helpers.custom_model.SkipNet", 1, 8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics included


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("NoTimestep", r"a probe forward on x_t \(2, 1, 8, 8\), t \(2,\) failed \(TypeError: .*forward\(\) takes 2 positional"),
        ("HalfSize", r"returned shape \(2, 1, 4, 4\) for x_t of shape \(2, 1, 8, 8\); expected forward\(x_t, t\)"),
        ("not_a_module", r"returned a str; expected an nn\.Module with forward\(x_t, t\)"),
    ],
)
def test_a_model_that_is_not_an_epsilon_network_is_one_line(target: str, message: str) -> None:
    path = f"helpers.bad_components.{target}"
    with pytest.raises(DiffquantError, match=rf"^model\._target_={re.escape(path)}:? {message}") as info:
        probe_model(build_model(model_spec(path), 1, 8), path, 1, 8)
    assert "\n" not in str(info.value)
