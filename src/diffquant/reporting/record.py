"""The typed record of one run that the stages before evaluation hand to it.

`RunRecord` holds what results.json says about the run itself (method, bits, backend, int8
numerics), the model's size and coverage metrics, and the run-level extras (cache key,
quantization settings, provenance). The evaluation stage adds what it measures; results.json
is `{**record.header(), "metrics": {..., **record.model_metrics(), ...}, ..., **record.extra(), ...}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunRecord:
    """What a run was (its header), how big and how quantized its model is, and where it came from.

    Every field but the optional blocks (`compile_s`, `lowrank`, `timestep_scales`, `mixed_precision`) is required:
    a field left out is a TypeError, not a missing key in results.json. Those are written only by runs that have them
    (compiled executions, low-rank branches, per-timestep scales, a mixed-precision budget).
    """

    # header: the top of results.json
    method: str
    weight_bits: int  # 32 for fp32
    act_bits: int
    backend: str  # the quantization engine
    execution: str  # fp32 | int8 | fakequant | ...
    int8_scheme: str
    int8_exact: bool
    reduce_range: bool
    reduce_weight_range: bool
    weight_symmetric: bool
    # model metrics: results.json "metrics" and TensorBoard scalars
    size_bytes: int
    size_bytes_fp32: int
    quantize_s: float
    quantized_mac_fraction: float  # of all multiply-accumulates of a forward
    int8_mac_fraction: float
    # extra: run-level blocks after "metrics"
    fp32_cache_key: str
    fp32_cached: bool
    wrapped_layers: list[str]
    float_layers: dict[str, str]  # quantizable layers kept float -> why
    fused_groups: list[list[str]]
    quant: dict[str, Any]  # the `quant` group as a dict
    provenance: dict[str, Any]  # source, machine, config hash, FP32 checkpoint digest
    compile_s: float | None = None  # compiled executions only: compiling is not part of quantizing or sampling
    lowrank: dict[str, float] | None = None  # SVDQuant branches only: `model/lowrank_*` (`lowrank.BranchCost.metrics`)
    timestep_scales: dict[str, Any] | None = None  # quant.act_timestep_groups > 1: groups and the spread of input scales
    mixed_precision: dict[str, Any] | None = None  # a size budget's chosen per-layer widths (`MixedPlan.as_dict`)
    packed_bytes: int | None = None  # the weights packed at their widths and formats (`quant.size.packed_bytes`)

    def header(self) -> dict[str, Any]:
        """The top-level keys results.json opens with."""
        return {
            "method": self.method,
            "weight_bits": self.weight_bits,
            "act_bits": self.act_bits,
            "backend": self.backend,
            "execution": self.execution,
            "int8_scheme": self.int8_scheme,
            "int8_exact": self.int8_exact,
            "reduce_range": self.reduce_range,
            "reduce_weight_range": self.reduce_weight_range,
            "weight_symmetric": self.weight_symmetric,
        }

    def model_metrics(self) -> dict[str, float]:
        """The model's size, quantizing time and MAC coverage under their metric names."""
        metrics: dict[str, float] = {
            "model/size_bytes": self.size_bytes,
            "model/size_bytes_fp32": self.size_bytes_fp32,
            "perf/quantize_s": self.quantize_s,
            "model/quantized_mac_fraction": self.quantized_mac_fraction,
            "model/int8_mac_fraction": self.int8_mac_fraction,
        }
        if self.packed_bytes is not None:
            metrics["model/packed_bytes"] = self.packed_bytes
        if self.compile_s is not None:
            metrics["perf/compile_s"] = self.compile_s
        if self.lowrank is not None:
            metrics.update(self.lowrank)
        return metrics

    def extra(self) -> dict[str, Any]:
        """The run-level blocks results.json holds after "metrics"."""
        return {
            "fp32_cache_key": self.fp32_cache_key,
            "fp32_cached": self.fp32_cached,
            "wrapped_layers": self.wrapped_layers,
            "float_layers": self.float_layers,
            "fused_groups": self.fused_groups,
            "quant": self.quant,
            "provenance": self.provenance,
            **({"timestep_scales": self.timestep_scales} if self.timestep_scales else {}),
            **({"mixed_precision": self.mixed_precision} if self.mixed_precision else {}),
        }

    def label(self) -> str:
        """`ptq W8A8 fbgemm (int8)`: how figures name the quantized model."""
        return f"{self.method} W{self.weight_bits}A{self.act_bits} {self.backend} ({self.execution})"
