"""Quantization methods as strategy objects with one interface: `quantize(model, ctx) -> QuantOutcome`.

The pipeline never branches on the method: fp32 is the identity, PTQ calibrates and converts, QAT
calibrates, fine-tunes with fake quantization through the shared training loop, and converts.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.ao import quantization as tq

from diffquant.diffusion.schedule import GaussianDiffusion
from diffquant.errors import DiffquantError
from diffquant.quant.calibration import CalibrationData, run_calibration
from diffquant.quant.qconfig import QuantSpec, make_qconfig
from diffquant.quant.wrap import fuse, wrap_layers
from diffquant.training import TrainSettings, train_diffusion


@dataclass
class QuantContext:
    """What a strategy may use: calibration pairs, training batches, the diffusion process, logging."""

    calibration: Callable[[], CalibrationData]
    train_batches: Callable[[], Iterator[Tensor]]
    diffusion: GaussianDiffusion
    generator: torch.Generator
    calib_batch_size: int = 64
    log_scalar: Callable[[str, float, int], None] | None = None
    progress: bool = True


@dataclass
class QuantOutcome:
    """The model to evaluate and how it executes: `fp32`, `int8` (real kernels) or `fakequant` (simulated)."""

    model: nn.Module
    execution: str
    wrapped_layers: list[str] = field(default_factory=list)
    fused_groups: list[list[str]] = field(default_factory=list)
    seconds: float = 0.0


def prepare_fake_quant(model: nn.Module, spec: QuantSpec, skip: list[str], qat: bool) -> tuple[nn.Module, list[str], list[list[str]]]:
    """Copy, fuse, wrap and `prepare_qat` a float model: every wrapped layer carries FakeQuantize modules."""
    qmodel = copy.deepcopy(model).train(qat)
    fused = fuse(qmodel, qat=qat)
    wrapped = wrap_layers(qmodel, make_qconfig(spec), skip)
    if not wrapped:
        raise DiffquantError(f"quant.skip={skip} leaves no Conv2d / Linear layer to quantize")
    qmodel.train()
    tq.prepare_qat(qmodel, inplace=True)
    return qmodel, wrapped, fused


def calibrate(qmodel: nn.Module, ctx: QuantContext) -> None:
    """Observe activation and weight ranges on the trajectory pairs with fake quantization off."""
    qmodel.apply(tq.disable_fake_quant)
    qmodel.apply(tq.enable_observer)
    run_calibration(qmodel, ctx.calibration(), ctx.calib_batch_size, ctx.progress)
    qmodel.apply(tq.enable_fake_quant)


def finalize(qmodel: nn.Module, spec: QuantSpec) -> tuple[nn.Module, str]:
    """Freeze ranges; convert to real int8 kernels at W8A8, keep fake quantization below."""
    qmodel.apply(tq.disable_observer)
    qmodel.eval()
    if spec.is_int8:
        return tq.convert(qmodel, inplace=True), "int8"
    return qmodel, "fakequant"


@dataclass
class FP32Strategy:
    """The unquantized reference: returns the model unchanged."""

    def quantize(self, model: nn.Module, ctx: QuantContext) -> QuantOutcome:
        return QuantOutcome(model=model, execution="fp32")


@dataclass
class PTQStrategy:
    """Post-training quantization: fuse, wrap, calibrate on trajectory pairs, convert."""

    spec: QuantSpec
    skip: list[str] = field(default_factory=list)

    def quantize(self, model: nn.Module, ctx: QuantContext) -> QuantOutcome:
        start = time.perf_counter()
        qmodel, wrapped, fused = prepare_fake_quant(model, self.spec, self.skip, qat=False)
        calibrate(qmodel, ctx)
        qmodel, execution = finalize(qmodel, self.spec)
        return QuantOutcome(qmodel, execution, wrapped, fused, time.perf_counter() - start)


@dataclass
class QATStrategy:
    """Quantization-aware training: calibrated start, fake-quant fine-tuning, observers frozen, convert."""

    spec: QuantSpec
    settings: TrainSettings
    skip: list[str] = field(default_factory=list)
    freeze_observer_step: int = 100

    def quantize(self, model: nn.Module, ctx: QuantContext) -> QuantOutcome:
        start = time.perf_counter()
        qmodel, wrapped, fused = prepare_fake_quant(model, self.spec, self.skip, qat=True)
        calibrate(qmodel, ctx)

        def freeze(step: int) -> None:
            if step == self.freeze_observer_step:
                qmodel.apply(tq.disable_observer)

        train_diffusion(qmodel, ctx.diffusion, ctx.train_batches(), self.settings, generator=ctx.generator,
                        log_scalar=ctx.log_scalar, on_step=freeze, tag="qat", progress=ctx.progress)
        qmodel, execution = finalize(qmodel, self.spec)
        return QuantOutcome(qmodel, execution, wrapped, fused, time.perf_counter() - start)


def make_strategy(
    method: str, spec: QuantSpec, skip: list[str], qat_settings: TrainSettings, freeze_observer_step: int
) -> FP32Strategy | PTQStrategy | QATStrategy:
    """The strategy object for `quant.method` (the one place that maps a method name to code)."""
    if method == "fp32":
        return FP32Strategy()
    if method == "ptq":
        return PTQStrategy(spec, list(skip))
    if method == "qat":
        return QATStrategy(spec, qat_settings, list(skip), freeze_observer_step)
    raise DiffquantError(f"quant.method={method!r} is not known; allowed: fp32, ptq, qat")
