"""Run a converted eager int8 model as frozen TorchScript graphs: the same int8 kernels, no Python between them.

PyTorch's eager-mode quantization tutorials deploy a converted model the same way
(`torch.jit.trace` / `torch.jit.script`, then `torch.jit.freeze`). The graph drops the Python around the operator
calls (module calls, wrappers, range arithmetic), and freezing folds constants and merges repeated
work (the SiLUs of the time embedding, one per block, become one). The gain per forward is largest
at small batches, where Python overhead dominates (docs/results/2026-11-26-int8-profile.md).

`torch.jit.trace` records one execution: Python values derived from shapes become constants, so
each input shape gets its own graph, and Python control flow that depends on tensor values would
be frozen too (the models here have none). Per-call input scales (`quant.dynamic_input`) stay per
call: `fast_int8.quantize_dynamic` runs a TorchScript-compiled function under tracing. Each graph
is checked against the eager model on its first input and must agree bit for bit; a trace that
fails or disagrees is not used: the model runs eagerly and a warning says why.
`backend.torchscript=false` runs every int8 model eagerly.
"""

from __future__ import annotations

import logging
import time
import warnings

import torch
from torch import Tensor, nn

ShapeKey = tuple[tuple[int, ...], ...]


def trace_frozen(model: nn.Module, args: tuple[Tensor, ...]) -> tuple[torch.jit.ScriptModule | None, str]:
    """`torch.jit.freeze(torch.jit.trace(model, args))` checked against `model(*args)`; (None, why) if unusable."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape arithmetic recorded as constants: per shape
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")  # TorchScript's deprecation
        try:
            graph = torch.jit.freeze(torch.jit.trace(model.eval(), args, check_trace=False))
            out, ref = graph(*args), model(*args)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: run eagerly
            return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if not torch.equal(out, ref):
        return None, f"the traced graph differs from the eager model (max abs diff {(out - ref).abs().max():.3g})"
    return graph, ""


class ScriptedInt8(nn.Module):
    """An eager int8 model (`eager`, whose state_dict this is) run as one frozen TorchScript graph per input shape."""

    def __init__(self, eager: nn.Module) -> None:
        super().__init__()
        self.eager = eager
        self._graphs: dict[ShapeKey, torch.jit.ScriptModule | None] = {}  # None: traced unusably, run eagerly
        self.trace_seconds = 0.0  # tracing + freezing + the check, summed over shapes

    def graph_for(self, *args: Tensor) -> torch.jit.ScriptModule | None:
        """The frozen graph for these inputs' shapes (traced now if new); None where the model runs eagerly."""
        key = tuple(tuple(a.shape) for a in args)
        if key not in self._graphs:
            start = time.perf_counter()
            graph, why = trace_frozen(self.eager, args)
            self.trace_seconds += time.perf_counter() - start
            if graph is None:
                logging.getLogger("diffquant").warning(
                    "int8 model at input shapes %s runs eagerly (slower): its TorchScript trace is unusable: %s", list(key), why
                )
            self._graphs[key] = graph
        return self._graphs[key]

    def __getstate__(self) -> dict[str, object]:
        """Copied and pickled without the graphs (TorchScript modules do not pickle): a copy traces its own."""
        return {**self.__dict__, "_graphs": {}}

    def forward(self, *args: Tensor) -> Tensor:
        graph = self.graph_for(*args)
        return self.eager(*args) if graph is None else graph(*args)
