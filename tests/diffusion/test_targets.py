"""`sampler._target_` and `diffusion._target_`: the built-in registry, a user's own sampler and schedule, bad targets.

`helpers.custom_diffusion` stands for a user package (diffquant never imports it). The user
components go through to_config and the pipeline's own builders and calibration cache, in process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from diffquant.components import import_path
from diffquant.config import DiffusionConfig, SamplerConfig, to_config
from diffquant.diffusion.config import build_diffusion, build_sampler
from diffquant.diffusion.samplers import builtin_samplers, ddim_timesteps, load_sampler
from diffquant.diffusion.schedule import builtin_schedules, load_schedule
from diffquant.errors import DiffquantError
from diffquant.evaluation.protocol import sampler_steps
from diffquant.evaluation.sampling import reference_samples
from diffquant.pipeline import CachedCalibration
from helpers import CONF_DIR, fp32_key_of, fp32_key_parts_of
from helpers.custom_diffusion import quadratic_betas, trailing_timesteps

USER_SAMPLER = "sampler._target_=helpers.custom_diffusion.trailing_sample"
USER_SCHEDULE = "diffusion._target_=helpers.custom_diffusion.quadratic_betas"
# group -> (the name's key, the registry, how a config is made from a name)
GROUPS = {
    "sampler": ("name", builtin_samplers, lambda name: SamplerConfig(name=name)),
    "diffusion": ("schedule", builtin_schedules, lambda name: DiffusionConfig(schedule=name)),
}


class ZeroEps(nn.Module):
    """A stand-in ε-network: predicts no noise (the sampler's steps are what is tested)."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)


@pytest.mark.parametrize("group", list(GROUPS))
def test_the_group_files_are_the_registry(group: str) -> None:
    """conf/<group>/<name>.yaml names the built-in function registered as <name>, and it fits the call diffquant makes."""
    label, registry, _ = GROUPS[group]
    files = {p.stem: OmegaConf.load(p) for p in sorted((CONF_DIR / group).glob("*.yaml"))}
    assert set(files) == set(registry())
    for name, node in files.items():
        assert (node["_target_"], node[label]) == (import_path(registry()[name]), name)
        (load_sampler if group == "sampler" else load_schedule)(node["_target_"])


@pytest.mark.parametrize("group", list(GROUPS))
def test_the_names_validation_allows_are_the_registry(group: str) -> None:
    label, registry, make = GROUPS[group]
    for name, fn in registry().items():
        assert make(name).target == import_path(fn)  # a name alone picks its built-in
    with pytest.raises(DiffquantError) as info:
        make("euler")
    assert str(info.value) == (
        f"{group}.{label}='euler' is not allowed; allowed: {', '.join(registry())} "
        f"(or your own function: {group}._target_=package.module.function)"
    )


def test_a_file_without_a_target_picks_the_builtin_of_its_name(compose_cfg, tmp_path: Path) -> None:
    """A sampler file written before `_target_` existed keeps working, with the same cache keys."""
    folder = tmp_path / "my_conf" / "sampler"
    folder.mkdir(parents=True)
    (folder / "old_ddpm.yaml").write_text("name: ddpm\nsteps: 1000\neta: 1.0\n")
    old = to_config(compose_cfg(f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "sampler=old_ddpm"))
    new = to_config(compose_cfg("sampler=ddpm"))
    assert old.sampler.target == new.sampler.target == import_path(builtin_samplers()["ddpm"])
    assert old.sampler.key() == new.sampler.key() == {"name": "ddpm", "steps": 1000, "eta": 1.0}


def test_a_user_sampler_and_schedule_run_through_the_pipeline(compose_cfg, tmp_path: Path) -> None:
    cfg = to_config(compose_cfg("experiment=tiny", USER_SAMPLER, USER_SCHEDULE))
    assert (cfg.sampler.name, cfg.sampler.steps, cfg.diffusion.schedule) == ("trailing_sample", 5, "quadratic_betas")
    diffusion = build_diffusion(cfg.diffusion)
    torch.testing.assert_close(diffusion.betas, quadratic_betas(1000), rtol=0, atol=0)
    sample = build_sampler(cfg.sampler, diffusion)
    assert sampler_steps(cfg.sampler, cfg.diffusion.num_timesteps) == 5 and cfg.sampler.timesteps(1000) == trailing_timesteps(
        1000, 5
    ) == [999, 799, 599, 399, 199]

    calibration = CachedCalibration(cfg, tmp_path, lambda **kw: sample(ZeroEps(), **kw), 1, 8).get()
    assert sorted(set(calibration.t.tolist()), reverse=True) == [999, 799, 599, 399, 199]  # quant.calib.timesteps=5 of 5
    assert calibration.x.shape == (5 * 8, 1, 8, 8)

    samples = reference_samples(
        cfg.sampler, cfg.diffusion, cfg.eval.num_samples, tmp_path, 1234, lambda: sample(ZeroEps(), noise=torch.randn(2, 1, 8, 8))
    )
    assert samples.shape == (2, 1, 8, 8) and torch.isfinite(samples).all()


def test_a_user_component_keys_its_own_cache_entries(compose_cfg, tmp_path: Path) -> None:
    """Its import path enters the keys, so it never shares an entry with the built-in it replaces."""
    builtin, user = to_config(compose_cfg()), to_config(compose_cfg(USER_SAMPLER, USER_SCHEDULE))
    assert user.sampler.key() == {"name": "trailing_sample", "steps": 50, "eta": 0.0, "_target_": user.sampler.target}
    assert fp32_key_parts_of(user, 1, 16)["diffusion"]["_target_"] == "helpers.custom_diffusion.quadratic_betas"
    assert "_target_" not in builtin.sampler.key() and "_target_" not in fp32_key_parts_of(builtin, 1, 16)["diffusion"]
    assert fp32_key_of(user, 1, 16) != fp32_key_of(builtin, 1, 16)
    paths = [CachedCalibration(c, tmp_path, None, 1, 16).path for c in (builtin, user)]
    assert paths[0] != paths[1]


def test_a_user_sampler_without_a_timesteps_companion_visits_ddims_timesteps(compose_cfg) -> None:
    cfg = to_config(compose_cfg("sampler._target_=helpers.custom_diffusion.plain_sample", "sampler.steps=40"))
    assert cfg.sampler.timesteps(1000) == ddim_timesteps(1000, 40)
    assert sampler_steps(cfg.sampler, cfg.diffusion.num_timesteps) == 40


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (USER_SAMPLER, ("sampler", "trailing_sample")),  # not the `ddim` inherited from conf/sampler/ddim.yaml
        (f"{USER_SAMPLER} sampler.name=my_sampler", ("sampler", "my_sampler")),  # a name typed with it is kept
        ("sampler._target_=diffquant.diffusion.samplers.ddpm_sample", ("sampler", "ddpm")),  # a built-in's path: its name
        (USER_SCHEDULE, ("diffusion", "quadratic_betas")),
        ("diffusion._target_=diffquant.diffusion.schedule.cosine_betas", ("diffusion", "cosine")),
    ],
    ids=["user", "user-named", "builtin-path", "user-schedule", "builtin-schedule-path"],
)
def test_a_typed_target_gets_its_own_name(compose_cfg, override: str, expected: tuple[str, str]) -> None:
    cfg = to_config(compose_cfg(*override.split(" ")))
    group, name = expected
    assert (cfg.sampler.name if group == "sampler" else cfg.diffusion.schedule) == name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("sampler._target_=no_such_pkg.samplers.euler",),
            "sampler._target_=no_such_pkg.samplers.euler: no module named 'no_such_pkg' (is its package installed, or on PYTHONPATH?)",
        ),
        (
            ("sampler._target_=diffquant.diffusion.samplers.ddim_sampel",),
            "sampler._target_=diffquant.diffusion.samplers.ddim_sampel: module 'diffquant.diffusion.samplers' has no "
            "attribute 'ddim_sampel'; did you mean diffquant.diffusion.samplers.ddim_sample?",
        ),
        (
            ("sampler._target_=helpers.custom_diffusion.sample_without_callback",),
            "sampler._target_=helpers.custom_diffusion.sample_without_callback does not take callback; expected "
            "sample(model, diffusion, noise, steps, eta, generator, callback) like diffquant.diffusion.samplers.ddim_sample",
        ),
        (
            ("diffusion._target_=helpers.custom_diffusion.betas_without_end",),
            "diffusion._target_=helpers.custom_diffusion.betas_without_end does not take beta_end; expected a function "
            "(num_timesteps, beta_start, beta_end) -> betas",
        ),
        (
            ("diffusion._target_=diffquant.diffusion.schedule",),
            "diffusion._target_=diffquant.diffusion.schedule is a module, not a class or function",
        ),
        (
            ("sampler.name=ddpm",),
            "sampler.name='ddpm' is the name of the built-in diffquant.diffusion.samplers.ddpm_sample, not of "
            "sampler._target_=diffquant.diffusion.samplers.ddim_sample; pick sampler=ddpm, or give your function its own "
            "sampler.name",
        ),
        (
            ("diffusion.schedule=quadratic",),
            "diffusion.schedule='quadratic' is not allowed; allowed: linear, cosine "
            "(or your own function: diffusion._target_=package.module.function)",
        ),
    ],
    ids=["no-module", "no-attribute", "sampler-signature", "schedule-signature", "not-callable", "name-of-other", "name-alone"],
)
def test_a_bad_target_is_one_line_naming_the_setting(compose_cfg, overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(DiffquantError) as info:
        to_config(compose_cfg(*overrides))
    assert str(info.value) == message


def test_betas_that_do_not_fit_are_one_line_when_the_pipeline_builds_them(compose_cfg) -> None:
    cfg = to_config(compose_cfg("diffusion._target_=helpers.custom_diffusion.short_betas"))
    with pytest.raises(DiffquantError) as info:
        build_diffusion(cfg.diffusion)
    assert str(info.value) == (
        "diffusion._target_=helpers.custom_diffusion.short_betas returned torch.float64 of shape (999,); "
        "expected a float tensor of diffusion.num_timesteps=1000 betas"
    )
