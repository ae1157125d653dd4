"""Batch evaluation with lesion labels: per-case and pooled lesion-wise results, the case vocabulary, and the
HTML report's detection table and missed-lesion list, through `segserve evaluate --lesion-labels`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.lesionwise import lesionwise_metrics
from shell.cli import main
from tests.evaluation.test_lesionwise_reference import perturb_lesions
from tests.support.paths import DATA

nib = pytest.importorskip("nibabel")


def test_folders_with_lesion_labels_pool_lesionwise_results(tmp_path: Path) -> None:
    path = DATA / "ct/liver-tumor/lits117_label.nii.gz"
    if not path.is_file():
        pytest.skip(f"real data not found: {path}")
    labels = np.asarray(nib.load(path).dataobj).astype(np.uint8)[:, :, 40:100]  # the tumour slab
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    preds, refs = tmp_path / "preds", tmp_path / "refs"
    preds.mkdir()
    refs.mkdir()
    expected, bipartite = [], []
    for seed in (0, 1):
        tumour = perturb_lesions(labels == 2, seed)
        prediction = np.where(tumour, 2, np.where(labels == 1, 1, 0)).astype(np.uint8)
        nib.save(nib.Nifti1Image(labels, affine), refs / f"case{seed}.nii.gz")
        nib.save(nib.Nifti1Image(prediction, affine), preds / f"case{seed}.nii.gz")
        expected.append(lesionwise_metrics(prediction == 2, labels == 2, (0.8, 0.8, 2.0)))
        bipartite.append(lesionwise_metrics(prediction == 2, labels == 2, (0.8, 0.8, 2.0), rule="bipartite"))
    (tmp_path / "labels.json").write_text(json.dumps({"0": "background", "1": "liver", "2": "tumour"}))
    out = tmp_path / "out"
    code = main(
        [
            "evaluate",
            "--predictions",
            str(preds),
            "--references",
            str(refs),
            "--labels",
            str(tmp_path / "labels.json"),
            "--lesion-labels",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    for case, want, want_bip in zip(summary["metric_per_case"], expected, bipartite, strict=True):
        got = case["lesionwise"]["tumour"]
        assert (got["bipartite"]["tp"], got["bipartite"]["pq"]) == (want_bip.tp, want_bip.pq)
        assert (got["tp"], got["fp"], got["fn"]) == (want.tp, want.fp, want.fn)
        assert got["lesionwise_dice"] == pytest.approx(want.lesionwise_dice, abs=1e-9)
        assert len(got["missed"]) == want.fn
        assert 0.0 < case["case"]["voxel_accuracy"] <= 1.0
    pooled = summary["lesionwise"]["tumour"]
    tp, fp, fn = (sum(getattr(w, k) for w in expected) for k in ("tp", "fp", "fn"))
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (tp, fp, fn)
    assert pooled["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert sum(b["tp"] for b in pooled["by_size"]) == tp
    assert len(pooled["missed"]) == fn > 0
    assert summary["case_mean"]["mean_iou"] is not None
    report = (out / "report.html").read_text()
    assert '<table class="detection">' in report and "Lesions: tumour" in report
    missed_table = report.split('<table class="missed">')[1].split("</table>")[0]
    assert missed_table.count("<tr><td>case") == fn  # one row per missed lesion
