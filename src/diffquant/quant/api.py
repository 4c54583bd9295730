"""The Python API: `calibration_pairs(model, ...)` and `quantize(model, calibration, ...)`, exported at `diffquant.*`.

Settings are the `quant` group's keys, merged over the same group file the CLI composes
(`conf/quant/<method>.yaml`, and `conf/quant_backend/<method>_<backend>.yaml` where one exists), and
validated by the same schema, so defaults and messages match `diffquant quant=<method> backend=<backend>`.
The pipeline quantizes through `make_strategy` and `quantize_with` below: the CLI and the API share one implementation.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from diffquant.components import import_target
from diffquant.diffusion.config import DiffusionConfig, SamplerConfig, build_diffusion, build_sampler
from diffquant.diffusion.guidance import guide_for
from diffquant.errors import DiffquantError, check_choice
from diffquant.quant.calibration import CalibrationData, Conditions, trajectory_pairs
from diffquant.quant.config import BackendConfig, CalibConfig, QuantConfig
from diffquant.quant.engine import GPU_ENGINES, Int8Numerics, resolve_int8_numerics, set_engine
from diffquant.quant.methods import MethodInputs, Strategy
from diffquant.quant.plan import QuantContext, QuantOutcome
from diffquant.quant.presets import apply_to_quant, settings_paths

METHODS = ("fp32", "ptq", "qat")
RECIPE_ATTR = "diffquant_recipe"  # the attribute of a quantized model that `save` reads


@dataclass(frozen=True)
class Run:
    """Run-level values a method reads besides its group: the sampling batch, the device, logging."""

    warmup: int = 64
    device: str = "cpu"
    log_every: int = 50


def calibration_pairs(
    model: nn.Module,
    *,
    shape: tuple[int, int, int],
    schedule: str = "linear",
    num_timesteps: int = 1000,
    sampler: str = "ddim",
    steps: int = 50,
    num_samples: int = 64,
    timesteps: int = 25,
    cond: Tensor | None = None,
    guidance_scale: float = 1.0,
    seed: int = 0,
) -> CalibrationData:
    """(x_t, t[, cond]) pairs from `model`'s own DDIM / DDPM trajectories (Q-Diffusion's practice), reusable across `quantize` calls.

    `shape` is one image's (C, H, W); `schedule` a beta schedule (linear, cosine) of `num_timesteps`;
    `timesteps` of the `steps` sampler steps are kept from each of `num_samples` trajectories. The
    pairs equal the CLI's for the same settings and `seed`. A conditional model (`num_classes` or
    `cond_shape`, diffusion/guidance.py) samples trajectory i with `cond[i % len(cond)]` (default: the
    classes in turn, as the CLI); with `guidance_scale` != 1 the pairs are its batched calls, the
    conditional and the null half.
    """
    diffusion_cfg = DiffusionConfig(schedule=schedule, num_timesteps=num_timesteps)
    sampler_cfg = SamplerConfig(name=sampler, steps=steps, guidance_scale=guidance_scale)
    calib = CalibConfig(num_samples=num_samples, timesteps=timesteps)
    sample = build_sampler(sampler_cfg, build_diffusion(diffusion_cfg))
    model = model.eval()
    conditions = pair_conditions(model, cond, guidance_scale, num_samples)
    run = (lambda **kw: sample(model, **kw)) if conditions is None else sample
    with torch.no_grad():
        return trajectory_pairs(run, sampler_cfg.timesteps(num_timesteps), calib, num_timesteps, tuple(shape), seed, conditions)


def pair_conditions(model: nn.Module, cond: Tensor | None, guidance_scale: float, n: int) -> Conditions | None:
    """The conditions of `n` calibration trajectories: `cond` cycled (checked against the model), or its classes in turn."""
    guide = guide_for(model, guidance_scale)
    if guide is None:
        if cond is not None:
            raise DiffquantError(
                "calibration_pairs: cond= was given, but the model is unconditional (no num_classes / cond_shape)"
            )
        return None
    if cond is None:
        if not guide.num_labels:
            raise DiffquantError(
                "calibration_pairs: the model is conditioned on embeddings and has no cond_pool; pass cond=<[M, L, D] tensor>"
            )
        cond = guide.requested(n)
    guide.check(cond, "calibration_pairs cond")
    return Conditions(model, guide, cond[torch.arange(n) % len(cond)])


def check_calibration(model: nn.Module, calibration: CalibrationData) -> None:
    """The pairs must fit the model: its condition present (or absent), one forward on two rows must run."""
    guide = guide_for(model)
    if guide is not None and calibration.cond is None:
        raise DiffquantError(
            "quantize: the model is conditional but the calibration pairs carry no conditions; "
            "make them with diffquant.calibration_pairs(model, ...) (cond= for embeddings)"
        )
    if guide is None and calibration.cond is not None:
        raise DiffquantError("quantize: the calibration pairs carry conditions, but the model is unconditional")
    if guide is not None and calibration.cond is not None:
        guide.check(calibration.cond, "quantize calibration", allow_null=True)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(*calibration.cycled(2))
    except Exception as exc:  # noqa: BLE001 - any failure is the pairs not fitting the model: one line
        shapes = ", ".join(str(tuple(part.shape[1:])) for part in calibration.cycled(1))
        detail = " ".join(str(exc).split())[:200]
        raise DiffquantError(
            f"quantize: calibration pairs of per-row shapes {shapes} do not fit the model ({type(exc).__name__}: {detail}); "
            "make them with diffquant.calibration_pairs(model, shape=<one image's (C, H, W)>)"
        ) from None
    finally:
        model.train(was_training)


def group_file(*parts: str) -> dict[str, Any]:
    """A YAML file of the package's config folder as a plain dict ({} where it does not exist)."""
    path = importlib.resources.files("diffquant.conf").joinpath(*parts)
    if not path.is_file():
        return {}
    node = OmegaConf.to_container(OmegaConf.create(path.read_text()))
    assert isinstance(node, dict)
    return node


def quant_settings(method: str, backend: str, settings: Mapping[str, Any]) -> QuantConfig:
    """The `quant` group the CLI would compose for `quant=<method> backend=<backend>`, with `settings` on top."""
    check_choice("quant", method, METHODS)
    names = [f.name for f in fields(QuantConfig)]
    for key in settings:
        if key not in names:
            guess = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean quant.{guess[0]}?" if guess else f"allowed keys in quant: {', '.join(names)}"
            raise DiffquantError(f"quant.{key}={settings[key]!r} is not a setting; {hint}")
    layers = [group_file("quant", f"{method}.yaml"), group_file("quant_backend", f"{method}_{backend}.yaml"), dict(settings)]
    try:
        node = OmegaConf.merge(OmegaConf.structured(QuantConfig), *layers)
        apply_to_quant(node, settings_paths(settings))  # the width's recipe, as the CLI applies it (quant.preset)
        quant = OmegaConf.to_object(node)
    except OmegaConfBaseException as exc:
        if isinstance(exc.__cause__, DiffquantError):
            raise exc.__cause__ from None
        key = str(getattr(exc, "full_key", "") or "")
        raise DiffquantError(f"quant.{key}: {str(exc).splitlines()[0]}" if key else str(exc).splitlines()[0]) from None
    assert isinstance(quant, QuantConfig)
    return quant


def backend_config(engine: str, int8_scheme: str, torchscript: bool, extra: Mapping[str, Any]) -> BackendConfig:
    """The backend group of `quantize`: its engine and int8 scheme, plus the other keys given (a typo gets a suggestion)."""
    known = [f.name for f in fields(BackendConfig) if f.name not in ("engine", "int8_scheme", "torchscript")]
    for key in extra:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(known)}"
            raise DiffquantError(f"quantize: backend_settings has no key {key!r}{hint}")
    return BackendConfig(engine=engine, int8_scheme=int8_scheme, torchscript=torchscript, **extra)


def make_strategy(quant: QuantConfig, backend: BackendConfig, numerics: Int8Numerics, run: Run) -> Strategy:
    """The strategy of `quant._target_` (quant/methods.py); the factory refuses int8 that saturates on this CPU."""
    inputs = MethodInputs(
        quant,
        backend.engine,
        backend.int8_scheme,
        numerics,
        backend.torchscript,
        run.warmup,
        run.device,
        run.log_every,
        backend.weight_scaling,
        backend.group_size,
        backend.compiling(),
    )
    strategy = import_target(quant._target_, "quant._target_")(inputs)
    if not callable(getattr(strategy, "quantize", None)):
        raise DiffquantError(
            f"quant._target_={quant._target_} returned a {type(strategy).__name__}; expected an object with "
            "quantize(model, ctx) -> QuantOutcome"
        )
    return strategy


def quantize_with(
    strategy: Strategy, model: nn.Module, ctx: QuantContext, quant: QuantConfig, backend: BackendConfig, numerics: Int8Numerics
) -> QuantOutcome:
    """Run the strategy; the quantized model carries its recipe (`RECIPE_ATTR`, what `save` writes beside it)."""
    outcome = strategy.quantize(model, ctx)
    if outcome.model is not model:  # fp32 returns the model itself: nothing to label
        recipe = {"quant": OmegaConf.to_container(OmegaConf.structured(quant)), "backend": dataclasses.asdict(backend)}
        recipe.update(
            execution=outcome.execution,
            int8_scheme=numerics.scheme.name,
            wrapped_layers=list(outcome.wrapped_layers),
            float_layers=dict(outcome.float_layers),
        )
        if outcome.mixed_precision:  # the widths a budget chose: `quant.layer_bits` reproduces them
            recipe["mixed_precision"] = dict(outcome.mixed_precision)
        setattr(outcome.model, RECIPE_ATTR, recipe)
    return outcome


def quantize(
    model: nn.Module,
    calibration: CalibrationData,
    *,
    method: str = "ptq",
    backend: str = "fbgemm",
    int8_scheme: str = "auto",
    torchscript: bool = True,
    train_images: Tensor | None = None,
    train_labels: Tensor | None = None,
    cond_dropout: float = 0.1,
    schedule: str = "linear",
    num_timesteps: int = 1000,
    seed: int = 0,
    progress: bool = False,
    device: str | None = None,
    backend_settings: Mapping[str, Any] | None = None,
    **settings: Any,
) -> nn.Module:
    """Quantize a copy of `model` (never `model` itself): real int8 where the CLI would run int8, fake-quantized otherwise.

    `settings` are the `quant` group's keys (`weight_bits`, `act_bits`, `granularity`, `observer`,
    `skip`, `layer_bits`, `recon={...}`, `qat={...}`, ...). `method="qat"` trains on `train_images`
    ([N, C, H, W] in [-1, 1]) under the beta `schedule`, unless `qat={"data_free": True}`; a
    conditional model also needs `train_labels` (dropped to the null condition with `cond_dropout`).
    A GPU backend (`cuda_fp8`, `cuda_int8`, `cuda_int4wo`) runs on `device` (default `cuda`) and reads
    the backend group's other keys from `backend_settings` (`weight_scaling`, `group_size`, `compile`).
    """
    quant = quant_settings(method, backend, settings)
    backend_cfg = backend_config(backend, int8_scheme, torchscript, backend_settings or {})
    device = device or ("cuda" if backend in GPU_ENGINES else "cpu")
    check_calibration(model, calibration)
    guide = guide_for(model)
    if method == "qat" and train_images is None and not quant.qat.data_free:
        raise DiffquantError("method='qat' needs train_images=<[N, C, H, W] tensor in [-1, 1]> (or qat={'data_free': True})")
    if method == "qat" and guide is not None and not quant.qat.data_free:
        if train_labels is None:
            raise DiffquantError("method='qat' on a conditional model needs train_labels=<[N] conditions of train_images>")
        guide.check(train_labels, "quantize train_labels")
    diffusion = build_diffusion(DiffusionConfig(schedule=schedule, num_timesteps=num_timesteps))
    batches = torch.Generator().manual_seed(seed + 2)

    def train_batches() -> Any:
        from diffquant.data.datasets import iterate_batches, iterate_labelled

        assert train_images is not None
        if guide is None:
            return iterate_batches(train_images, quant.qat.batch_size, batches)
        assert train_labels is not None
        return iterate_labelled(train_images, train_labels, quant.qat.batch_size, batches)

    ctx = QuantContext(
        calibration=lambda: calibration,
        train_batches=train_batches,
        diffusion=diffusion,
        generator=torch.Generator().manual_seed(seed + 3),
        calib_batch_size=quant.calib.batch_size,
        progress=progress,
        batch_generator=batches,
        example=calibration.cycled(2),
        conditioning=None if guide is None else (guide, cond_dropout),
    )
    set_engine(backend)
    numerics = resolve_int8_numerics(backend, int8_scheme)
    strategy = make_strategy(quant, backend_cfg, numerics, Run(warmup=min(64, len(calibration.t)), device=device))
    return quantize_with(strategy, copy.deepcopy(model).eval(), ctx, quant, backend_cfg, numerics).model
