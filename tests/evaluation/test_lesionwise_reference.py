"""Lesion-wise metrics against independent implementations, on the real lesion masks in ../shared/data.

Predictions are seeded perturbations of the real reference (`perturb_lesions`): lesions dropped, split by a
cut, merged with a neighbour by dilation, shifted, and new ones added, so TP, FN, FP, one-to-many and
many-to-one matches all occur. Masks are cropped to the lesions' box plus a margin (the results do not depend
on background far from every lesion).

- `bipartite` rule against the BraTS challenges' own package (`brats-evaluation` 0.0.10, its bundled
  `mets` config: panoptica's MaxBipartiteMatching on Dice > 1e-6, 26-connected components): TP, FP, FN,
  precision, recall, F1 (= RQ), SQ (mean IoU), mean Dice of the matched pairs and PQ, to 1e-6; and through
  the package's whole pipeline (NIfTI files -> `evaluate_single_exam` -> `parse_mets_results`, the CSV a
  challenge participant gets): lesion-wise Dice and HD95 with its penalties, F1, and the matched lesions'
  HD95 (mean and standard deviation), to 1e-6.
- `brats2023` rule: no installed package implements the BraTS 2023 dilation rule (the 2023 scripts are not
  on PyPI; `brats-evaluation` moved to the bipartite rule), so it is checked against an INDEPENDENT
  STRAIGHTFORWARD COMPUTATION written in this test: whole-volume masks, scikit-image labelling, one dilation
  per reference lesion as the 2023 script does, and MONAI's HD95 (the convention we follow; MONAI rounds
  distances to float32, hence HD95 to 1e-6 relative).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage.measure import label as sk_label

from evaluation.lesionwise import HD95_PENALTY_MM, lesionwise_metrics
from tests.support.paths import DATA

nib = pytest.importorskip("nibabel")
nrrd = pytest.importorskip("nrrd")


def _lits() -> tuple[np.ndarray, tuple[float, ...]]:
    path = DATA / "ct/liver-tumor/lits117_label.nii.gz"
    if not path.is_file():
        pytest.skip(f"real data not found: {path}")
    return np.asarray(nib.load(path).dataobj) == 2, (1.0, 1.0, 1.0)


def _brain() -> tuple[np.ndarray, tuple[float, ...]]:
    path = DATA / "mri-lesion/brain-tumor/brain1_label.nrrd"
    if not path.is_file():
        pytest.skip(f"real data not found: {path}")
    data, header = nrrd.read(str(path))
    spacing = tuple(float(np.linalg.norm(v)) for v in header["space directions"])
    return np.asarray(data) > 0, spacing


def _crop(mask: np.ndarray, margin: int = 8) -> np.ndarray:
    nz = np.argwhere(mask)
    lo = np.maximum(nz.min(axis=0) - margin, 0)
    hi = np.minimum(nz.max(axis=0) + margin + 1, mask.shape)
    return mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]


def perturb_lesions(reference: np.ndarray, seed: int) -> np.ndarray:
    """A prediction made from `reference` by dropping, splitting, merging, shifting and adding lesions."""
    rng = np.random.default_rng(seed)
    components = sk_label(reference, connectivity=3)
    n = int(components.max())
    pred = np.zeros_like(reference)
    action = rng.choice(
        ["keep", "drop", "split", "dilate", "shift"], size=n + 1, p=[0.35, 0.15, 0.2, 0.15, 0.15]
    )
    for c in range(1, n + 1):
        mask = components == c
        if action[c] == "drop" and n > 1:
            continue
        if action[c] == "split":
            axis = int(rng.integers(0, 3))
            centre = round(float(np.argwhere(mask)[:, axis].mean()))
            index = [slice(None)] * 3
            index[axis] = slice(centre, centre + 1)
            mask = mask.copy()
            mask[tuple(index)] = False
        elif action[c] == "dilate":  # grows into neighbours: merges close lesions
            mask = ndimage.binary_dilation(mask, iterations=2)
        elif action[c] == "shift":
            mask = np.roll(mask, tuple(int(s) for s in rng.integers(-3, 4, size=3)), axis=(0, 1, 2))
        pred |= mask
    # false positives: small boxes away from the reference
    far = ~ndimage.binary_dilation(reference, iterations=6)
    candidates = np.argwhere(far)
    for i in rng.choice(len(candidates), size=min(4, len(candidates)), replace=False):
        corner = candidates[i]
        size = rng.integers(1, 4, size=3)
        pred[tuple(slice(int(a), int(a + s)) for a, s in zip(corner, size, strict=True))] = True
    return pred


CASES = [("lits", _lits, s) for s in (0, 1)] + [("brain", _brain, s) for s in (0, 1)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{name}-seed{seed}" for name, _, seed in CASES])
def case(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    _, load, seed = request.param
    reference, spacing = load()
    reference = _crop(reference)
    return perturb_lesions(reference, seed), reference, spacing


def _panoptica_et(prediction: np.ndarray, reference: np.ndarray, evaluator: Any) -> Any:
    # label 3 is enhancing tumour, group "et" of the BraTS configs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluator.evaluate(
            prediction.astype(np.uint8) * 3, reference.astype(np.uint8) * 3, verbose=False
        )["et"]


def test_bipartite_rule_equals_brats_evaluation_package(
    case: tuple[np.ndarray, np.ndarray, tuple[float, ...]], request: pytest.FixtureRequest
) -> None:
    from brats_evaluation import config_path
    from panoptica import Panoptica_Evaluator

    if not request.node.callspec.id.endswith("seed0"):
        pytest.skip(
            "the package's full config (4 regions, HD95, NSD) runs on one seed per dataset: ~9 s each"
        )
    prediction, reference, spacing = case
    theirs = _panoptica_et(prediction, reference, Panoptica_Evaluator.load_from_config(config_path("mets")))
    ours = lesionwise_metrics(prediction, reference, spacing, rule="bipartite")
    assert ours.tp > 0 and ours.fp > 0
    assert (ours.tp, ours.fp, ours.fn) == (theirs.tp, theirs.fp, theirs.fn)
    assert (ours.n_ref, ours.n_pred) == (theirs.n_ref_instances, theirs.n_pred_instances)
    assert ours.precision == pytest.approx(theirs.prec, abs=1e-6)
    assert ours.sensitivity == pytest.approx(theirs.rec, abs=1e-6)
    assert ours.f1 == pytest.approx(theirs.rq, abs=1e-6)
    matched_dice = float(np.mean([s.dice for s in ours.lesions if s.kind == "tp"]))
    assert matched_dice == pytest.approx(theirs.sq_dsc, abs=1e-6)
    assert matched_dice * (ours.rq or 0.0) == pytest.approx(theirs.pq_dsc, abs=1e-6)


def test_bipartite_rule_equals_the_packages_csv(
    case: tuple[np.ndarray, np.ndarray, tuple[float, ...]], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from brats_evaluation import config_path
    from brats_evaluation.evaluation import evaluate_single_exam
    from brats_evaluation.metrics_parser import parse_mets_results
    from panoptica import Panoptica_Evaluator

    if not request.node.callspec.id.endswith("seed0"):
        pytest.skip("the package's full pipeline runs on one seed per dataset")
    prediction, reference, spacing = case
    affine = np.diag([*spacing, 1.0])
    paths = {}
    for name, mask in (("prediction", prediction), ("reference", reference)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")  # label 3: enhancing tumour, the "et" region
        nib.save(nib.Nifti1Image(mask.astype(np.uint8) * 3, affine), paths[name])
    evaluator = Panoptica_Evaluator.load_from_config(config_path("mets"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exam = evaluate_single_exam(paths["prediction"], paths["reference"], "case", evaluator)
    assert "error" not in exam, exam
    (tmp_path / "mets.json").write_text(json.dumps({"metrics": [exam]}, default=float))
    parse_mets_results(
        str(tmp_path / "mets.json"), 0, 0.5, str(tmp_path / "mets.csv")
    )  # every lesion "large"
    row = pd.read_csv(tmp_path / "mets.csv").set_index("subject_id").loc["case"]

    ours = lesionwise_metrics(prediction, reference, spacing, rule="bipartite")
    assert ours.tp > 0 and ours.fp > 0
    assert ours.lesionwise_dice == pytest.approx(row["lesionwise_dsc_mean_et"], abs=1e-6)
    assert ours.lesionwise_hd95_mm == pytest.approx(row["lesionwise_hd95_mean_et"], abs=1e-6)
    assert ours.f1 == pytest.approx(row["all_instance_f1_et"], abs=1e-6)
    matched_hd95 = [s.hd95_mm for s in ours.lesions if s.kind == "tp"]
    assert float(np.mean(matched_hd95)) == pytest.approx(exam["et"]["sq_hd95"], abs=1e-6)
    assert float(np.std(matched_hd95)) == pytest.approx(exam["et"]["sq_hd95_std"], abs=1e-6)


def test_panoptic_quality_equals_panoptica(case: tuple[np.ndarray, np.ndarray, tuple[float, ...]]) -> None:
    from panoptica import (
        ConnectedComponentsInstanceApproximator,
        InputType,
        MaxBipartiteMatching,
        Panoptica_Evaluator,
    )
    from panoptica.metrics import Metric

    prediction, reference, spacing = case
    evaluator = Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=MaxBipartiteMatching(matching_metric=Metric.DSC, matching_threshold=1e-6),
        instance_metrics=[Metric.DSC, Metric.IOU],
        global_metrics=[Metric.DSC],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs: Any = evaluator.evaluate(
            prediction.astype(np.uint8), reference.astype(np.uint8), verbose=False
        )["ungrouped"]
    ours = lesionwise_metrics(prediction, reference, spacing, rule="bipartite")
    assert (ours.tp, ours.fp, ours.fn) == (theirs.tp, theirs.fp, theirs.fn)
    assert ours.sq == pytest.approx(theirs.sq, abs=1e-6)
    assert ours.rq == pytest.approx(theirs.rq, abs=1e-6)
    assert ours.pq == pytest.approx(theirs.pq, abs=1e-6)


def _monai_hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
    import torch
    from monai.metrics import compute_hausdorff_distance

    y_pred = torch.from_numpy(pred[None, None].astype(np.float32))
    y = torch.from_numpy(ref[None, None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = compute_hausdorff_distance(y_pred, y, percentile=95, spacing=list(spacing))
    return float(value.item())


def _brats2023_direct(
    prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...], dilation: int
) -> dict[str, Any]:
    """Independent straightforward computation of the BraTS 2023 lesion-wise rule (see module doc)."""
    cross = ndimage.generate_binary_structure(3, 2)
    gt_cc = sk_label(reference, connectivity=3)
    pred_cc = sk_label(prediction, connectivity=3)
    dilated_cc = sk_label(
        ndimage.binary_dilation(reference, structure=cross, iterations=dilation), connectivity=3
    )
    gt_lesions = dilated_cc * (gt_cc > 0)
    dice, hd95, tp_pred = [], [], set()
    n_tp = n_fn = 0
    for k in range(1, int(gt_lesions.max()) + 1):
        gt_k = gt_lesions == k
        zone = ndimage.binary_dilation(gt_k, structure=cross, iterations=dilation)
        hits = set(np.unique(pred_cc[zone]).tolist()) - {0}
        tp_pred |= hits
        pred_k = np.isin(pred_cc, list(hits))
        if hits:
            n_tp += 1
            dice.append(2.0 * np.sum(gt_k & pred_k) / (gt_k.sum() + pred_k.sum()))
            hd95.append(_monai_hd95(pred_k, gt_k, spacing))
        else:
            n_fn += 1
            dice.append(0.0)
            hd95.append(HD95_PENALTY_MM)
    n_fp = len(set(np.unique(pred_cc).tolist()) - {0} - tp_pred)
    return {
        "tp": n_tp,
        "fn": n_fn,
        "fp": n_fp,
        "dice": dice,
        "hd95": hd95,
        "lesionwise_dice": sum(dice) / (len(dice) + n_fp),
        "lesionwise_hd95": (sum(hd95) + n_fp * HD95_PENALTY_MM) / (len(dice) + n_fp),
    }


@pytest.mark.parametrize("dilation", [3, 1])
def test_brats2023_rule_equals_direct_computation(
    case: tuple[np.ndarray, np.ndarray, tuple[float, ...]], dilation: int, request: pytest.FixtureRequest
) -> None:
    prediction, reference, spacing = case
    if dilation == 1 and "lits" in request.node.callspec.id:
        pytest.skip("dilation 1 runs on the brain cases only: the direct computation takes ~12 s on LiTS")
    expected = _brats2023_direct(prediction, reference, spacing, dilation)
    ours = lesionwise_metrics(prediction, reference, spacing, rule="brats2023", dilation_iterations=dilation)
    assert (ours.tp, ours.fn, ours.fp) == (expected["tp"], expected["fn"], expected["fp"])
    lesions = [s for s in ours.lesions if s.kind != "fp"]
    assert [s.dice for s in lesions] == pytest.approx(expected["dice"], abs=1e-6)
    assert [s.hd95_mm for s in lesions] == pytest.approx(expected["hd95"], rel=1e-6)
    assert ours.lesionwise_dice == pytest.approx(expected["lesionwise_dice"], abs=1e-6)
    assert ours.lesionwise_hd95_mm == pytest.approx(expected["lesionwise_hd95"], rel=1e-6)
    assert sum(row["tp"] for row in ours.by_size) == ours.tp
    assert sum(row["fn"] for row in ours.by_size) == ours.fn
    assert sum(row["fp"] for row in ours.by_size) == ours.fp
