"""JSON-ready lesion tables and lesion-wise reports for a job or a batch case (wraps instances/lesionwise).

Lesion-wise metrics are computed per lesion label (each label's mask on its own), so a model with
"metastasis" and "oedema" as lesions gets one result for each. Missed lesions are listed with their
volume and centroid (voxel indices and LPS mm) so that viewers and reports can point at them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evaluation.instances import RAS_TO_LPS, lesion_instances
from evaluation.lesionwise import lesionwise_metrics

LESION_FIELDS = (
    "id",
    "label",
    "name",
    "n_voxels",
    "volume_ml",
    "centroid_lps_mm",
    "centroid_voxel",
    "bbox_start",
    "bbox_stop",
    "long_axis_mm",
    "short_axis_mm",
    "axial_slice",
    "intensity_mean",
    "intensity_max",
)

LESION_CONVENTIONS = {
    "connectivity": "26-neighbour (faces, edges, corners), each lesion label on its own",
    "ids": "1..N by label value, then by decreasing volume",
    "centroid_lps_mm": "DICOM patient coordinates (LPS), mm",
    "bbox": "voxel indices, start inclusive, stop exclusive",
    "diameters": "RECIST on axial slices, voxel centre to voxel centre, mm; short axis = extent "
    "perpendicular to the long axis on its slice",
    "volume_unit": "ml",
}


def lesion_table(
    labels: np.ndarray,
    label_names: Mapping[int, str],
    lesion_labels: Sequence[int],
    affine: np.ndarray,
    intensities: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(instance volume, {"lesions": [...], "n_lesions", "conventions"}) for the lesion labels of a result."""
    names = {int(v): label_names.get(int(v), f"label {v}") for v in lesion_labels}
    instances, lesions = lesion_instances(labels, names, affine, intensities)
    return instances, {
        "n_lesions": len(lesions),
        "lesion_labels": {str(k): v for k, v in sorted(names.items())},
        "lesions": [les.as_dict() for les in lesions],
        "conventions": LESION_CONVENTIONS,
    }


def lesions_csv(payload: Mapping[str, Any]) -> str:
    """One line per lesion, header first; vectors as space-separated numbers."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LESION_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in payload["lesions"]:
        writer.writerow(
            {
                k: ""
                if row.get(k) is None
                else " ".join(str(x) for x in row[k])
                if isinstance(row[k], list | tuple)
                else row[k]
                for k in LESION_FIELDS
            }
        )
    return buffer.getvalue()


def lesionwise_report(
    prediction: np.ndarray,
    reference: np.ndarray,
    label_names: Mapping[int, str],
    lesion_labels: Sequence[int],
    affine: np.ndarray,
    spacing_mm: Sequence[float],
    **options: Any,
) -> dict[str, Any]:
    """{label name: lesion-wise result (see evaluation.lesionwise) + "missed": [...]} per lesion label.

    With the default rule (BraTS 2023) each result also carries "bipartite": the same scores under the
    rule of the BraTS challenges' current package (`brats-evaluation`), without the per-lesion list.

    `options` go to `lesionwise_metrics` (rule, dilation_iterations, min_volume_mm3, size_bins_ml).
    """
    out: dict[str, Any] = {}
    for value in sorted(int(v) for v in lesion_labels):
        pred_mask, ref_mask = prediction == value, reference == value
        result = lesionwise_metrics(pred_mask, ref_mask, spacing_mm, **options).as_dict()
        result["label"] = value
        if result["rule"] != "bipartite":  # the BraTS package's current rule too, for comparison with it
            other = {k: v for k, v in options.items() if k != "rule"}
            bipartite = lesionwise_metrics(pred_mask, ref_mask, spacing_mm, rule="bipartite", **other)
            result["bipartite"] = {k: v for k, v in bipartite.as_dict().items() if k != "lesions"}
        result["missed"] = [
            {
                "ref_id": s["ref_id"],
                "volume_ml": s["volume_ref_ml"],
                "centroid_voxel": list(s["centroid_voxel"]),
                "centroid_lps_mm": voxel_to_lps(affine, s["centroid_voxel"]),
            }
            for s in result["lesions"]
            if s["kind"] == "fn" and s["counted"]
        ]
        out[label_names.get(value, f"label {value}")] = result
    return out


def voxel_to_lps(affine: np.ndarray, voxel: Sequence[float]) -> list[float]:
    """A voxel index (continuous) -> LPS mm, through a RAS+ affine."""
    world = (np.asarray(affine, dtype=np.float64) @ np.array([*voxel, 1.0]))[:3] * RAS_TO_LPS
    return [float(x) for x in world]
