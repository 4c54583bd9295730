"""The sweep summary from a hand-made folder of runs: rows, columns, markdown, plot, callback and CLI."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from diffquant.sweep.callback import SummaryCallback
from diffquant.sweep.summary import collect, find_job_dirs, to_markdown, write_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_job(
    root: Path,
    name: str,
    overrides: list[str],
    results: Optional[dict[str, Any]] = None,
    status: Optional[dict[str, Any]] = None,
    config: Optional[dict[str, Any]] = None,
) -> Path:
    """A job folder as a sweep leaves it: .hydra/overrides.yaml (+ config.yaml), results.json, status.json."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if config is not None:
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))
    if status is not None:
        (job / "status.json").write_text(json.dumps(status))
    return job


def ptq_results(bits: int, backend: str, fid: float, psnr: float, ci: Optional[list[float]] = None) -> dict[str, Any]:
    """results.json of a PTQ job; the delta's interval (a [low, high] list, as runs write it) defaults to delta ± 0.2."""
    delta = fid - 3.0
    return {
        "method": "ptq",
        "weight_bits": bits,
        "act_bits": 8,
        "backend": backend,
        "execution": "int8" if bits == 8 else "fakequant",
        "reduce_range": False,
        "metrics": {
            "eval/fid_cls": fid,
            "eval/fid_cls_fp32": 3.0,
            "eval/fid_cls_delta": delta,
            "eval/fid_cls_delta_ci95": ci or [delta - 0.2, delta + 0.2],
            "eval/fid_cls_floor": 0.5,
            "eval/psnr_vs_fp32": psnr,
            "model/size_bytes_fp32": 3200,
            "perf/quantize_s": 1.5,
        },
    }


SHARED = np.random.default_rng(0).normal(0.0, 0.1, 200)  # the replicate-to-replicate noise every job of a sweep shares


def write_replicates(job: Path, delta: float, seed: int, eval_seeds: tuple[int, ...] = (1234,)) -> None:
    """bootstrap.json as a run writes it: delta + the shared noise + a little noise of the job's own."""
    own = np.random.default_rng(seed).normal(0.0, 0.01, 200)
    deltas = [0.0] * 200 if delta == 0.0 else list(delta + SHARED + own)
    (job / "bootstrap.json").write_text(
        json.dumps(
            {
                "num_samples": 512,
                "replicates": 200,
                "seed": 1234,
                "eval_seeds": list(eval_seeds),
                "indices_sha256": "i",
                "fp32_samples_sha256": "f",
                "interval": "95% percentile",
                "deltas": {"eval/fid_cls_delta": deltas},
            }
        )
    )


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """Jobs 0-3 ok (2 bit widths x 2 backends; 1 over the size budget), 4 an FP32 reference, 10 failed, 11 killed."""
    root = tmp_path / "sweep"
    # job 2's interval lies above its point (FID's resampling bias) and its replicates used other noise; job 3's touches 0
    for i, (bits, backend, fid, psnr, ci) in enumerate(
        [
            (4, "fbgemm", 9.5, 20.0, None),
            (8, "fbgemm", 3.1, 38.0, None),
            (4, "qnnpack", 9.9, 19.5, [7.0, 7.3]),
            (8, "qnnpack", 3.2, 37.0, [0.0, 0.4]),
        ]
    ):
        job = make_job(
            root,
            str(i),
            ["quant=ptq", f"quant.weight_bits={bits}", f"backend={backend}", "sweep.skip_done=true"],
            ptq_results(bits, backend, fid, psnr, ci),
            {"status": "ok", "error": None, "objective": math.inf if i == 1 else fid, "seconds": 10.0 + i},
        )
        write_replicates(job, fid - 3.0, i, (5,) if i == 2 else (1234,))
    fp32 = {**ptq_results(8, "fbgemm", 3.0, 0.0), "method": "fp32", "weight_bits": 32, "act_bits": 32, "execution": "fp32"}
    fp32["metrics"] = {
        **fp32["metrics"],
        "eval/psnr_vs_fp32": None,
        "eval/extra_metric": 0.5,
        "eval/fid_cls_delta_ci95": [0.0, 0.0],
    }
    write_replicates(make_job(root, "4", ["quant=fp32", "quant.weight_bits=8", "backend=fbgemm"], fp32, {"status": "ok"}), 0.0, 4)
    bad = {"quant": {"method": "ptq", "weight_bits": 9, "act_bits": 8}, "backend": {"engine": "qnnpack"}}
    make_job(
        root,
        "10",
        ["quant=ptq", "quant.weight_bits=9", "backend=qnnpack"],
        None,
        {"status": "failed", "error": "quant.weight_bits=9 is out of range; allowed: 2..8 | pipe"},
        bad,
    )
    make_job(
        root,
        "11",
        ["quant=ptq", "quant.weight_bits=6", "backend=fbgemm"],
        None,
        None,
        {"quant": {"method": "ptq", "weight_bits": 6, "act_bits": 8}, "backend": {"engine": "fbgemm"}},
    )
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_collect_reads_every_job_in_natural_order(sweep_dir: Path) -> None:
    assert [d.name for d in find_job_dirs(sweep_dir)] == ["0", "1", "2", "3", "4", "10", "11"]
    records = {r.job: r for r in collect(sweep_dir)}
    assert (records["1"].method, records["1"].weight_bits, records["1"].backend, records["1"].execution) == (
        "ptq",
        8,
        "fbgemm",
        "int8",
    )
    assert records["1"].metrics["eval/fid_cls"] == 3.1 and records["1"].seconds == 11.0
    assert records["1"].overrides == ["quant=ptq", "quant.weight_bits=8", "backend=fbgemm"]  # skip_done dropped
    assert records["1"].weight_bytes_est == 800.0  # 3200 FP32 bytes at 8 of 32 bits
    assert (records["0"].objective, records["1"].objective) == (9.5, math.inf)
    assert records["4"].objective == 3.0  # no objective in status.json (an older run): eval/fid_cls
    assert (records["10"].status, records["10"].weight_bits, records["10"].backend) == ("failed", 9, "qnnpack")
    assert records["10"].error.startswith("quant.weight_bits=9 is out of range")
    assert (records["11"].status, records["11"].weight_bits, records["11"].error) == ("incomplete", 6, None)


def test_write_summary_csv_md_png(sweep_dir: Path) -> None:
    records, paths = write_summary(sweep_dir)
    assert [p.name for p in paths] == ["summary.csv", "summary.md", "summary.png"]
    rows = list(csv.DictReader(paths[0].open()))
    assert len(rows) == len(records) == 7
    assert list(rows[0])[:12] == [
        "job",
        "overrides",
        "method",
        "weight_bits",
        "act_bits",
        "backend",
        "execution",
        "status",
        "error",
        "objective",
        "seconds",
        "weight_bytes_est",
    ]
    assert list(rows[0])[12:20] == [
        "eval/fid_cls",
        "eval/fid_cls_fp32",
        "eval/fid_cls_delta",
        "eval/fid_cls_delta_ci95_low",
        "eval/fid_cls_delta_ci95_high",
        "sig",
        "eval/fid_cls_floor",
        "eval/psnr_vs_fp32",
    ]
    assert {"perf/quantize_s", "model/size_bytes_fp32", "eval/extra_metric"} <= set(rows[0])
    by_job = {r["job"]: r for r in rows}
    assert by_job["2"]["overrides"] == "quant=ptq quant.weight_bits=4 backend=qnnpack"
    assert float(by_job["2"]["eval/fid_cls"]) == 9.9 and by_job["2"]["status"] == "ok"
    assert by_job["4"]["eval/psnr_vs_fp32"] == "" and by_job["4"]["eval/extra_metric"] == "0.5"
    assert by_job["10"]["status"] == "failed" and by_job["10"]["eval/fid_cls"] == ""
    assert by_job["10"]["error"] == "quant.weight_bits=9 is out of range; allowed: 2..8 | pipe"

    md = paths[1].read_text()
    assert "7 jobs: 5 ok, 1 failed, 1 incomplete." in md
    assert (
        "Best objective (eval/fid_cls within the size budget): 3.2 (job 3: quant=ptq quant.weight_bits=8 backend=qnnpack)" in md
    )
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 7  # header + one row per job
    assert table[0].startswith("| job | overrides | method | weight_bits |")
    assert "| 10 | quant=ptq quant.weight_bits=9 backend=qnnpack | ptq | 9 | 8 | qnnpack | – | failed |" in md
    assert "allowed: 2..8 \\| pipe" in md  # a | in an error does not break the table

    png = paths[2].read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


def test_markdown_lists_shared_overrides_once(sweep_dir: Path) -> None:
    records = [r for r in collect(sweep_dir) if r.job in ("0", "1")]
    md = to_markdown(records, "two jobs")
    assert "Overrides shared by every job: `quant=ptq backend=fbgemm`" in md
    assert "| 0 | quant.weight_bits=4 | ptq |" in md


def test_callback_writes_summary_into_the_sweep_dir(sweep_dir: Path) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
    SummaryCallback().on_multirun_end(config=config)
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4", "10", "11"]
    assert (sweep_dir / "summary.png").read_bytes().startswith(PNG_MAGIC)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diffquant.sweep.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_diffquant_summary_on_a_folder_of_runs(sweep_dir: Path, tmp_path: Path) -> None:
    # A folder holding a sweep and a single run (results.json only, no .hydra) next to it.
    single = tmp_path / "runs" / "single"
    single.mkdir(parents=True)
    (single / "results.json").write_text(json.dumps(ptq_results(6, "x86", 5.0, 30.0)))
    sweep_dir.rename(tmp_path / "runs" / "sweep")
    out = tmp_path / "report"
    proc = run_cli(str(tmp_path / "runs"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["job"] for r in rows] == ["single", "sweep/0", "sweep/1", "sweep/2", "sweep/3", "sweep/4", "sweep/10", "sweep/11"]
    assert (rows[0]["backend"], rows[0]["status"], rows[0]["overrides"]) == ("x86", "ok", "")
    assert "8 jobs: 6 ok, 1 failed, 1 incomplete." in proc.stdout
    assert f"wrote {out / 'summary.png'}" in proc.stdout


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "is not a folder"),
        (lambda p: p, "no runs under"),
    ],
    ids=["missing-dir", "no-runs"],
)
@pytest.mark.slow
def test_diffquant_summary_bad_input(tmp_path: Path, make: Any, message: str) -> None:
    proc = run_cli(str(make(tmp_path)))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "summary.csv").exists()


def test_plot_lines_are_labelled_by_method_backend_and_other_swept_overrides(sweep_dir: Path) -> None:
    from diffquant.sweep.plot import line_label, varying_keys

    records = [r for r in collect(sweep_dir) if r.status == "ok"]
    for r, observer in zip(records, ["minmax", "histogram", "minmax", "histogram", "minmax"]):
        r.overrides.append(f"quant.observer={observer}")
    varying = varying_keys(records)
    assert varying == ["quant.observer"]  # quant, bits and backend are in the label or on the x axis already
    assert line_label(records[1], varying) == "ptq fbgemm A8 quant.observer=histogram"


def test_marks_read_the_delta_interval_and_the_paired_difference_to_the_best_row(sweep_dir: Path) -> None:
    """Best row: job 1 (lowest fid_cls, 3.1). Job 3 (3.2) overlaps it unpaired (0.2 ± 0.2 vs 0.1 ± 0.2), but the
    shared noise cancels in delta_3 − delta_1 = 0.1 ± 0.03: significant. Job 2 used other noise: no pairing."""
    sig = {r.job: r.sig for r in collect(sweep_dir)}
    assert sig == {"0": "*†", "1": "", "2": "*", "3": "†", "4": "", "10": "", "11": ""}
    records, paths = write_summary(sweep_dir)
    rows = {r["job"]: r for r in csv.DictReader(paths[0].open())}
    assert (rows["0"]["sig"], rows["3"]["sig"], rows["1"]["sig"]) == ("*†", "†", "")
    assert (float(rows["3"]["eval/fid_cls_delta_ci95_low"]), float(rows["3"]["eval/fid_cls_delta_ci95_high"])) == (
        pytest.approx(0.0),
        pytest.approx(0.4),
    )
    md = paths[1].read_text()
    assert "Column sig: `*` the 95 % paired-bootstrap interval of eval/fid_cls_delta" in md
    assert "(lowest eval/fid_cls among ok quantized jobs: job 1)" in md
    assert "| 3 | quant=ptq quant.weight_bits=8 backend=qnnpack | ptq |" in md and "| 0.2 | 0 | 0.4 | † | 0.5 |" in md
    assert paths[2].read_bytes().startswith(PNG_MAGIC)  # job 2's point outside its interval plots without error


def test_rows_without_replicates_get_no_row_mark(sweep_dir: Path) -> None:
    (sweep_dir / "1" / "bootstrap.json").unlink()  # the best row of an older run: nothing to pair with
    assert {r.job: r.sig for r in collect(sweep_dir)} == {"0": "*", "1": "", "2": "*", "3": "", "4": "", "10": "", "11": ""}
