"""Schemas of the `diffusion` and `sampler` groups: a function chosen by `_target_`, with fixed settings.

`sampler._target_` names a sampler function (diffusion/samplers.py), `diffusion._target_` a beta
schedule (diffusion/schedule.py). The built-in functions are registered by config name
(`builtin_samplers`, `builtin_schedules`), and that registry is the one source of: the names
allowed without a `_target_`, the rule that a built-in's name labels that built-in only, the name a
typed `_target_` gets (`settle_names`), and the cache keys: a built-in's key is its settings alone,
as before `_target_` existed; any other function's adds its import path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

from omegaconf import DictConfig
from torch import Tensor

from diffquant.components import explicit_keys, import_path
from diffquant.diffusion.samplers import builtin_samplers, load_sampler, sampler_timesteps
from diffquant.diffusion.schedule import GaussianDiffusion, builtin_schedules, load_schedule
from diffquant.errors import DiffquantError, check_range


def builtin_paths(builtins: Mapping[str, Callable[..., Any]]) -> dict[str, str]:
    """Config name -> `_target_` of each built-in function."""
    return {name: import_path(fn) for name, fn in builtins.items()}


def resolve_target(group: str, label: str, name: str, target: Optional[str], builtins: Mapping[str, Callable[..., Any]]) -> str:
    """The import path: `target`, else the built-in called `name`. A built-in and its name go together:
    `sampler.name=ddpm` cannot label DDIM, nor `diffusion.schedule=quadratic` the linear betas."""
    paths = builtin_paths(builtins)
    if name in paths and target not in (None, paths[name]):
        raise DiffquantError(
            f"{group}.{label}={name!r} is the name of the built-in {paths[name]}, not of {group}._target_={target}; "
            f"pick {group}={name}, or give your function its own {group}.{label}"
        )
    if name not in paths and (target is None or target in paths.values()):
        raise DiffquantError(
            f"{group}.{label}={name!r} is not allowed; allowed: {', '.join(paths)} "
            f"(or your own function: {group}._target_=package.module.function)"
        )
    return paths[name] if target is None else target


def key_of(values: dict[str, Any], name: str, target: str, builtins: Mapping[str, Callable[..., Any]]) -> dict[str, Any]:
    """Cache-key fields: every setting, plus `_target_` unless it is the built-in called `name`."""
    values.pop("_target_")
    return values if builtin_paths(builtins).get(name) == target else {**values, "_target_": target}


def label_of(target: str, builtins: Mapping[str, Callable[..., Any]]) -> str:
    """The name a typed `_target_` gets: a built-in's config name, else the function's own name."""
    names = {path: name for name, path in builtin_paths(builtins).items()}
    return names.get(target, target.rsplit(".", 1)[-1])


@dataclass
class DiffusionConfig:
    """The `diffusion` group: the beta schedule (`_target_`) and the arguments it is called with."""

    schedule: str = "linear"  # the name: a built-in's (linear, cosine) or your schedule's
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    _target_: Optional[str] = None  # the betas function's import path; None: the built-in called `schedule`

    def __post_init__(self) -> None:
        check_range("diffusion.num_timesteps", self.num_timesteps, 2)
        load_schedule(self.target)  # a target that does not import or fit fails here, before any training

    @property
    def target(self) -> str:
        """The import path of the schedule function (`_target_`, else the built-in called `schedule`)."""
        return resolve_target("diffusion", "schedule", self.schedule, self._target_, builtin_schedules())

    def key(self) -> dict[str, Any]:
        """What the betas depend on, for cache keys (a built-in's key leaves its import path out)."""
        return key_of(dataclasses.asdict(self), self.schedule, self.target, builtin_schedules())


@dataclass
class SamplerConfig:
    """The `sampler` group: the sampler function (`_target_`), its steps and eta."""

    name: str = "ddim"  # the name: a built-in's (ddim, ddpm) or your sampler's
    steps: int = 50
    eta: float = 0.0
    guidance_scale: float = 1.0  # classifier-free guidance of conditional models: 1 none, 0 unconditional, > 1 guided
    _target_: Optional[str] = None  # the sampler function's import path; None: the built-in called `name`

    def __post_init__(self) -> None:
        check_range("sampler.steps", self.steps, 1)
        check_range("sampler.eta", self.eta, 0.0, 1.0)
        if not self.guidance_scale >= 0:
            raise DiffquantError(
                f"sampler.guidance_scale={self.guidance_scale} must be >= 0 (1: no guidance, 0: unconditional, > 1: guided)"
            )
        load_sampler(self.target)  # a target that does not import or fit fails here, before any training

    @property
    def target(self) -> str:
        """The import path of the sampler function (`_target_`, else the built-in called `name`)."""
        return resolve_target("sampler", "name", self.name, self._target_, builtin_samplers())

    def function(self) -> Callable[..., Tensor]:
        """The sampler function, imported from `sampler._target_`."""
        return load_sampler(self.target)

    def timesteps(self, num_timesteps: int) -> list[int]:
        """The timesteps the sampler feeds the model, in order (its `timesteps` companion; samplers.py)."""
        return sampler_timesteps(self.function(), num_timesteps, self.steps)

    def key(self) -> dict[str, Any]:
        """What the samples depend on, for cache keys (a built-in's key leaves its import path out, and an
        unguided sampler its guidance scale, so keys made before guidance existed stay valid)."""
        values = dataclasses.asdict(self)
        if values["guidance_scale"] == 1.0:
            values.pop("guidance_scale")
        return key_of(values, self.name, self.target, builtin_samplers())


def settle_names(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """A `_target_` typed without a name gets its own (a `ddim` inherited from the group file would mislabel it)."""
    groups = (("sampler", "name", builtin_samplers()), ("diffusion", "schedule", builtin_schedules()))
    for group, label, builtins in groups:
        explicit = explicit_keys(overrides, group)
        node = cfg.get(group)
        if "_target_" in explicit and label not in explicit and isinstance(node, DictConfig):
            target = node.get("_target_")
            if isinstance(target, str):
                cfg = cfg.copy()
                cfg[group][label] = label_of(target, builtins)
    return cfg


def build_diffusion(d: DiffusionConfig) -> GaussianDiffusion:
    """The forward process on the betas of `diffusion._target_` (checked: one per timestep, each in (0, 1))."""
    return GaussianDiffusion.from_config(d.target, d.num_timesteps, d.beta_start, d.beta_end)


def build_sampler(sampler: SamplerConfig, diffusion: GaussianDiffusion) -> Callable[..., Tensor]:
    """`sample(model, noise=..., callback=...)`: the function of `sampler._target_` with the run's steps and eta."""
    return partial(sampler.function(), diffusion=diffusion, steps=sampler.steps, eta=sampler.eta, generator=None)
