"""The case report: known values, the empty policy per row, compatibility with overlap_report, CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import pytest

from evaluation.overlap import overlap_report
from evaluation.report import MEAN_FIELDS, ROW_FIELDS, evaluate_case, to_csv

SPACING = (0.5, 1.0, 2.0)  # 1 mm^3 voxels


def _case() -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    ref = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(ref)
    ref[0:10, 0:10, 0:10] = 1  # 1000 voxels
    pred[0:10, 0:10, 2:10] = 1  # 800 voxels, all inside: precision 1, recall 0.8
    ref[12:16, 12:16, 12:16] = 2  # missed: empty in the prediction
    pred[16:20, 0:5, 0:5] = 3  # a false structure: empty in the reference
    return pred, ref, {0: "background", 1: "a", 2: "b", 3: "c", 4: "d"}


def _rows(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["label"]: r for r in report["structures"]}


def test_known_values() -> None:
    pred, ref, labels = _case()
    a = _rows(evaluate_case(pred, ref, labels, SPACING, tolerance_mm=4.0))[1]
    assert a["empty"] is None
    assert a["dice"] == pytest.approx(1600 / 1800) and a["iou"] == pytest.approx(0.8)
    assert a["precision"] == 1.0 and a["recall"] == pytest.approx(0.8)
    assert a["volume_pred_ml"] == pytest.approx(0.8) and a["volume_ref_ml"] == pytest.approx(1.0)
    assert a["volume_diff_ml"] == pytest.approx(-0.2) and a["volume_diff_pct"] == pytest.approx(-20.0)
    assert a["hd_mm"] == pytest.approx(4.0)  # two slices of 2 mm along the last axis
    assert a["nsd"] == 1.0 and a["nsd_tolerance_mm"] == 4.0


def test_empty_policy_per_row() -> None:
    pred, ref, labels = _case()
    report = evaluate_case(pred, ref, labels, SPACING)
    rows = _rows(report)
    missed, false, absent = rows[2], rows[3], rows[4]
    assert missed["empty"] == "prediction"
    assert (missed["dice"], missed["iou"], missed["precision"], missed["recall"]) == (0.0, 0.0, None, 0.0)
    assert missed["volume_diff_pct"] == -100.0
    assert false["empty"] == "reference"
    assert (false["dice"], false["iou"], false["precision"], false["recall"]) == (0.0, 0.0, 0.0, None)
    assert false["volume_diff_pct"] is None
    for row in (missed, false):
        assert (row["hd_mm"], row["hd95_mm"], row["assd_mm"], row["nsd"]) == (None, None, None, 0.0)
    assert absent["empty"] == "both"
    assert all(absent[k] is None for k in (*MEAN_FIELDS, "volume_diff_ml", "volume_diff_pct"))
    mean = report["mean"]
    assert mean["n_structures"] == 3 and mean["n_with_distances"] == 1
    assert mean["dice"] == pytest.approx((1600 / 1800) / 3)
    assert mean["precision"] == pytest.approx(0.5) and mean["recall"] == pytest.approx(0.4)
    assert mean["hd_mm"] == rows[1]["hd_mm"]


def test_superset_of_overlap_report() -> None:
    pred, ref, labels = _case()
    ours = evaluate_case(pred, ref, labels, SPACING)
    old: dict[str, Any] = overlap_report(pred, ref, labels, 1.0)
    for new_row, old_row in zip(ours["structures"], old["structures"], strict=True):
        for key, value in old_row.items():
            assert new_row[key] == pytest.approx(value) if value is not None else new_row[key] is None
    assert ours["mean"]["dice"] == pytest.approx(old["mean"]["dice"])
    assert ours["mean"]["n_structures"] == old["mean"]["n_structures"]
    json.dumps(ours, allow_nan=False)


def test_per_structure_tolerances() -> None:
    pred, ref, labels = _case()
    rows = _rows(evaluate_case(pred, ref, labels, SPACING, tolerance_mm=2.0, tolerances_mm={1: 3.9}))
    assert rows[1]["nsd_tolerance_mm"] == 3.9 and rows[1]["nsd"] < 1.0
    assert rows[2]["nsd_tolerance_mm"] == 2.0
    with pytest.raises(ValueError, match=r"not in labels: \[9\]"):
        evaluate_case(pred, ref, labels, SPACING, tolerances_mm={9: 1.0})


def test_csv_has_a_header_and_one_line_per_structure() -> None:
    pred, ref, labels = _case()
    report = evaluate_case(pred, ref, labels, SPACING)
    text = to_csv(report)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == ",".join(ROW_FIELDS)
    assert [r["label"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[3]["dice"] == "" and rows[3]["empty"] == "both"
    assert float(rows[0]["dice"]) == pytest.approx(report["structures"][0]["dice"])


def test_errors_name_the_bad_value() -> None:
    pred, ref, labels = _case()
    with pytest.raises(ValueError, match=r"prediction \(20, 20, 20\), reference \(20, 20\)"):
        evaluate_case(pred, ref[0], labels, SPACING)
    with pytest.raises(ValueError, match="tolerance must be > 0 mm, got -1"):
        evaluate_case(pred, ref, labels, SPACING, tolerance_mm=-1)
    with pytest.raises(ValueError, match=r"spacing_mm needs 3 values, one per axis, got \(1.0, 1.0\)"):
        evaluate_case(pred, ref, labels, (1.0, 1.0))
