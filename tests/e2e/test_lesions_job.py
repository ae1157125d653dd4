"""A model with a lesion label, end to end: installed with `--lesion-labels`, a job with a reference gets its
lesion table (JSON, CSV), instance volume and lesion-wise metrics, and the routes answer mistakes with
problem documents."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from skimage.measure import label as sk_label

from evaluation.lesionwise import lesionwise_metrics
from segserve.scans.seg_export import read_dicom_volume_and_datasets
from tests.support.lesions import LESION_CASE, install_lesion_model
from tests.support.paths import DATA
from tests.support.seg_compare import seg_to_labels
from tests.support.stack import Stack, run_job, wait_job

pytestmark = pytest.mark.e2e
sitk = pytest.importorskip("SimpleITK")


@pytest.fixture(scope="module")
def lesion_model(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The seeded UNet bundle with label 1 marked as a lesion (tests/support/lesions.py)."""
    return install_lesion_model(stack, tmp_path_factory.mktemp("bundle"))


def test_lesion_model_job_has_lesions_and_lesionwise_metrics(
    stack: Stack, lesion_model: str, tmp_path: Path
) -> None:
    image, reference = LESION_CASE
    with stack.client() as c:
        card = next(m for m in c.get("/v1/models").json()["items"] if m["id"] == lesion_model)
        assert card["available"] is True and card["lesion_labels"] == [1], card
        job = run_job(c, card["id"], image, reference)
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


def test_dicom_job_of_a_lesion_model_has_a_seg_with_one_segment_per_lesion(
    stack: Stack, lesion_model: str, tmp_path: Path
) -> None:
    slices = sorted((DATA / "dicom" / "ct-3slice").glob("0*.dcm"))
    files = [("image", (p.name, p.read_bytes())) for p in slices]
    with stack.client() as c:
        resp = c.post("/v1/jobs", data={"model": lesion_model}, files=files)
        assert resp.status_code == 202, resp.text
        job = wait_job(c, resp.json()["id"], timeout=300)
        assert job["status"] == "succeeded", job
        base = f"/v1/jobs/{job['id']}"
        table = c.get(f"{base}/lesions").json()
        seg_resp = c.get(f"{base}/result", params={"format": "dicom-seg", "instances": "true"})
        instances_nifti = c.get(f"{base}/result", params={"format": "instances"}).content
        misuse = c.get(f"{base}/result", params={"instances": "true"})
    assert misuse.status_code == 400 and misuse.json()["code"] == "bad_format"
    (tmp_path / "instances.nii.gz").write_bytes(instances_nifti)
    instances = np.asarray(nib.load(tmp_path / "instances.nii.gz").dataobj)
    if table["n_lesions"] == 0:  # nothing found: no segment to make, and the refusal says so
        assert seg_resp.status_code == 422 and seg_resp.json()["code"] == "empty_segmentation"
        return
    assert seg_resp.status_code == 200 and seg_resp.headers["content-type"] == "application/dicom"
    # read back with highdicom onto the series (dcmqi's read-back of instance SEGs with several lesions is
    # tests/segserve/test_instance_seg.py)
    seg = hd.seg.segread(io.BytesIO(seg_resp.content))
    names = {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}
    assert sorted(names) == [row["id"] for row in table["lesions"]]
    assert all(names[row["id"]].startswith(f"lesion {row['id']} (lesion)") for row in table["lesions"])
    _, datasets = read_dicom_volume_and_datasets(slices)
    back = seg_to_labels(seg, [str(ds.SOPInstanceUID) for ds in datasets], names)
    np.testing.assert_array_equal(back, instances)
