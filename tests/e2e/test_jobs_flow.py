"""The whole path over real HTTP, real Redis and a real Celery worker: submit, poll, result, metrics,
list, cancel, delete; and the reference figure on subject-a."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.support.paths import DATA
from tests.support.stack import Stack, wait_job
from tests.support.volumes import SUBJECT_A, brain_crop

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"


def _load_result(content: bytes, tmp: Path) -> nib.Nifti1Image:
    path = tmp / "result.nii.gz"
    path.write_bytes(content)
    return nib.load(path)


def test_models_catalog_lists_the_brain_model(stack: Stack) -> None:
    with stack.client() as c:
        items = {m["id"]: m for m in c.get("/v1/models").json()["items"]}
    card = items[MODEL]
    assert card["available"] is True
    assert card["labels"]["1"] == "Cerebral-White-Matter" and len(card["labels"]) == 18
    assert card["modality"] == "MR" and card["version"]


def test_small_job_with_reference_end_to_end(stack: Stack, tmp_path: Path) -> None:
    image, reference = brain_crop(tmp_path, size=64)  # big enough for the model to find structures
    with stack.client() as c:
        resp = c.post(
            "/v1/jobs",
            data={"model": MODEL},
            files={"image": image.open("rb"), "reference": reference.open("rb")},
        )
        assert resp.status_code == 202, resp.text
        job = resp.json()
        assert resp.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["status"] in ("queued", "running") and job["model"]["id"] == MODEL
        # Not finished yet (or just finished): the result answers 409 until it is.
        early = c.get(f"/v1/jobs/{job['id']}/result")
        assert early.status_code in (200, 409)

        done = wait_job(c, job["id"])
        assert done["status"] == "succeeded", done
        assert done["progress"] == 1.0 and done["started_at"] and done["finished_at"]

        result = _load_result(c.get(f"/v1/jobs/{job['id']}/result").content, tmp_path)
        source = nib.load(image)
        assert result.shape == source.shape
        np.testing.assert_array_equal(result.affine, source.affine)
        labels = np.asarray(result.dataobj)
        assert np.issubdtype(labels.dtype, np.integer) and labels.max() <= 17 and labels.max() > 0

        metrics = c.get(f"/v1/jobs/{job['id']}/metrics").json()
        as_csv = c.get(f"/v1/jobs/{job['id']}/metrics", params={"format": "csv"})
        assert c.get(f"/v1/jobs/{job['id']}/metrics", params={"format": "xml"}).status_code == 422
    assert as_csv.headers["content-type"].startswith("text/csv")
    csv_rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert len(csv_rows) == 17 and {"dice", "hd95_mm", "nsd", "assd_mm"} <= set(csv_rows[0])
    rows = {r["label"]: r for r in metrics["structures"]}
    for row in rows.values():
        if row["empty"] is None:  # present in both: every distance is defined
            assert row["hd95_mm"] is not None and row["hd_mm"] >= row["hd95_mm"] and 0 <= row["nsd"] <= 1
    assert set(rows) == set(range(1, 18))
    ref = np.asarray(nib.load(reference).dataobj)
    for value, row in rows.items():
        in_ref, in_pred = bool((ref == value).any()), bool((labels == value).any())
        if not in_ref and not in_pred:
            assert row["dice"] is None and row["iou"] is None
        else:
            inter = np.logical_and(ref == value, labels == value).sum()
            assert row["dice"] == pytest.approx(2 * inter / ((ref == value).sum() + (labels == value).sum()))
            assert row["volume_ref_ml"] == pytest.approx((ref == value).sum() / 1000.0)
    scored = [r["dice"] for r in rows.values() if r["dice"] is not None]
    assert metrics["mean"]["dice"] == pytest.approx(np.mean(scored))


def test_dicom_series_as_parts_and_as_zip(stack: Stack, tmp_path: Path) -> None:
    slices = sorted((DATA / "dicom" / "mr-3slice").glob("*.dcm"))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for s in slices:
            zf.write(s, f"series/{s.name}")
    with stack.client() as c:
        parts = [("image", (s.name, s.read_bytes())) for s in reversed(slices)]
        as_parts = c.post("/v1/jobs", data={"model": MODEL}, files=parts)
        as_zip = c.post("/v1/jobs", data={"model": MODEL}, files={"image": ("s.zip", archive.getvalue())})
        assert as_parts.status_code == 202, as_parts.text
        assert as_zip.status_code == 202, as_zip.text
        assert as_parts.json()["input"]["format"] == "dicom"
        assert as_parts.json()["input"]["shape"] == [512, 512, 3]
        results = []
        for job in (as_parts.json(), as_zip.json()):
            done = wait_job(c, job["id"])
            assert done["status"] == "succeeded", done
            results.append(_load_result(c.get(f"/v1/jobs/{job['id']}/result").content, tmp_path))
            assert c.get(f"/v1/jobs/{job['id']}/metrics").status_code == 404
    assert results[0].shape == (512, 512, 3)
    np.testing.assert_allclose(results[0].affine, results[1].affine)
    # privacy: the series' patient name / ID never reach the logs (nor do the uploaded file names)
    logs = "\n".join(p.log_path.read_text(errors="replace") for p in [stack.api, *stack.workers] if p)
    assert "VS-SEG-001" not in logs and "1-001.dcm" not in logs


def test_list_filter_paginate_and_delete(stack: Stack, tmp_path: Path) -> None:
    image, _ = brain_crop(tmp_path, size=32)
    with stack.client() as c:
        ids = [
            c.post("/v1/jobs", data={"model": MODEL}, files={"image": image.open("rb")}).json()["id"]
            for _ in range(3)
        ]
        for job_id in ids:
            assert wait_job(c, job_id)["status"] == "succeeded"
        page = c.get("/v1/jobs", params={"status": "succeeded", "limit": 2}).json()
        assert len(page["items"]) == 2 and page["total"] >= 3 and page["next"]
        assert all(item["status"] == "succeeded" for item in page["items"])
        assert c.get("/v1/jobs", params={"status": "bogus"}).status_code == 422

        # A submitter's DELETE removes a finished job and its files; an admin's removes the files and keeps
        # the job as a tombstone (as the retention does; tests/e2e/test_retention.py).
        submitter = c.post("/v1/keys", json={"name": "deleter", "role": "submitter"}).json()["key"]
        with stack.client(submitter) as s:
            assert s.delete(f"/v1/jobs/{ids[0]}").status_code == 204
        assert c.get(f"/v1/jobs/{ids[0]}").status_code == 404
        assert not (stack.tmp / "data" / "jobs" / ids[0]).exists()
        assert c.delete(f"/v1/jobs/{ids[1]}").status_code == 204
        assert c.get(f"/v1/jobs/{ids[1]}").json()["files_deleted_at"] is not None
        assert c.get(f"/v1/jobs/{ids[1]}/result").status_code == 410
        assert not (stack.tmp / "data" / "jobs" / ids[1]).exists()


def test_cancel_a_queued_job(stack: Stack, tmp_path: Path) -> None:
    # The worker runs one job at a time: queue a full-size job, then a second one, and cancel the second.
    with stack.client() as c:
        first = c.post(
            "/v1/jobs", data={"model": MODEL}, files={"image": (SUBJECT_A / "norm.mgz").open("rb")}
        )
        image, _ = brain_crop(tmp_path, size=32)
        second = c.post("/v1/jobs", data={"model": MODEL}, files={"image": image.open("rb")}).json()
        resp = c.delete(f"/v1/jobs/{second['id']}")
        assert resp.status_code == 202
        assert resp.json()["status"] == "cancelled"
        cancelled = c.get(f"/v1/jobs/{second['id']}").json()
        assert cancelled["status"] == "cancelled"
        assert c.get(f"/v1/jobs/{second['id']}/result").status_code == 409
        # cancel the running one too: it stops between layers
        running = wait_job(c, first.json()["id"], until=("running",))
        if running["status"] == "running":
            assert c.delete(f"/v1/jobs/{running['id']}").status_code == 202
            assert wait_job(c, running["id"])["status"] in ("cancelled", "succeeded")


def test_subject_a_reaches_known_dice(stack: Stack, tmp_path: Path) -> None:
    """The model's known quality on this subject (shared/data/README.md): mean Dice 0.785."""
    with stack.client() as c:
        resp = c.post(
            "/v1/jobs",
            data={"model": MODEL},
            files={
                "image": (SUBJECT_A / "norm.mgz").open("rb"),
                "reference": (SUBJECT_A / "ref18.nii.gz").open("rb"),
            },
        )
        assert resp.status_code == 202, resp.text
        done = wait_job(c, resp.json()["id"], timeout=400)
        assert done["status"] == "succeeded", done
        result = _load_result(c.get(f"/v1/jobs/{done['id']}/result").content, tmp_path)
        metrics = c.get(f"/v1/jobs/{done['id']}/metrics").json()
    source = nib.load(SUBJECT_A / "norm.mgz")
    assert result.shape == source.shape
    np.testing.assert_allclose(result.affine, source.affine, atol=1e-6)
    assert metrics["mean"]["dice"] >= 0.78, metrics["mean"]
