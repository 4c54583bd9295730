"""summary.png: the headline metrics against the weight bit width, one line per method / backend / act bits.

The middle panel is eval/fid_cls_delta (quantized − FP32 from the same noise) with its 95 % paired
bootstrap interval as error bars; lines are nudged apart on the x axis so their bars stay readable.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffquant.reporting.results import save_figure  # noqa: E402
from diffquant.sweep.summary import JobRecord  # noqa: E402

DELTA = "eval/fid_cls_delta"
PANELS = (
    ("eval/fid_cls", "fid_cls (lower is better)", "eval/fid_cls_fp32"),
    (DELTA, "fid_cls − FP32, same noise (95 % paired interval)", None),
    ("eval/psnr_vs_fp32", "PSNR vs FP32 samples, dB (higher is better)", None),
    ("eval/ssim_vs_fp32", "SSIM vs FP32 samples from the same noise (higher is better)", None),
)
KEY_PARTS = ("quant", "backend", "quant.weight_bits", "quant.act_bits")


def split_override(override: str) -> tuple[str, str]:
    """`+quant.observer=minmax` -> ("quant.observer", "minmax")."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def varying_keys(records: list[JobRecord]) -> list[str]:
    """Override keys whose value differs between jobs, other than method, backend and bits (already shown)."""
    parsed = [dict(split_override(o) for o in r.overrides) for r in records]
    keys = dict.fromkeys(k for p in parsed for k in p)
    return [k for k in keys if k not in KEY_PARTS and len({p.get(k) for p in parsed}) > 1]


def line_label(record: JobRecord, varying: list[str]) -> str:
    """`method backend A<act bits>`, plus the job's other swept overrides (e.g. the observer)."""
    extra = [o for o in record.overrides if split_override(o)[0] in varying]
    return " ".join([f"{record.method} {record.backend} A{record.act_bits}", *extra])


def plot_summary(records: list[JobRecord], path: Path) -> None:
    """Two panels (fid_cls, PSNR vs FP32) against weight_bits; failed jobs and FP32 jobs are not lines.

    FP32 is a dashed reference line (the median FP32 fid_cls reported by the jobs).
    """
    ok = [r for r in records if r.status == "ok" and r.weight_bits is not None]
    varying = varying_keys(ok)
    lines: dict[str, list[JobRecord]] = defaultdict(list)
    for r in ok:
        if r.method != "fp32":
            lines[line_label(r, varying)].append(r)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(6 * len(PANELS), 4.2), squeeze=False)
    for ax, (metric, title, reference) in zip(axes[0], PANELS):
        if metric == DELTA:
            plot_deltas(ax, lines)
        for label, members in sorted(lines.items()) if metric != DELTA else ():
            points = sorted((r.weight_bits, r.metrics[metric]) for r in members if r.metrics.get(metric) is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        refs = [r.metrics[reference] for r in ok if reference and r.metrics.get(reference) is not None]
        refs += [r.metrics[metric] for r in ok if r.method == "fp32" and r.metrics.get(metric) is not None]
        if refs:
            ax.axhline(statistics.median(refs), color="black", linestyle="--", linewidth=1, label="FP32")
        ax.set_xticks(sorted({r.weight_bits for members in lines.values() for r in members}))
        ax.set_xlabel("weight bits")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no completed jobs with this metric", ha="center", va="center", transform=ax.transAxes)
    failed = sum(r.status != "ok" for r in records)
    fig.suptitle(
        f"{len(ok)} completed jobs" + (f", {failed} failed or incomplete (see summary.md)" if failed else ""), fontsize=10
    )
    save_figure(fig, path)


def plot_deltas(ax: plt.Axes, lines: dict[str, list[JobRecord]]) -> None:
    """Each line's fid_cls delta against weight_bits with its interval as error bars, and the zero line."""
    labels = sorted(lines)
    for i, label in enumerate(labels):
        nudge = 0.08 * (i - (len(labels) - 1) / 2)
        points = sorted(
            (r.weight_bits, r.metrics[DELTA], r.metrics.get(f"{DELTA}_ci95_low"), r.metrics.get(f"{DELTA}_ci95_high"))
            for r in lines[label]
            if r.metrics.get(DELTA) is not None
        )
        if not points:
            continue
        xs, ys = [p[0] + nudge for p in points], [p[1] for p in points]
        # a biased FID bootstrap can leave the point outside its interval: bars then end at the point
        below = [max(y - lo, 0.0) if lo is not None else 0.0 for _, y, lo, _ in points]
        above = [max(hi - y, 0.0) if hi is not None else 0.0 for _, y, _, hi in points]
        ax.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3, label=label)
    if any(r.metrics.get(DELTA) is not None for members in lines.values() for r in members):
        ax.axhline(0.0, color="black", linestyle="--", linewidth=1, label="FP32 (delta 0)")
