"""`quant=ptq` on a GPU backend: plan the layers, calibrate static input scales on the trajectory pairs, convert, compile.

The outcome carries the bf16 (+ torch.compile) copy of the FP32 model as a baseline, so the evaluation
times the low-bit model against it on the same batch and GPU (`perf/sample_s_bf16_compiled`).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from diffquant.errors import DiffquantError
from diffquant.quant.coverage import edge_layers
from diffquant.quant.gpu.convert import LowBitSpec, convert_model, input_amax, plan_layers
from diffquant.quant.gpu.runtime import Compiling, LowBitModel, bf16_reference, require_gpu
from diffquant.quant.plan import QuantContext, QuantOutcome


@dataclass(frozen=True)
class GpuPTQStrategy:
    """Post-training quantization to a GPU low-bit format; what `methods.ptq_gpu` returns."""

    spec: LowBitSpec
    engine: str  # backend.engine (cuda_fp8, ...), for messages
    device: str  # cfg.device: the CUDA device
    skip: tuple[str, ...] = ()
    keep_float: tuple[str, ...] = ()  # roles (input / output layer) kept bf16
    compiling: Compiling = Compiling()
    warmup: int = 64  # the evaluation's sampling batch: compiled at this shape before timing

    def quantize(self, model: nn.Module, ctx: QuantContext) -> QuantOutcome:
        device = require_gpu(self.engine, self.device)
        log = logging.getLogger("diffquant")
        start = time.perf_counter()
        model_device = next(model.parameters()).device
        example = ctx.example if ctx.example is not None else ctx.calibration().cycled(2)
        roles = edge_layers(model, self.keep_float, *(p.to(model_device) for p in example)) if self.keep_float else []
        plan = plan_layers(model, self.spec, self.skip, roles)  # before the GPU is touched: bad settings fail first
        if not plan.converted:
            raise DiffquantError(
                f"backend={self.engine}: no Linear of {type(model).__name__} suits the {self.spec.format} kernel "
                f"({len(plan.kept)} layers kept bf16); see quant.skip / quant.keep_float, or use a CPU backend"
            )
        float_model = copy.deepcopy(model).to(device).eval()
        amax = {}
        if self.spec.static_inputs:
            data = ctx.calibration()
            amax = input_amax(float_model, plan.converted, data.batches(ctx.calib_batch_size), device)
        qmodel = LowBitModel(convert_model(float_model, self.spec, plan, amax), self.spec.execution, self.compiling)
        qmodel.prepare(device)
        seconds = time.perf_counter() - start
        for name, why in plan.kept.items():
            log.info("Kept in bf16: %s (%s)", name, why)
        compile_start = time.perf_counter()
        with torch.no_grad():
            qmodel(*ctx.calibration().cycled(self.warmup))  # compiles at the evaluation's batch shape
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return QuantOutcome(
            model=qmodel,
            execution=self.spec.execution,
            wrapped_layers=list(plan.converted),
            seconds=seconds,
            compile_seconds=time.perf_counter() - compile_start,
            float_layers=dict(plan.kept),
            baselines={
                "bf16_compiled" if self.compiling.enabled else "bf16": bf16_reference(model, self.compiling).prepare(device)
            },
        )
