"""Collect every job of a folder of runs into one table: summary.csv, summary.md (and summary.png, plot.py).

A job folder is one holding `.hydra/overrides.yaml`, `results.json` or `status.json`. Its row has
the overrides, method, bits, backend and execution (from results.json, or from the composed
`.hydra/config.yaml` when the job failed before writing results), every metric, and the status:
`ok`, `failed` (with the error from status.json) or `incomplete` (neither results nor status:
still running, or killed). A [low, high] interval becomes two columns, `<key>_low` and `<key>_high`;
the `sig` column marks significance (`SIG_LEGEND`, docs/uncertainty.md).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from diffquant.cache.store import atomic_write_text
from diffquant.evaluation.uncertainty import interval_scalars, paired_difference, read_bootstrap
from diffquant.sweep.job import RESULTS_FILE, STATUS_FILE, defining_overrides, estimated_weight_bytes

DELTA = "eval/fid_cls_delta"
FIRST_METRICS = (
    "eval/fid_cls",
    "eval/fid_cls_fp32",
    DELTA,
    f"{DELTA}_ci95_low",
    f"{DELTA}_ci95_high",
    "eval/fid_cls_floor",
    "eval/psnr_vs_fp32",
    "eval/ssim_vs_fp32",
    "eval/mse_vs_fp32",
    "eval/eps_rel_err",
)
SIG_VS_FP32, SIG_VS_BEST = "*", "†"
SIG_LEGEND = (
    f"Column sig: `{SIG_VS_FP32}` the 95 % paired-bootstrap interval of {DELTA} (quantized − FP32, same noise) "
    f"excludes 0; `{SIG_VS_BEST}` eval/fid_cls differs from the best row's (lowest eval/fid_cls among ok quantized "
    "jobs{best}): the 95 % interval of the per-replicate differences delta_row − delta_best excludes 0, given "
    "only between jobs with the same noise, N, B and bootstrap seed; no mark: not significant or not comparable."
)
HEADER = (
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
)


@dataclass
class JobRecord:
    """One job of a sweep as the summary shows it."""

    job: str
    overrides: list[str]
    method: Optional[str] = None
    weight_bits: Optional[int] = None
    act_bits: Optional[int] = None
    backend: Optional[str] = None
    execution: Optional[str] = None
    status: str = "incomplete"
    error: Optional[str] = None
    objective: Optional[float] = None  # what the sweeper saw: fid_cls, +inf over the size budget, NaN if failed
    seconds: Optional[float] = None
    weight_bytes_est: Optional[float] = None
    metrics: dict[str, Optional[float]] = field(default_factory=dict)
    bootstrap: Optional[dict[str, Any]] = None  # bootstrap.json: per-replicate deltas, for row-vs-row comparisons
    sig: str = ""


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_job_dirs(root: Path) -> list[Path]:
    """Every job folder under `root` (itself included), in natural order (job 2 before job 10)."""
    found = {p.parent.parent for p in root.rglob("overrides.yaml") if p.parent.name == ".hydra"}
    found |= {p.parent for name in (RESULTS_FILE, STATUS_FILE) for p in root.rglob(name)}
    return sorted((d for d in found if ".submitit" not in d.parts), key=_natural_key)


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _from_config(job_dir: Path, record: JobRecord) -> None:
    """Method, bits and backend from the composed config (for jobs that wrote no results)."""
    path = job_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return
    cfg = OmegaConf.load(path)
    record.method = OmegaConf.select(cfg, "quant.method")
    fp32 = record.method == "fp32"
    record.weight_bits = 32 if fp32 else OmegaConf.select(cfg, "quant.weight_bits")
    record.act_bits = 32 if fp32 else OmegaConf.select(cfg, "quant.act_bits")
    record.backend = OmegaConf.select(cfg, "backend.engine")


def read_job(job_dir: Path, root: Path) -> JobRecord:
    """The summary record of one job folder."""
    status = _read_json(job_dir / STATUS_FILE) or {}
    results = _read_json(job_dir / RESULTS_FILE)
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else status.get("overrides", [])
    record = JobRecord(job=job_dir.relative_to(root).as_posix(), overrides=defining_overrides([str(o) for o in overrides]))
    record.seconds = status.get("seconds")
    if results is not None and status.get("status", "ok") == "ok":
        for key in ("method", "weight_bits", "act_bits", "backend", "execution"):
            setattr(record, key, results.get(key))
        record.metrics = interval_scalars(dict(results.get("metrics", {})))
        record.bootstrap = read_bootstrap(job_dir)
        record.weight_bytes_est = estimated_weight_bytes(results)
        record.objective = status.get("objective", record.metrics.get("eval/fid_cls"))
        record.status = "ok"
        return record
    _from_config(job_dir, record)
    if status.get("status") == "failed":
        record.status, record.error = "failed", status.get("error") or "unknown error"
    return record


def collect(root: str | Path) -> list[JobRecord]:
    """Every job under `root`, one record each, with its significance marks."""
    root = Path(root)
    records = [read_job(d, root) for d in find_job_dirs(root)]
    mark_significance(records)
    return records


def best_row(records: list[JobRecord]) -> Optional[JobRecord]:
    """The ok job with the lowest eval/fid_cls, FP32 jobs aside (they are the reference) unless there are only those."""
    ok = [r for r in records if r.status == "ok" and isinstance(r.metrics.get("eval/fid_cls"), (int, float))]
    candidates = [r for r in ok if r.method != "fp32"] or ok
    return min(candidates, key=lambda r: r.metrics["eval/fid_cls"]) if candidates else None


def _excludes_zero(low: Any, high: Any) -> bool:
    return isinstance(low, (int, float)) and isinstance(high, (int, float)) and (low > 0 or high < 0)


def mark_significance(records: list[JobRecord]) -> None:
    """`sig` of every record: `*` if its delta's interval excludes 0, `†` if it differs from the best row (paired)."""
    best = best_row(records)
    for r in records:
        marks = []
        if r.status == "ok" and _excludes_zero(r.metrics.get(f"{DELTA}_ci95_low"), r.metrics.get(f"{DELTA}_ci95_high")):
            marks.append(SIG_VS_FP32)
        if best is not None and r is not best and r.bootstrap is not None and best.bootstrap is not None:
            diff = paired_difference(r.bootstrap, best.bootstrap, DELTA)
            if diff is not None and _excludes_zero(diff[1], diff[2]):
                marks.append(SIG_VS_BEST)
        r.sig = "".join(marks)


def metric_keys(records: list[JobRecord]) -> list[str]:
    """Every metric any job reported: the headline ones first, the rest in order of appearance."""
    seen = dict.fromkeys(k for r in records for k in r.metrics)
    return [k for k in FIRST_METRICS if k in seen] + [k for k in seen if k not in FIRST_METRICS]


def as_rows(records: list[JobRecord]) -> list[dict[str, Any]]:
    """Flat rows (fixed columns, then one column per metric) for csv and markdown."""
    keys = metric_keys(records)
    at = keys.index(f"{DELTA}_ci95_high") + 1 if f"{DELTA}_ci95_high" in keys else 0
    columns = [*keys[:at], "sig", *keys[at:]]  # the mark next to the interval it reads
    rows = []
    for r in records:
        row = {h: getattr(r, h) for h in HEADER}
        row["overrides"] = " ".join(r.overrides)
        rows.append({**row, **{k: r.sig if k == "sig" else r.metrics.get(k) for k in columns}})
    return rows


def to_csv(records: list[JobRecord]) -> str:
    """summary.csv: one row per job; empty cells for missing values."""
    rows = as_rows(records)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else list(HEADER), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(records: list[JobRecord], title: str) -> str:
    """summary.md: counts, the best job, the overrides shared by all jobs, and the table (varying overrides only)."""
    common = [o for o in (records[0].overrides if records else []) if all(o in r.overrides for r in records)]
    rows = as_rows(records)
    for row, record in zip(rows, records):
        row["overrides"] = " ".join(o for o in record.overrides if o not in common)
    counts = {s: sum(r.status == s for r in records) for s in ("ok", "failed", "incomplete")}
    lines = [
        f"# Sweep summary: {title}",
        "",
        f"{len(records)} jobs: {counts['ok']} ok, {counts['failed']} failed, {counts['incomplete']} incomplete.",
        "",
    ]
    scored = [r for r in records if r.status == "ok" and isinstance(r.objective, (int, float)) and math.isfinite(r.objective)]
    quantized = [r for r in scored if r.method != "fp32"] or scored  # FP32 is the reference, not a candidate
    if quantized:
        best = min(quantized, key=lambda r: r.objective)
        lines += [
            f"Best objective (eval/fid_cls within the size budget): {best.objective:.4g} (job {best.job}: "
            f"{' '.join(best.overrides) or 'defaults'}).",
            "",
        ]
    best = best_row(records)
    lines += [SIG_LEGEND.format(best=f": job {best.job}" if best is not None else ""), ""]
    if common:
        lines += ["Overrides shared by every job: `" + " ".join(common) + "`", ""]
    if rows:
        header = list(rows[0])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_cell(row[h]) for h in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_summary(root: str | Path, out_dir: str | Path | None = None) -> tuple[list[JobRecord], list[Path]]:
    """Write summary.csv, summary.md and summary.png for the runs under `root`; return the records and paths."""
    from diffquant.sweep.plot import plot_summary

    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root
    records = collect(root)
    paths = [out / "summary.csv", out / "summary.md", out / "summary.png"]
    atomic_write_text(to_csv(records), paths[0])
    atomic_write_text(to_markdown(records, str(root)), paths[1])
    plot_summary(records, paths[2])
    return records, paths
