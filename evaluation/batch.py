"""Batch evaluation: metrics for many cases, summarised in nnU-Net's `summary.json` schema, a per-case
CSV and a self-contained HTML report.

summary.json (nnU-Net v2's keys, extended):
    metric_per_case: [{"case_id", "prediction_file", "reference_file", "metrics": {"<label>": {...}},
                       "error"}]  -- a case that could not be evaluated has `error` and empty metrics
    mean:            {"<label>": {metric: mean over cases}}
    foreground_mean: {metric: mean over labels of the per-label means}
    labels, conventions, n_cases, failed_cases
    case_mean:       {voxel_accuracy, mean_class_accuracy, mean_iou: mean over cases}; per case under "case"
    lesionwise:      with lesion labels: pooled lesion-wise results per lesion label
                     (evaluation/lesion_summary.py); per case under "lesionwise"
Per-label metric names follow nnU-Net where it has them (Dice, IoU, TP, FP, FN, n_pred, n_ref) and add
precision, recall, HD, HD95, ASSD, NSD and volumes. Means skip null values (nnU-Net's nanmean), so a
structure empty in both prediction and reference does not count for that case.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.lesion_report import lesionwise_report
from evaluation.lesion_summary import compact, pool
from evaluation.report import CONVENTIONS, evaluate_case
from segserve.imaging.errors import ImageError
from segserve.scans.readers import check_same_grid, read_labels

# our row field -> summary.json metric name
METRIC_NAMES: dict[str, str] = {
    "dice": "Dice",
    "iou": "IoU",
    "tp": "TP",
    "fp": "FP",
    "fn": "FN",
    "n_pred": "n_pred",
    "n_ref": "n_ref",
    "precision": "precision",
    "recall": "recall",
    "hd_mm": "HD",
    "hd95_mm": "HD95",
    "assd_mm": "ASSD",
    "nsd": "NSD",
    "volume_pred_ml": "volume_pred_ml",
    "volume_ref_ml": "volume_ref_ml",
    "volume_diff_ml": "volume_diff_ml",
}
CSV_FIELDS = ("case_id", "label", "name", "empty", *METRIC_NAMES.values(), "error")


@dataclass
class CaseResult:
    case_id: str
    prediction_file: str
    reference_file: str
    rows: list[dict[str, Any]]
    error: str | None = None
    case: dict[str, Any] | None = None  # voxel accuracy, mean class accuracy, mean IoU
    lesionwise: dict[str, Any] | None = None  # evaluation.lesion_summary.compact of the lesion-wise report


def map_labels(prediction: np.ndarray, label_map: Mapping[int, int]) -> np.ndarray:
    """Rename prediction values (model value -> dataset value); values not in the map become 0."""
    if not label_map:
        return prediction
    top = max(int(prediction.max(initial=0)), *label_map)
    lut = np.zeros(top + 1, dtype=np.uint16)
    for model_value, dataset_value in label_map.items():
        lut[model_value] = dataset_value
    return lut[prediction]


def evaluate_files(
    case_id: str,
    prediction: Path,
    reference: Path,
    labels: Mapping[int, str],
    *,
    label_map: Mapping[int, int] | None = None,
    tolerance_mm: float | None = None,
    lesion_labels: Sequence[int] = (),
) -> CaseResult:
    """One case from files. A grid mismatch or unreadable file becomes the case's error (named), never a
    resampled comparison. `lesion_labels` (dataset values) add lesion-wise results (BraTS 2023 rule)."""
    try:
        pred = read_labels([prediction])
        ref = read_labels([reference])
        check_same_grid(ref, pred)
    except ImageError as exc:
        return CaseResult(case_id, str(prediction), str(reference), [], error=str(exc))
    kwargs: dict[str, Any] = {} if tolerance_mm is None else {"tolerance_mm": tolerance_mm}
    prediction_array = map_labels(pred.array, label_map or {})
    report = evaluate_case(prediction_array, ref.array, labels, ref.spacing_mm, **kwargs)
    lesionwise = None
    if lesion_labels:
        lesionwise = compact(
            lesionwise_report(prediction_array, ref.array, labels, lesion_labels, ref.affine, ref.spacing_mm)
        )
    return CaseResult(
        case_id, str(prediction), str(reference), report["structures"], None, report["case"], lesionwise
    )


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(present)) if present else None


def summarize(results: Sequence[CaseResult], labels: Mapping[int, str]) -> dict[str, Any]:
    """nnU-Net-style summary of case results."""
    structures = sorted(v for v in labels if v > 0)
    per_case: list[dict[str, Any]] = []
    for r in results:
        metrics = {
            str(row["label"]): {name: row.get(field) for field, name in METRIC_NAMES.items()}
            for row in r.rows
        }
        per_case.append(
            {
                "case_id": r.case_id,
                "prediction_file": r.prediction_file,
                "reference_file": r.reference_file,
                "metrics": metrics,
                "case": r.case,
                **({"lesionwise": r.lesionwise} if r.lesionwise is not None else {}),
                "error": r.error,
            }
        )
    ok = [c for c in per_case if c["error"] is None]
    mean: dict[str, dict[str, float | None]] = {}
    for value in structures:
        key = str(value)
        mean[key] = {
            name: _mean([c["metrics"][key][name] for c in ok if key in c["metrics"]])
            for name in METRIC_NAMES.values()
        }
    foreground = {name: _mean([mean[str(v)][name] for v in structures]) for name in METRIC_NAMES.values()}
    case_mean = {
        k: _mean([(c["case"] or {}).get(k) for c in ok])
        for k in ("voxel_accuracy", "mean_class_accuracy", "mean_iou")
    }
    lesion_cases = [(c["case_id"], c["lesionwise"]) for c in ok if "lesionwise" in c]
    return {
        "metric_per_case": per_case,
        "mean": mean,
        "foreground_mean": foreground,
        "case_mean": case_mean,
        **({"lesionwise": pool(lesion_cases)} if lesion_cases else {}),
        "labels": {str(v): labels[v] for v in structures},
        "n_cases": len(per_case),
        "failed_cases": [c["case_id"] for c in per_case if c["error"] is not None],
        "conventions": dict(CONVENTIONS),
    }


def cases_csv(summary: Mapping[str, Any]) -> str:
    """One line per case and structure (and one line per failed case)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    names = summary["labels"]
    for case in summary["metric_per_case"]:
        if case["error"] is not None:
            writer.writerow({"case_id": case["case_id"], "error": case["error"]})
            continue
        for label, metrics in case["metrics"].items():
            row = {"case_id": case["case_id"], "label": label, "name": names.get(label, "")}
            row.update({k: "" if v is None else v for k, v in metrics.items()})
            writer.writerow(row)
    return buffer.getvalue()


def run_batch(
    jobs: Sequence[tuple[str, Path, Path]],
    labels: Mapping[int, str],
    *,
    label_map: Mapping[int, int] | None = None,
    tolerance_mm: float | None = None,
    on_case: Callable[[int, int, CaseResult], None] | None = None,
    lesion_labels: Sequence[int] = (),
) -> list[CaseResult]:
    """Evaluate (case id, prediction, reference) triples in order, reporting each finished case."""
    results: list[CaseResult] = []
    for index, (case_id, prediction, reference) in enumerate(jobs):
        result = evaluate_files(
            case_id,
            prediction,
            reference,
            labels,
            label_map=label_map,
            tolerance_mm=tolerance_mm,
            lesion_labels=lesion_labels,
        )
        results.append(result)
        if on_case is not None:
            on_case(index + 1, len(jobs), result)
    return results


def write_outputs(out_dir: Path, summary: Mapping[str, Any], title: str) -> dict[str, Path]:
    """summary.json, cases.csv and report.html, each written atomically. Returns name -> path."""
    import json
    import os
    import tempfile

    from evaluation.html_report import render_report

    out_dir.mkdir(parents=True, exist_ok=True)
    contents = {
        "summary.json": json.dumps(summary, indent=2, allow_nan=False),
        "cases.csv": cases_csv(summary),
        "report.html": render_report(summary, title),
    }
    paths: dict[str, Path] = {}
    for name, text in contents.items():
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, out_dir / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        paths[name] = out_dir / name
    return paths
