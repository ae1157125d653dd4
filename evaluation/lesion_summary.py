"""Lesion-wise results over a dataset: pooled detection counts and the HTML sections of the batch report.

Pooled over cases (per lesion label name): TP, FP, FN summed, then sensitivity, precision (TP / (TP + FP))
and F1 from the sums; lesion-wise Dice, HD95 and PQ as the mean of the cases' values; the size-bin table
summed bin by bin; every missed lesion listed with its case, volume and position.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CASE_FIELDS = (
    "rule",
    "dilation_iterations",
    "tp",
    "fp",
    "fn",
    "n_ref",
    "n_pred",
    "sensitivity",
    "precision",
    "f1",
    "lesionwise_dice",
    "lesionwise_hd95_mm",
    "sq",
    "rq",
    "pq",
    "by_size",
    "missed",
    "bipartite",
)


def compact(lesionwise: Mapping[str, Any]) -> dict[str, Any]:
    """A case's lesion-wise report without the per-lesion list (kept: counts, scores, bins, missed)."""
    return {name: {k: r[k] for k in CASE_FIELDS if k in r} for name, r in lesionwise.items()}


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def pool(per_case: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Pooled results per lesion label name from (case id, compact lesion-wise report) pairs."""
    names = sorted({name for _, report in per_case for name in report})
    out: dict[str, Any] = {}
    for name in names:
        rows = [(case_id, report[name]) for case_id, report in per_case if name in report]
        tp, fp, fn = (sum(int(r[k]) for _, r in rows) for k in ("tp", "fp", "fn"))
        bins: list[dict[str, Any]] = []
        for i, first in enumerate(rows[0][1]["by_size"]):
            counts = {k: sum(int(r["by_size"][i][k]) for _, r in rows) for k in ("tp", "fn", "fp")}
            bins.append(
                {
                    "min_ml": first["min_ml"],
                    "max_ml": first["max_ml"],
                    **counts,
                    "sensitivity": _ratio(counts["tp"], counts["tp"] + counts["fn"]),
                    "f1": _ratio(2 * counts["tp"], 2 * counts["tp"] + counts["fp"] + counts["fn"]),
                }
            )
        out[name] = {
            "n_cases": len(rows),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "sensitivity": _ratio(tp, tp + fn),
            "precision": _ratio(tp, tp + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "mean_lesionwise_dice": _mean([r["lesionwise_dice"] for _, r in rows]),
            "mean_lesionwise_hd95_mm": _mean([r["lesionwise_hd95_mm"] for _, r in rows]),
            "mean_pq": _mean([r["pq"] for _, r in rows]),
            "by_size": bins,
            "missed": [{"case_id": case_id, **m} for case_id, r in rows for m in r.get("missed", [])],
        }
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _bin_name(row: Mapping[str, Any]) -> str:
    return (
        f"≥ {row['min_ml']:g} ml" if row["max_ml"] is None else f"{row['min_ml']:g} to {row['max_ml']:g} ml"
    )


def lesion_sections(pooled: Mapping[str, Any]) -> str:
    """HTML: per lesion label, the detection table by size bin and the missed lesions."""
    parts: list[str] = []
    for name, r in pooled.items():
        bins = "".join(
            f"<tr><td>{html.escape(_bin_name(b))}</td><td>{b['tp']}</td><td>{b['fn']}</td><td>{b['fp']}</td>"
            f"<td>{_fmt(b['sensitivity'])}</td><td>{_fmt(b['f1'])}</td></tr>"
            for b in r["by_size"]
        )
        missed = "".join(
            f"<tr><td>{html.escape(str(m['case_id']))}</td><td>{m['ref_id']}</td><td>{m['volume_ml']:.3f}</td>"
            f"<td>{html.escape(', '.join(f'{x:.1f}' for x in m['centroid_lps_mm']))}</td>"
            f"<td>{html.escape(', '.join(f'{x:.0f}' for x in m['centroid_voxel']))}</td></tr>"
            for m in r["missed"]
        )
        parts.append(
            f"<h2>Lesions: {html.escape(name)}</h2>"
            f"<p>{r['n_cases']} cases; TP {r['tp']}, FP {r['fp']}, FN {r['fn']}; sensitivity "
            f"{_fmt(r['sensitivity'])}, precision {_fmt(r['precision'])}, F1 {_fmt(r['f1'])}; "
            f"mean lesion-wise Dice {_fmt(r['mean_lesionwise_dice'])}, "
            f"HD95 {_fmt(r['mean_lesionwise_hd95_mm'], 2)} mm, "
            f"PQ {_fmt(r['mean_pq'])}.</p>"
            '<table class="detection"><tr><th>size (reference; FP: prediction)</th><th>TP</th><th>FN</th>'
            f"<th>FP</th><th>sensitivity</th><th>F1</th></tr>{bins}</table>"
            f"<h3>Missed lesions ({len(r['missed'])})</h3>"
            '<table class="missed"><tr><th>case</th><th>lesion</th><th>volume (ml)</th>'
            f"<th>centroid LPS (mm)</th><th>centroid voxel</th></tr>{missed}</table>"
        )
    return "".join(parts)
