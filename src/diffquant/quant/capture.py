"""Record what named submodules receive and return while a model runs over calibration pairs."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from diffquant.quant.calibration import CalibrationData


@torch.no_grad()
def run_hooked(model: nn.Module, data: CalibrationData, batch_size: int, handles: list[RemovableHandle]) -> None:
    """Run `model` in eval mode over `data` in batches, then remove the hooks `handles` (also on error)."""
    try:
        model.eval()
        for batch in data.batches(batch_size):
            model(*batch)
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def capture(
    model: nn.Module, names: Iterable[str], data: CalibrationData, batch_size: int, inputs: bool = True, outputs: bool = True
) -> dict[str, dict[str, list[Tensor]]]:
    """Run `model` over `data`; per name, the positional inputs (`args`: one tensor list per position) and outputs."""
    records: dict[str, dict[str, list[Tensor]]] = {}
    handles = []
    for name in names:
        record: dict[str, list] = {"args": [], "out": []}
        records[name] = record
        module = model.get_submodule(name)
        if inputs:
            handles.append(
                module.register_forward_pre_hook(lambda _m, args, rec=record: rec["args"].append(tuple(a.detach() for a in args)))
            )
        if outputs:
            handles.append(module.register_forward_hook(lambda _m, _a, out, rec=record: rec["out"].append(out.detach())))
    run_hooked(model, data, batch_size, handles)
    return {
        name: {
            "args": [torch.cat(list(col)) for col in zip(*rec["args"])] if rec["args"] else [],
            "out": [torch.cat(rec["out"])] if rec["out"] else [],
        }
        for name, rec in records.items()
    }
