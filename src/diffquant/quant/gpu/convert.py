"""Which layers of a model run a GPU low-bit kernel, their calibrated input ranges, and the converted bf16 model.

A Linear is converted when its shape suits the format's kernel; anything else stays in bfloat16 with
the reason recorded (results.json `float_layers`): convolutions (PyTorch has no fp8 / int8 / int4
convolution kernel on the GPU; they run in bf16 cuDNN), Linears whose widths the GEMM rejects (the
DiT's final Linear to patch² · channels outputs), and the layers `quant.skip` / `quant.keep_float` name.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import Tensor, nn

from diffquant.errors import DiffquantError, check_choice
from diffquant.quant.gpu.formats import INT4_GROUP_SIZES, Fp8Linear, Int4WeightOnlyLinear, Int8Linear

FORMATS = ("fp8", "int8", "int4wo")
EXECUTIONS = {"fp8": "fp8_gpu", "int8": "int8_gpu", "int4wo": "int4wo_gpu"}
WEIGHT_SCALINGS = ("tensorwise", "rowwise")
CONV_REASON = "convolution: no fp8 / int8 / int4 convolution kernel on the GPU in PyTorch (runs in bf16 cuDNN)"


@dataclass(frozen=True)
class LowBitSpec:
    """A GPU low-bit format and its options: fp8 weight scaling, int4 group size, fp8 fast accumulation."""

    format: str
    weight_scaling: str = "tensorwise"
    group_size: int = 128
    fast_accum: bool = True

    def __post_init__(self) -> None:
        check_choice("low-bit format", self.format, FORMATS)
        check_choice("backend.weight_scaling", self.weight_scaling, WEIGHT_SCALINGS)
        check_choice("backend.group_size", self.group_size, INT4_GROUP_SIZES)

    @property
    def execution(self) -> str:
        """results.json `execution`: fp8_gpu, int8_gpu or int4wo_gpu."""
        return EXECUTIONS[self.format]

    @property
    def static_inputs(self) -> bool:
        """Whether the format quantizes activations with calibrated scales (int4 is weight-only)."""
        return self.format != "int4wo"

    def misfit(self, name: str, layer: nn.Linear) -> str | None:
        """Why the kernel cannot run this Linear (it stays bf16), or None; a group size that does not divide it is an error."""
        n_in, n_out = layer.in_features, layer.out_features
        if self.format == "fp8" and (n_in % 16 or n_out % 16):
            return f"fp8 GEMM (torch._scaled_mm) needs in/out features divisible by 16; this layer is {n_in} -> {n_out}"
        if self.format == "int8" and (n_in % 8 or n_out % 8):
            return f"int8 GEMM (torch._int_mm) needs in/out features divisible by 8; this layer is {n_in} -> {n_out}"
        if self.format == "int4wo":
            if n_in % self.group_size:
                raise DiffquantError(
                    f"backend.group_size={self.group_size} does not divide the {n_in} input features of layer {name}; "
                    f"use a group size among {', '.join(map(str, INT4_GROUP_SIZES))} that divides it, or quant.skip=[{name}]"
                )
            if n_out % 8:
                return f"int4 GEMM (torch._weight_int4pack_mm) needs out features divisible by 8; this layer has {n_out}"
        return None

    def convert(self, layer: nn.Linear, input_amax: float) -> nn.Module:
        """The low-bit replacement of `layer`."""
        if self.format == "fp8":
            return Fp8Linear(layer, input_amax, rowwise=self.weight_scaling == "rowwise", fast_accum=self.fast_accum)
        if self.format == "int8":
            return Int8Linear(layer, input_amax)
        return Int4WeightOnlyLinear(layer, self.group_size)


@dataclass(frozen=True)
class LayerPlan:
    """The Linears to convert, in module order, and every other layer with a weight, kept bf16, with why."""

    converted: tuple[str, ...]
    kept: dict[str, str]


def plan_layers(model: nn.Module, spec: LowBitSpec, skip: Iterable[str] = (), kept_roles: Iterable[str] = ()) -> LayerPlan:
    """Sort the model's Linears and convolutions: converted by `spec`, or kept bf16 (skip patterns, roles, kernels)."""
    skip, roles = tuple(skip), set(kept_roles)
    converted: list[str] = []
    kept: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
            kept[name] = CONV_REASON
        elif isinstance(module, nn.Linear):
            why = (
                "quant.skip"
                if any(fnmatchcase(name, p) for p in skip)
                else "quant.keep_float (input / output role)"
                if name in roles
                else spec.misfit(name, module)
            )
            if why is None:
                converted.append(name)
            else:
                kept[name] = why
    return LayerPlan(tuple(converted), kept)


@torch.no_grad()
def input_amax(
    model: nn.Module, layers: Iterable[str], batches: Iterable[tuple[Tensor, ...]], device: torch.device
) -> dict[str, float]:
    """Largest |input| each named layer sees over the calibration batches (the static scale's range)."""
    amax = {name: 0.0 for name in layers}
    running: dict[str, Tensor] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            value = args[0].detach().abs().amax().float()
            running[name] = value if name not in running else torch.maximum(running[name], value)

        return record

    handles = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in amax]
    try:
        for batch in batches:
            model(*(part.to(device) for part in batch))
    finally:
        for handle in handles:
            handle.remove()
    return {name: float(running[name]) if name in running else 0.0 for name in amax}


def convert_model(model: nn.Module, spec: LowBitSpec, plan: LayerPlan, amax: dict[str, float]) -> nn.Module:
    """A bf16 copy of `model` with every planned Linear replaced by its low-bit layer (the original is untouched)."""
    converted = copy.deepcopy(model).to(torch.bfloat16).eval()
    for name in plan.converted:
        parent_name, _, child = name.rpartition(".")
        parent = converted.get_submodule(parent_name) if parent_name else converted
        original = model.get_submodule(name)  # FP32 weights: quantized from full precision, not from bf16
        setattr(parent, child, spec.convert(original, amax.get(name, 0.0)))
    return converted
