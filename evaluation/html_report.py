"""A self-contained HTML report of a batch evaluation: per-structure box plots (inline SVG, no scripts or
external files), a per-structure table, and the worst cases."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evaluation.lesion_summary import lesion_sections

_PLOTS = (
    ("Dice", "Dice", (0.0, 1.0)),
    ("HD95", "HD95 (mm)", None),
    ("NSD", "Surface Dice (NSD)", (0.0, 1.0)),
)
_WORST = 10


def _values(summary: Mapping[str, Any], label: str, metric: str) -> list[float]:
    out = []
    for case in summary["metric_per_case"]:
        value = case["metrics"].get(label, {}).get(metric)
        if value is not None and not math.isnan(value):
            out.append(float(value))
    return out


def _box_stats(values: Sequence[float]) -> dict[str, Any]:
    """Quartiles, whiskers at the furthest point within 1.5 IQR, and the points beyond them."""
    arr = np.asarray(values, dtype=float)
    q1, median, q3 = (float(x) for x in np.percentile(arr, [25, 50, 75]))
    iqr = q3 - q1
    inside = arr[(arr >= q1 - 1.5 * iqr) & (arr <= q3 + 1.5 * iqr)]
    return {
        "q1": q1,
        "median": median,
        "q3": q3,
        "low": float(inside.min()),
        "high": float(inside.max()),
        "outliers": [float(x) for x in arr[(arr < q1 - 1.5 * iqr) | (arr > q3 + 1.5 * iqr)]],
    }


def box_plot_svg(
    title: str, series: Sequence[tuple[str, Sequence[float]]], fixed: tuple[float, float] | None
) -> str:
    """Horizontal box plots, one row per (name, values); rows without values are drawn empty."""
    row_h, left, width, top = 22, 190, 460, 28
    height = top + row_h * len(series) + 30
    everything = [v for _, vals in series for v in vals]
    lo, hi = fixed if fixed else ((min(everything), max(everything)) if everything else (0.0, 1.0))
    if hi <= lo:
        hi = lo + 1.0

    def x(value: float) -> float:
        return left + (value - lo) / (hi - lo) * width

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f'<text x="4" y="16" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (name, values) in enumerate(series):
        y = top + i * row_h + row_h / 2
        label_attrs = f'x="{left - 6}" y="{y + 4}" text-anchor="end" font-size="12"'
        parts.append(f"<text {label_attrs}>{html.escape(name)}</text>")
        if not values:
            continue
        s = _box_stats(values)
        parts.append(
            f'<line x1="{x(s["low"]):.1f}" x2="{x(s["high"]):.1f}" y1="{y}" y2="{y}" stroke="#555"/>'
        )
        box_w = max(x(s["q3"]) - x(s["q1"]), 1)
        parts.append(
            f'<rect x="{x(s["q1"]):.1f}" y="{y - 7}" width="{box_w:.1f}" height="14" '
            'fill="#9ecae1" stroke="#3182bd"/>'
        )
        xm = x(s["median"])
        parts.append(
            f'<line x1="{xm:.1f}" x2="{xm:.1f}" y1="{y - 7}" y2="{y + 7}" stroke="#08306b" stroke-width="2"/>'
        )
        for value in s["outliers"]:
            parts.append(f'<circle cx="{x(value):.1f}" cy="{y}" r="2.5" fill="none" stroke="#c00"/>')
    axis_y = top + row_h * len(series) + 4
    for tick in np.linspace(lo, hi, 5):
        parts.append(
            f'<text x="{x(tick):.1f}" y="{axis_y + 14}" text-anchor="middle" font-size="11">{tick:.3g}</text>'
        )
    parts.append(f'<line x1="{left}" x2="{left + width}" y1="{axis_y}" y2="{axis_y}" stroke="#999"/>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_report(summary: Mapping[str, Any], title: str) -> str:
    """The whole report as one HTML string."""
    labels: Mapping[str, str] = summary["labels"]
    plots = [
        box_plot_svg(
            caption, [(name, _values(summary, label, metric)) for label, name in labels.items()], fixed
        )
        for metric, caption, fixed in _PLOTS
    ]
    rows = []
    for label, name in labels.items():
        dice = _values(summary, label, "Dice")
        mean = summary["mean"][label]
        rows.append(
            f"<tr><td>{html.escape(label)}</td><td>{html.escape(name)}</td><td>{len(dice)}</td>"
            f"<td>{_fmt(mean['Dice'])}</td><td>{_fmt(float(np.median(dice)) if dice else None)}</td>"
            f"<td>{_fmt(float(np.std(dice)) if dice else None)}</td><td>{_fmt(mean['HD95'], 2)}</td>"
            f"<td>{_fmt(mean['NSD'])}</td><td>{_fmt(mean['volume_diff_ml'], 2)}</td></tr>"
        )
    case_means = []
    for case in summary["metric_per_case"]:
        if case["error"] is None:
            dices = [m["Dice"] for m in case["metrics"].values() if m.get("Dice") is not None]
            case_means.append((float(np.mean(dices)) if dices else math.nan, case["case_id"]))
    worst = sorted((c for c in case_means if not math.isnan(c[0])), key=lambda c: c[0])[:_WORST]
    worst_rows = "".join(f"<tr><td>{html.escape(cid)}</td><td>{d:.3f}</td></tr>" for d, cid in worst)
    failed = "".join(
        f"<li>{html.escape(c['case_id'])}: {html.escape(str(c['error']))}</li>"
        for c in summary["metric_per_case"]
        if c["error"] is not None
    )
    fg = summary["foreground_mean"]
    cm = summary.get("case_mean", {})
    lesions = lesion_sections(summary["lesionwise"]) if summary.get("lesionwise") else ""
    conventions = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
        for k, v in summary.get("conventions", {}).items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:nth-child(2), th:nth-child(2) {{ text-align: left; }}
.plots svg {{ display: block; margin: 1em 0; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{summary["n_cases"]} cases, {len(summary["failed_cases"])} failed.
Foreground mean: Dice {_fmt(fg["Dice"])} (= F1), IoU {_fmt(fg["IoU"])}, HD95 {_fmt(fg["HD95"], 2)} mm,
NSD {_fmt(fg["NSD"])}. Mean over cases: voxel accuracy {_fmt(cm.get("voxel_accuracy"), 4)},
mean class accuracy {_fmt(cm.get("mean_class_accuracy"))},
mean IoU (with background) {_fmt(cm.get("mean_iou"))}.</p>
<h2>Per structure</h2>
<table><tr><th>label</th><th>structure</th><th>cases</th><th>mean Dice</th><th>median Dice</th>
<th>sd Dice</th><th>mean HD95 (mm)</th><th>mean NSD</th><th>mean volume diff (ml)</th></tr>
{"".join(rows)}</table>
<div class="plots">{"".join(plots)}</div>
<h2>Worst cases (lowest mean Dice over structures)</h2>
<table><tr><th>case</th><th>mean Dice</th></tr>{worst_rows}</table>
{lesions}
{f"<h2>Failed cases</h2><ul>{failed}</ul>" if failed else ""}
<h2>Conventions</h2><ul>{conventions}</ul>
</body></html>
"""
