"""Our metrics against monai.metrics on the real label volumes in ../shared/data (skipped without them).

Each case compares a real reference with a realistic perturbed copy (`bench.metrics.perturb_labels`:
per structure a one-voxel dilation or erosion, a shift of 1-2 voxels, or nothing). MONAI is called once
per metric over all present classes, on one-hot tensors cropped to the union foreground box plus a
one-voxel margin (MONAI crops each class to its own box again, so the crop changes nothing).
Agreement: Dice to 1e-6; HD, HD95, ASSD to float32 rounding (MONAI rounds distances to float32); NSD to
1e-6 (same voxel counts; MONAI's quotient is float32). Where one side is empty MONAI gives inf or nan and
we give None.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from bench.metrics import perturb_labels
from evaluation.report import evaluate_case
from tests.support.paths import DATA

nib = pytest.importorskip("nibabel")
torch = pytest.importorskip("torch")
monai_metrics = pytest.importorskip("monai.metrics")


@dataclass(frozen=True)
class Case:
    prediction: np.ndarray
    reference: np.ndarray
    spacing: tuple[float, ...]
    tolerances: dict[int, float]


def _load(relative: str) -> tuple[np.ndarray, tuple[float, ...]]:
    path = DATA / relative
    if not path.is_file():
        pytest.skip(f"real data not found: {path}")
    image = nib.load(path)
    return np.asarray(image.dataobj).astype(np.uint8), tuple(float(z) for z in image.header.get_zooms()[:3])


def _case(relative: str, seed: int, tolerance_mm: float) -> Case:
    reference, spacing = _load(relative)
    prediction = perturb_labels(reference, seed=seed)
    present = sorted(int(v) for v in np.union1d(np.unique(reference), np.unique(prediction)) if v > 0)
    # per-structure tolerances: the default for most, a looser one for every third structure
    tolerances = {v: tolerance_mm * (2.0 if i % 3 == 0 else 1.0) for i, v in enumerate(present)}
    return Case(prediction, reference, spacing, tolerances)


def _monai(case: Case, distances: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per class values from one MONAI call per metric over the present classes."""
    classes = sorted(case.tolerances)
    box = tuple(
        slice(max(int(a) - 1, 0), int(b) + 2)
        for a, b in zip(
            *(lambda w: (w.min(0), w.max(0)))(np.argwhere((case.prediction > 0) | (case.reference > 0))),
            strict=True,
        )
    )
    pred, ref = case.prediction[box], case.reference[box]
    p = torch.from_numpy(np.stack([pred == 0] + [pred == c for c in classes]))[None]
    r = torch.from_numpy(np.stack([ref == 0] + [ref == c for c in classes]))[None]
    m = monai_metrics
    out: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns for each class missing on one side
        out["dice"] = m.DiceMetric(include_background=False, ignore_empty=False)(p, r)[0].numpy()
        out["nsd"] = m.compute_surface_dice(p, r, [case.tolerances[c] for c in classes], spacing=case.spacing)
        out["hd95_mm"] = m.compute_hausdorff_distance(p, r, percentile=95, spacing=case.spacing)
        if "hd_mm" in distances:
            out["hd_mm"] = m.compute_hausdorff_distance(p, r, spacing=case.spacing)
        if "assd_mm" in distances:
            out["assd_mm"] = m.compute_average_surface_distance(p, r, symmetric=True, spacing=case.spacing)
    return {k: np.asarray(v).reshape(-1).astype(np.float64) for k, v in out.items()}


def _ours(case: Case) -> list[dict[str, Any]]:
    labels = {v: str(v) for v in case.tolerances}
    report = evaluate_case(
        case.prediction, case.reference, labels, case.spacing, tolerances_mm=case.tolerances
    )
    return report["structures"]


def _compare(case: Case, distances: tuple[str, ...]) -> Iterator[tuple[str, int, Any, float]]:
    theirs = _monai(case, distances)
    for i, row in enumerate(_ours(case)):
        for key, values in theirs.items():
            yield key, int(row["label"]), row[key], float(values[i])


CASES = {
    # (file, perturbation seed, NSD tolerance in mm, distance metrics beyond HD95 to compare)
    "brain-ref18": ("mri-brain/subject-a/ref18.nii.gz", 3, 1.0, ()),
    "ct-totalseg": ("ct/abdomen-totalseg/example_seg.nii.gz", 1, 3.0, ()),
    "ct-spleen": ("ct/spleen/sub-spleen2_ct_seg-manual.nii.gz", 4, 2.0, ("hd_mm", "assd_mm")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_agrees_with_monai_on_real_masks(name: str) -> None:
    relative, seed, tolerance, distances = CASES[name]
    case = _case(relative, seed, tolerance)
    assert not np.array_equal(case.prediction, case.reference)
    n_compared = 0
    for key, label, ours, theirs in _compare(case, distances):
        if ours is None:
            # one side empty: MONAI says inf (HD, ASSD) or nan (HD95); we say None
            assert not np.isfinite(theirs), (key, label, theirs)
            continue
        if key in ("dice", "nsd"):
            assert ours == pytest.approx(theirs, abs=1e-6), (key, label)
        else:
            assert ours == pytest.approx(theirs, rel=2e-7, abs=1e-6), (key, label)
        n_compared += 1
    assert n_compared > 0


def test_spleen_perturbation_is_not_trivial() -> None:
    case = _case(*CASES["ct-spleen"][:3])
    row = _ours(case)[0]
    assert 0.5 < row["dice"] < 1.0
    assert row["hd_mm"] > 0
