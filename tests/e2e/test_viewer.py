"""The review viewer's API over real HTTP: volumes with ETags on one grid (NIfTI, MGZ and DICOM inputs),
the page's security headers, the worklist (roles, evaluation jobs, no patient data), reviews and label
versions. The page itself in a real browser: test_viewer_browser.py."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from segserve.db import new_session
from tests.support.rows import job_row
from tests.support.stack import Stack, run_job, wait_job
from tests.support.viewer import (
    assert_no_patient_data,
    create_key,
    dicom_parts_with_patient,
    nifti,
)
from tests.support.volumes import brain_crop

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"
WORKLIST_FIELDS = {
    "id",
    "case_id",
    "evaluation_id",
    "model",
    "status",
    "created_at",
    "has_reference",
    "review",
}


@pytest.fixture(scope="module")
def finished_job(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A succeeded 64³ job with its reference (small, so software WebGL renders it in seconds)."""
    image, reference = brain_crop(tmp_path_factory.mktemp("viewer"), size=64)
    with stack.client() as c:
        done = run_job(c, MODEL, image, reference)
    return {"id": done["id"], "image": image, "reference": reference}


def test_volumes_have_etags_and_sit_on_one_grid(stack: Stack, finished_job: dict[str, Any]) -> None:
    job_id = finished_job["id"]
    with stack.client() as c:
        image = c.get(f"/v1/jobs/{job_id}/image")
        assert image.status_code == 200 and image.headers["content-type"] == "application/gzip"
        assert image.content == finished_job["image"].read_bytes()  # NIfTI input: the stored file as is
        etag = image.headers["etag"]
        assert image.headers["cache-control"].startswith("private, max-age=")
        again = c.get(f"/v1/jobs/{job_id}/image", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        result = c.get(f"/v1/jobs/{job_id}/result")
        assert (
            c.get(f"/v1/jobs/{job_id}/result", headers={"If-None-Match": result.headers["etag"]}).status_code
            == 304
        )
        ref = c.get(f"/v1/jobs/{job_id}/reference")
        assert ref.status_code == 200
        missing = c.get("/v1/jobs/0123456789abcdef/image")
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    labels, reference = nifti(result.content), nifti(ref.content)
    assert labels.get_data_dtype() == np.uint8 and reference.get_data_dtype() == np.uint8
    np.testing.assert_allclose(labels.affine, nifti(image.content).affine, atol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(reference.dataobj),
        np.asarray(nib.Nifti1Image.from_filename(finished_job["reference"]).dataobj),
    )


def test_mgz_scan_is_converted_once_onto_the_result_grid(stack: Stack, tmp_path: Path) -> None:
    image, _ = brain_crop(tmp_path, size=32)
    source = nib.Nifti1Image.from_filename(image)
    mgz = tmp_path / "crop.mgz"
    nib.save(nib.MGHImage(np.asarray(source.dataobj), source.affine), mgz)
    with stack.client() as c:
        resp = c.post("/v1/jobs", data={"model": MODEL}, files={"image": mgz.open("rb")})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        assert wait_job(c, job_id)["status"] == "succeeded"
        first = c.get(f"/v1/jobs/{job_id}/image")
        second = c.get(f"/v1/jobs/{job_id}/image")
        result = nifti(c.get(f"/v1/jobs/{job_id}/result").content)
        assert c.get(f"/v1/jobs/{job_id}/reference").status_code == 404
    assert first.status_code == 200 and first.headers["etag"] == second.headers["etag"]  # converted once
    converted = nifti(first.content)
    np.testing.assert_array_equal(np.asarray(converted.dataobj), np.asarray(source.dataobj))
    np.testing.assert_allclose(converted.affine, result.affine, atol=1e-5)
    assert converted.shape == result.shape


def test_worklist_and_review_roles(stack: Stack, finished_job: dict[str, Any]) -> None:
    job_id = finished_job["id"]
    submitter, reviewer = create_key(stack, "submitter"), create_key(stack, "reviewer")
    with stack.client(submitter) as c:
        denied = c.post(f"/v1/jobs/{job_id}/review", json={"decision": "accepted"})
        assert denied.status_code == 403 and denied.json()["code"] == "forbidden_role"
        listed = c.get("/v1/worklist", params={"status": "succeeded"}).json()["items"]
        assert job_id in {i["id"] for i in listed}
        assert all(set(i) == WORKLIST_FIELDS for i in listed)
    with stack.client(reviewer) as c:
        bad = c.post(f"/v1/jobs/{job_id}/review", json={"decision": "maybe"})
        assert bad.status_code == 422
        resp = c.post(f"/v1/jobs/{job_id}/review", json={"decision": "rejected", "comment": "left putamen"})
        assert resp.status_code == 201, resp.text
        assert (
            resp.json()["state"] == "rejected" and resp.json()["latest"]["key_id"] == reviewer.split("_")[1]
        )
        rejected = c.get("/v1/worklist", params={"review": "rejected"}).json()["items"]
        assert job_id in {i["id"] for i in rejected}
        unreviewed = c.get("/v1/worklist", params={"review": "unreviewed"}).json()["items"]
        assert job_id not in {i["id"] for i in unreviewed}


def test_worklist_lists_evaluation_jobs_by_case_id(stack: Stack) -> None:
    """A dataset evaluation's case jobs (made by the worker, here written straight into the stack's
    database) are listed with their case id, and can be filtered by evaluation and paged."""
    url = f"sqlite:///{stack.tmp / 'data' / 'segserve.db'}"
    evaluation_id = uuid.uuid4().hex
    with new_session(url) as session:
        for case in ("BRATS_001", "BRATS_002", "BRATS_003"):
            session.add(
                job_row(  # never published: the worklist only reads rows
                    uuid.uuid4().hex,
                    model_id=MODEL,
                    queue="none",
                    submitted_by="eval",
                    evaluation_id=evaluation_id,
                    case_id=case,
                )
            )
        session.commit()
    with stack.client(create_key(stack, "reviewer")) as c:
        page = c.get("/v1/worklist", params={"evaluation": evaluation_id, "limit": 2}).json()
        rest = c.get(page["next"]).json()
        everyone = c.get("/v1/worklist", params={"status": "queued", "limit": 500}).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and rest["next"] is None
    cases = {i["case_id"] for i in page["items"] + rest["items"]}
    assert cases == {"BRATS_001", "BRATS_002", "BRATS_003"}
    assert {i["case_id"] for i in everyone["items"] if i["evaluation_id"] == evaluation_id} == cases


@pytest.fixture(scope="module")
def dicom_job(stack: Stack) -> str:
    """A finished job from a DICOM series whose headers carry a patient's name and id."""
    with stack.client() as c:
        resp = c.post("/v1/jobs", data={"model": MODEL}, files=dicom_parts_with_patient())
        assert resp.status_code == 202, resp.text
        done = wait_job(c, resp.json()["id"])
    assert done["status"] == "succeeded", done
    return str(done["id"])


def test_dicom_scan_is_served_on_the_result_grid_without_patient_data(stack: Stack, dicom_job: str) -> None:
    with stack.client(create_key(stack, "reviewer")) as c:
        image = c.get(f"/v1/jobs/{dicom_job}/image")
        result = nifti(c.get(f"/v1/jobs/{dicom_job}/result").content)
        shown = [
            c.get("/v1/worklist").text,
            c.get("/v1/worklist", params={"status": "succeeded", "limit": 500}).text,
            c.get(f"/v1/jobs/{dicom_job}").text,
            c.get(f"/v1/jobs/{dicom_job}/review").text,
            c.get(f"/v1/jobs/{dicom_job}/labels/versions").text,
        ]
    assert image.status_code == 200 and image.headers["etag"]
    scan = nifti(image.content)
    assert scan.shape == result.shape == (512, 512, 3)
    np.testing.assert_allclose(scan.affine, result.affine, atol=1e-4)  # the overlay sits on the scan
    assert dicom_job in shown[0]
    for n, text in enumerate(shown):
        assert_no_patient_data(text, f"API answer {n}")
    assert_no_patient_data(gzip.decompress(image.content), "the served scan")


def test_viewer_page_has_a_strict_content_security_policy(stack: Stack) -> None:
    with stack.client() as c:
        page = c.get("/viewer")
        scripts = [
            c.get(f"/viewer/static/{name}")
            for name in ("viewer.js", "views.js", "page.js", "lesions.js", "interactive.js")
        ]
        niivue = c.get("/viewer/static/niivue/index.js")
        unknown = c.get("/viewer/static/other.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    directives = [part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";")]
    policy = {name: value for name, value in directives}
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"  # no inline script, no eval, no other origin
    assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in page.headers["content-security-policy"]
    assert "<script>" not in page.text and " on" not in page.text.split("<body", 1)[1].split(">", 1)[0]
    for response in [page, *scripts, niivue]:
        assert response.status_code == 200, response.url
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert all(r.headers["content-type"].startswith("text/javascript") for r in [*scripts, niivue])
    assert unknown.status_code == 404
    # Sent compressed (NiiVue: 3.1 MB as text) and revalidated with an ETag.
    assert niivue.headers["content-encoding"] == "gzip"
    assert int(niivue.headers["content-length"]) < len(niivue.content) * 0.4
    with stack.client() as c:
        again = c.get("/viewer/static/niivue/index.js", headers={"If-None-Match": niivue.headers["etag"]})
        plain = c.get("/viewer/static/viewer.js", headers={"Accept-Encoding": "identity"})
    assert again.status_code == 304 and again.content == b""
    assert "content-encoding" not in plain.headers and plain.content == scripts[0].content
    assert plain.headers["etag"] != scripts[0].headers["etag"]  # another encoding, another tag


def test_label_versions_keep_the_model_result(
    stack: Stack, finished_job: dict[str, Any], tmp_path: Path
) -> None:
    job_id = finished_job["id"]
    reviewer = create_key(stack, "reviewer")
    with stack.client(reviewer) as c:
        original = c.get(f"/v1/jobs/{job_id}/result").content
        labels = nifti(original)
        array = np.asarray(labels.dataobj).copy()
        array[:8, :8, :8] = 17
        corrected = nib.Nifti1Image(array, labels.affine, labels.header)
        resp = c.post(
            f"/v1/jobs/{job_id}/labels",
            content=gzip.compress(corrected.to_bytes()),
            headers={"Content-Type": "application/gzip"},
        )
        assert resp.status_code == 201, resp.text
        assert resp.json()["version"] == 1
        v1 = nifti(c.get(f"/v1/jobs/{job_id}/result", params={"version": 1}).content)
        np.testing.assert_array_equal(np.asarray(v1.dataobj), array)
        assert v1.get_data_dtype() == np.uint8
        assert c.get(f"/v1/jobs/{job_id}/result").content == original
        assert c.get(f"/v1/jobs/{job_id}/result", params={"version": 0}).content == original
        assert c.get(f"/v1/jobs/{job_id}/result", params={"version": 9}).status_code == 404

        multipart = c.post(
            f"/v1/jobs/{job_id}/labels",
            files={"labels": ("fix.nii.gz", gzip.compress(corrected.to_bytes()))},
            data={"comment": "second pass"},
        )
        assert multipart.status_code == 201 and multipart.json()["version"] == 2, multipart.text

        wrong_value = array.copy()
        wrong_value[0, 0, 0] = 200
        bad = c.post(
            f"/v1/jobs/{job_id}/labels", content=nib.Nifti1Image(wrong_value, labels.affine).to_bytes()
        )
        assert bad.status_code == 422 and "200" in bad.json()["detail"]
        wrong_grid = c.post(
            f"/v1/jobs/{job_id}/labels", content=nib.Nifti1Image(array[:32], labels.affine).to_bytes()
        )
        assert wrong_grid.status_code == 422, wrong_grid.text
        versions = c.get(f"/v1/jobs/{job_id}/labels/versions").json()
    assert [v["version"] for v in versions["items"]] == [0, 1, 2] and versions["latest"] == 2
    assert versions["items"][2]["comment"] == "second pass"
