"""What results.json and the log say of per-timestep input scales: the groups and how far each layer's scale moves."""

from __future__ import annotations

import logging

from torch import nn

from diffquant.quant.timestep_scales import StepClock, Tables, clock_of, scale_tables


def scale_spread(tables: dict[str, Tables], clock: StepClock, layers: int = 4) -> dict[str, object]:
    """results.json's summary: the groups, their t ranges, and max / min input scale across groups per layer."""
    ratios = {name: float(s.max() / s.min().clamp(min=1e-12)) for name, ((s, _), _) in tables.items()}
    widest = sorted(ratios, key=ratios.__getitem__, reverse=True)[:layers]
    values = sorted(ratios.values())
    return {
        "groups": clock.groups,
        "group_t_ranges": [list(clock.bounds(g)) for g in range(clock.groups)],
        "scale_ratio_median": values[len(values) // 2] if values else 1.0,
        "widest_layers": {name: [round(float(v), 6) for v in tables[name][0][0]] for name in widest},
    }


def timestep_summary(qmodel: nn.Module, wrapped: list[str]) -> dict[str, object]:
    """`quant.act_timestep_groups`: the groups and the spread of each layer's input scale across them, logged ({} if off)."""
    clock = clock_of(qmodel)
    if clock is None:
        return {}
    summary = scale_spread(scale_tables(qmodel, wrapped), clock)
    logging.getLogger("diffquant").info(
        "Per-timestep input scales: %d groups; max/min scale across groups, median over layers %.2f; widest: %s",
        clock.groups,
        summary["scale_ratio_median"],
        ", ".join(summary["widest_layers"]),  # type: ignore[arg-type]
    )
    return summary
