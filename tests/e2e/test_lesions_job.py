"""A model with a lesion label, end to end: installed with `--lesion-labels`, a job with a reference gets its
lesion table (JSON, CSV), instance volume and lesion-wise metrics, and the routes answer mistakes with
problem documents."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from skimage.measure import label as sk_label

from evaluation.lesionwise import lesionwise_metrics
from models.testing.make_bundle import write_unet_bundle
from tests.support.paths import DATA
from tests.support.stack import Stack, wait_job

pytestmark = pytest.mark.e2e
SPLEEN = DATA / "ct" / "spleen"
sitk = pytest.importorskip("SimpleITK")


def test_lesion_model_job_has_lesions_and_lesionwise_metrics(stack: Stack, tmp_path: Path) -> None:
    bundle = write_unet_bundle(
        tmp_path / "lesion_ct_test_bundle", labels={0: "background", 1: "lesion"}, seed=3
    )
    refused = stack.cli("models", "install", str(bundle), "--lesion-labels", "2", check=False)
    assert refused.returncode == 2 and "lesion labels [2]" in refused.stderr
    stack.cli("models", "install", str(bundle), "--lesion-labels", "1")
    image, reference = SPLEEN / "sub-spleen2_ct.nii.gz", SPLEEN / "sub-spleen2_ct_seg-manual.nii.gz"
    with stack.client() as c:
        card = next(m for m in c.get("/v1/models").json()["items"] if m["id"] == "lesion_ct_test_bundle")
        assert card["available"] is True and card["lesion_labels"] == [1], card
        resp = c.post(
            "/v1/jobs",
            data={"model": card["id"]},
            files={"image": image.open("rb"), "reference": reference.open("rb")},
        )
        assert resp.status_code == 202, resp.text
        job = wait_job(c, resp.json()["id"], timeout=300)
        assert job["status"] == "succeeded", job
        base = f"/v1/jobs/{job['id']}"
        table = c.get(f"{base}/lesions").json()
        as_csv = c.get(f"{base}/lesions", params={"format": "csv"})
        labels_bytes = c.get(f"{base}/result").content
        instances_resp = c.get(f"{base}/result", params={"format": "instances"})
        metrics = c.get(f"{base}/metrics").json()
        bad_format = c.get(f"{base}/lesions", params={"format": "xml"})
        unknown = c.get("/v1/jobs/no-such-job/lesions")
    (tmp_path / "labels.nii.gz").write_bytes(labels_bytes)
    (tmp_path / "instances.nii.gz").write_bytes(instances_resp.content)
    result = nib.load(tmp_path / "labels.nii.gz")
    labels = np.asarray(result.dataobj)
    instances = np.asarray(nib.load(tmp_path / "instances.nii.gz").dataobj)

    # the table against scikit-image's components of the downloaded result
    components = sk_label(labels == 1, connectivity=3)
    assert table["n_lesions"] == int(components.max()) == len(table["lesions"]) == int(instances.max())
    assert table["n_lesions"] > 0
    assert instances.shape == labels.shape
    assert [row["n_voxels"] for row in table["lesions"]] == [
        int(np.count_nonzero(instances == i)) for i in range(1, table["n_lesions"] + 1)
    ]
    first = table["lesions"][0]
    physical = sitk.ReadImage(str(tmp_path / "labels.nii.gz")).TransformContinuousIndexToPhysicalPoint(
        first["centroid_voxel"]
    )
    assert first["centroid_lps_mm"] == pytest.approx(physical, abs=1e-3)  # float32 NIfTI affine
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert [int(r["id"]) for r in rows] == [row["id"] for row in table["lesions"]]

    # lesion-wise metrics against the library on the downloaded result and the uploaded reference
    ref = np.asarray(nib.load(reference).dataobj) == 1
    expected = lesionwise_metrics(labels == 1, ref, result.header.get_zooms()[:3])
    got = metrics["lesionwise"]["lesion"]
    assert (got["tp"], got["fp"], got["fn"]) == (expected.tp, expected.fp, expected.fn)
    assert got["lesionwise_dice"] == pytest.approx(expected.lesionwise_dice, abs=1e-6)
    assert table["missed"]["lesion"] == got["missed"]

    assert bad_format.status_code == 400 and bad_format.json()["code"] == "bad_format"
    assert bad_format.headers["content-type"].startswith("application/problem+json")
    assert unknown.status_code == 404 and unknown.json()["code"] == "job_not_found"
