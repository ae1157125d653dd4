"""The case-level metric vocabulary against scikit-learn, on real multi-label volumes with seeded
perturbations: voxel accuracy (`accuracy_score`), mean class accuracy (`balanced_accuracy_score`: the mean
of per-class recall over the classes in the reference), mean IoU (`jaccard_score`, macro over the classes
present in either), and Dice = F1 for a binary mask (`f1_score`)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bench.metrics import perturb_labels
from evaluation.overlap import overlap_report
from evaluation.report import evaluate_case
from tests.support.paths import DATA

nib = pytest.importorskip("nibabel")
sk_metrics = pytest.importorskip("sklearn.metrics")

CASES = [("ct/abdomen-totalseg/example_seg.nii.gz", 0), ("ct/liver-tumor/lits117_label.nii.gz", 1)]


@pytest.mark.parametrize(("relative", "seed"), CASES)
def test_case_vocabulary_equals_scikit_learn(relative: str, seed: int) -> None:
    path = DATA / relative
    if not path.is_file():
        pytest.skip(f"real data not found: {path}")
    image = nib.load(path)
    reference = np.asarray(image.dataobj).astype(np.uint8)
    prediction = perturb_labels(reference, seed=seed)
    values = sorted(int(v) for v in np.unique(reference) if v > 0)
    labels = {v: f"s{v}" for v in values}
    report = evaluate_case(prediction, reference, labels, image.header.get_zooms()[:3])
    y_true, y_pred = reference.ravel(), prediction.ravel()
    present = sorted(set(np.unique(y_true)) | set(np.unique(y_pred)))
    case = report["case"]
    assert case["voxel_accuracy"] == pytest.approx(sk_metrics.accuracy_score(y_true, y_pred), abs=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes predicted but absent from the reference
        balanced = sk_metrics.balanced_accuracy_score(y_true, y_pred)
    assert case["mean_class_accuracy"] == pytest.approx(balanced, abs=1e-9)
    assert case["mean_iou"] == pytest.approx(
        sk_metrics.jaccard_score(y_true, y_pred, labels=present, average="macro"), abs=1e-9
    )
    assert overlap_report(prediction, reference, labels, 1.0)["case"] == case
    for row in report["structures"][:5]:
        f1 = sk_metrics.f1_score(y_true == row["label"], y_pred == row["label"])
        assert row["dice"] == pytest.approx(f1, abs=1e-9)
        assert row["iou"] == pytest.approx(row["dice"] / (2 - row["dice"]), abs=1e-9)
