"""Running a bf16 model with low-bit layers on the GPU: device checks, bf16 inputs, `torch.compile` per shape.

`LowBitModel` is what a GPU backend's run evaluates and saves: it takes float32 inputs and returns
float32 noise predictions, so samplers and metrics treat it like the FP32 model. With no layer
converted it is the bf16 (+ torch.compile) reference the GPU backends are timed against.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from diffquant.errors import DiffquantError, check_choice
from diffquant.quant.engine import GPU_ENGINES
from diffquant.quant.gpu.formats import Int4WeightOnlyLinear
from diffquant.quant.gpu.gelu import sigmoid_gelus

FP8_CAPABILITY = (8, 9)  # Ada / Hopper: the first GPUs with fp8 tensor cores


def is_gpu_engine(engine: str) -> bool:
    """Whether `backend.engine` names a GPU low-bit backend."""
    return engine in GPU_ENGINES


def is_gpu_execution(execution: str) -> bool:
    """Whether an outcome's `execution` runs GPU low-bit kernels (fp8_gpu, int8_gpu, int4wo_gpu) or the bf16 reference."""
    return execution.endswith("_gpu")


def require_gpu(engine: str, device: str) -> torch.device:
    """The CUDA device a GPU backend runs on; one line naming the setting when it cannot run here."""
    if not torch.cuda.is_available():
        raise DiffquantError(f"backend={engine} needs a CUDA GPU; this machine has none (use backend=fbgemm or x86 on the CPU)")
    target = torch.device(device)
    if target.type != "cuda":
        raise DiffquantError(f"backend={engine} runs on the GPU: set device=cuda (got device={device})")
    if GPU_ENGINES[engine] == "fp8":
        capability = torch.cuda.get_device_capability(target)
        if capability < FP8_CAPABILITY:
            raise DiffquantError(
                f"backend={engine} needs a GPU of compute capability 8.9 or newer (fp8 tensor cores: Ada, Hopper); "
                f"{torch.cuda.get_device_name(target)} is {capability[0]}.{capability[1]}: use backend=cuda_int8 or cuda_int4wo"
            )
    return target


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_SCOPES = ("model", "blocks")


@dataclass(frozen=True)
class Compiling:
    """How a GPU model is compiled: at all, torch.compile's `mode`, and the whole model or each repeated block.

    `scope=blocks` is regional compilation: the blocks of a `ModuleList` share class and shapes, so Dynamo
    compiles the first and reuses its graph (a DiT-XL/2 compiles one block, not 28) while the glue around
    them runs eagerly; `model` compiles everything as one graph (slower to compile, fuses across blocks).
    """

    enabled: bool = True
    mode: str = "default"
    scope: str = "model"
    sigmoid_gelu: bool = True  # tanh-form GELUs as x·sigmoid(2u) before compiling (gpu/gelu.py: 1.03x per fp8 DiT step, H100)

    def __post_init__(self) -> None:
        check_choice("backend.compile_mode", self.mode, COMPILE_MODES)
        check_choice("backend.compile_scope", self.scope, COMPILE_SCOPES)


class LowBitModel(nn.Module):
    """A bf16 model (low-bit layers inside) called with float32 inputs on its device; compiled once per input shape."""

    def __init__(self, model: nn.Module, execution: str, compiling: Compiling | None = None) -> None:
        super().__init__()
        self.model, self.execution, self.compiling = model, execution, compiling or Compiling()
        self.__dict__["_compiled"] = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"], state["_prepared"] = None, None  # a compiled callable does not pickle; rebuilt on first call
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for module in self.model.modules():  # blocks compiled in place before saving: they compile again when called
            module.__dict__["_compiled_call_impl"] = None

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(itertools.chain(self.model.parameters(), self.model.buffers())).device

    def prepare(self, device: torch.device) -> LowBitModel:
        """Move to `device` and lay int4 weights out for its kernel (before compiling: no packing inside the graph)."""
        self.model.to(device)
        for module in self.model.modules():
            if isinstance(module, Int4WeightOnlyLinear):
                module.pack_for(device)
        self.__dict__["_compiled"] = None
        self.__dict__["_prepared"] = str(device)
        return self

    def runner(self) -> nn.Module:
        """The model, compiled on first use (`Compiling`), or the model itself."""
        c = self.compiling
        if not c.enabled:
            return self.model
        if self.__dict__["_compiled"] is None:
            allow_recompiles()
            if c.sigmoid_gelu:
                sigmoid_gelus(self.model)
            blocks = repeated_blocks(self.model) if c.scope == "blocks" else []
            for block in blocks:
                block.compile(dynamic=False, mode=c.mode)
            self.__dict__["_compiled"] = self.model if blocks else torch.compile(self.model, dynamic=False, mode=c.mode)
        return self.__dict__["_compiled"]

    def forward(self, *args: Tensor) -> Tensor:
        device = self.device
        if self.__dict__.get("_prepared") != str(device):  # moved by .to() (or just loaded): lay weights out again
            self.prepare(device)
        inputs = [a.to(device, torch.bfloat16) if a.is_floating_point() else a.to(device) for a in args]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return self.runner()(*inputs).float()


RECOMPILE_LIMIT = 64


def allow_recompiles(limit: int = RECOMPILE_LIMIT) -> None:
    """Let Dynamo keep `limit` compiled entries per code object (its default is 8).

    Every compiled copy of a model class shares that class's `forward` code object, and each input shape
    and each layer type is one more entry: a run compiles the low-bit model and its bf16 baseline at
    the sampling, probe and last-batch shapes, a benchmark every variant at every batch. Past the limit
    Dynamo silently runs the rest eagerly, which made compiled variants time like eager ones.
    """
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, limit)


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The members of every `ModuleList` whose members are all of one class (transformer blocks), in order."""
    blocks: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            blocks.extend(module)
    return blocks


def uncompiled_state(model: nn.Module) -> dict[nn.Module, Any]:
    """Remove (and return) what `nn.Module.compile` attached to submodules: compiled callables do not pickle."""
    return {
        m: m.__dict__.pop("_compiled_call_impl") for m in model.modules() if m.__dict__.get("_compiled_call_impl") is not None
    }


def bf16_reference(model: nn.Module, compiling: Compiling | None = None) -> LowBitModel:
    """The FP32 model in bf16 (a copy), compiled like the GPU backends' models: their speed baseline."""
    return LowBitModel(copy.deepcopy(model).to(torch.bfloat16).eval(), "bf16_gpu", compiling)
