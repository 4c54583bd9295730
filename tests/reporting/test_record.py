"""RunRecord: the typed run record lays out results.json exactly as the readers of that file expect."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from diffquant.reporting.record import RunRecord
from diffquant.reporting.results import write_results

FIELDS: dict[str, Any] = {
    "method": "ptq",
    "weight_bits": 8,
    "act_bits": 8,
    "backend": "fbgemm",
    "execution": "int8",
    "int8_scheme": "w8a8",
    "int8_exact": True,
    "reduce_range": False,
    "reduce_weight_range": False,
    "weight_symmetric": True,
    "size_bytes": 1000,
    "size_bytes_fp32": 4000,
    "quantize_s": 1.5,
    "quantized_mac_fraction": 0.98,
    "int8_mac_fraction": 0.98,
    "fp32_cache_key": "abc123",
    "fp32_cached": True,
    "wrapped_layers": ["conv", "fc"],
    "float_layers": {"conv_in": "quant.keep_float (input / output role)"},
    "fused_groups": [["conv", "relu"]],
    "quant": {"method": "ptq", "weight_bits": 8},
    "provenance": {"commit": "deadbeef", "config_hash": "0123"},
}

EXPECTED = {
    "method": "ptq",
    "weight_bits": 8,
    "act_bits": 8,
    "backend": "fbgemm",
    "execution": "int8",
    "int8_scheme": "w8a8",
    "int8_exact": True,
    "reduce_range": False,
    "reduce_weight_range": False,
    "weight_symmetric": True,
    "metrics": {
        "eval/fid_cls": 3.0,
        "model/size_bytes": 1000,
        "model/size_bytes_fp32": 4000,
        "perf/quantize_s": 1.5,
        "model/quantized_mac_fraction": 0.98,
        "model/int8_mac_fraction": 0.98,
    },
    "fp32_cache_key": "abc123",
    "fp32_cached": True,
    "wrapped_layers": ["conv", "fc"],
    "float_layers": {"conv_in": "quant.keep_float (input / output role)"},
    "fused_groups": [["conv", "relu"]],
    "quant": {"method": "ptq", "weight_bits": 8},
    "provenance": {"commit": "deadbeef", "config_hash": "0123"},
}


def written(record: RunRecord, path: Path) -> dict[str, Any]:
    """results.json as the evaluation stage writes it (one measured metric), read back without its versions."""
    results = write_results(path, record.header(), {"eval/fid_cls": 3.0, **record.model_metrics()}, record.extra())
    on_disk = json.loads(path.read_text())
    assert on_disk == results
    assert set(on_disk.pop("versions")) >= {"torch", "python"}
    return on_disk


def test_results_json_has_the_layout_its_readers_expect(tmp_path: Path) -> None:
    record = RunRecord(**FIELDS)
    on_disk = written(record, tmp_path / "results.json")
    assert on_disk == EXPECTED
    assert list(on_disk) == list(EXPECTED) and list(on_disk["metrics"]) == list(EXPECTED["metrics"])  # key order too
    assert record.label() == "ptq W8A8 fbgemm (int8)"


def test_compile_time_is_a_metric_only_when_the_run_compiled(tmp_path: Path) -> None:
    assert "perf/compile_s" not in RunRecord(**FIELDS).model_metrics()
    compiled = written(RunRecord(**FIELDS, compile_s=2.5), tmp_path / "results.json")
    assert compiled["metrics"] == {**EXPECTED["metrics"], "perf/compile_s": 2.5}


def test_low_rank_costs_are_metrics_only_when_the_model_has_branches(tmp_path: Path) -> None:
    assert not any(k.startswith("model/lowrank") for k in RunRecord(**FIELDS).model_metrics())
    cost = {"model/lowrank_params": 640, "model/lowrank_bytes": 1280, "model/lowrank_mac_fraction": 0.05}
    branched = written(RunRecord(**FIELDS, lowrank=cost), tmp_path / "results.json")
    assert branched["metrics"] == {**EXPECTED["metrics"], **cost}


def test_the_mixed_precision_plan_is_a_block_only_when_a_budget_chose_it(tmp_path: Path) -> None:
    assert "mixed_precision" not in RunRecord(**FIELDS).extra()
    plan = {"budget_bytes": 900, "achieved_bytes": 880, "avg_weight_bits": 5.0, "layer_bits": {"conv": 4, "fc": 8}}
    chosen = written(RunRecord(**FIELDS, mixed_precision=plan), tmp_path / "results.json")
    assert chosen == {**EXPECTED, "mixed_precision": plan}
    assert list(chosen)[-1] == "mixed_precision"


@pytest.mark.parametrize("missing", ["method", "int8_exact", "size_bytes", "provenance"])
def test_a_missing_field_is_a_type_error(missing: str) -> None:
    with pytest.raises(TypeError, match=missing):
        RunRecord(**{k: v for k, v in FIELDS.items() if k != missing})


def test_the_record_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunRecord(**FIELDS).method = "qat"  # type: ignore[misc]
