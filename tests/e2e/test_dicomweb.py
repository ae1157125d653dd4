"""DICOMweb STOW-RS intake over the real stack (uvicorn, a Celery worker, Redis, SQLite): a real client
(dicomweb-client) pushes a JPEG 2000 CT series; after the quiet period the worker's sweep makes ONE job of
it, the job runs a MONAI bundle built here for CT, and its DICOM SEG reads back with dcmqi over the source
series. Also: the store response's status codes and failure reasons, the media types, model choice, keys,
duplicates, a series refused when it is closed, and patient data kept out of logs and from roles without
phi:read."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from models.testing.make_bundle import write_unet_bundle
from segserve.scans.readers import read_image
from tests.conftest import redis_db
from tests.support.dicomweb import ct_series, related_body, to_bytes, without_pixels
from tests.support.paths import require_shared
from tests.support.seg_compare import dcmqi_read, place_on_grid
from tests.support.stack import Stack, wait_for, wait_job

pytestmark = pytest.mark.e2e
MODEL = "ct_liver_test"
LABELS = {0: "background", 1: "liver"}
SECRET_NAME, SECRET_ID = "SECRETSURNAME^GIVEN", "PID-9Z7Y5X"


@pytest.fixture(scope="module")
def dw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_shared()
    tmp = tmp_path_factory.mktemp("dicomweb")
    env = {
        "SEGSERVE_REDIS_URL": redis_db(10),
        "SEGSERVE_DICOMWEB_QUIET_S": "1.5",
        "SEGSERVE_DICOMWEB_SWEEP_INTERVAL_S": "0.3",
        "SEGSERVE_MAX_UPLOAD_BYTES": str(20 * 1024 * 1024),
    }
    stack = Stack(tmp, env)
    (tmp / "data").mkdir()
    stack.admin_key = json.loads(stack.cli("keys", "create", "--name", "a", "--role", "admin").stdout)["key"]
    # results are pushed back to this stack's own STOW-RS endpoint, which takes images only: every push
    # is refused (0x0122), which must be recorded and must not fail the job
    stack.env["SEGSERVE_DICOMWEB_PUSH_URL"] = f"{stack.base_url}/dicomweb/{MODEL}"
    stack.env["SEGSERVE_DICOMWEB_PUSH_TOKEN"] = stack.admin_key
    stack.cli("models", "install", str(write_unet_bundle(tmp / "src" / MODEL, labels=LABELS)))
    try:
        stack.start_api()
        stack.start_worker()
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def _client(stack: Stack, key: str | None = None, model: str = MODEL) -> DICOMwebClient:
    return DICOMwebClient(
        url=f"{stack.base_url}/dicomweb/{model}",
        headers={"Authorization": f"Bearer {key or stack.admin_key}"},
    )


def _intake_of(stack: Stack, series_uid: str, key: str | None = None) -> list[dict[str, Any]]:
    with stack.client(key) as c:
        items = c.get("/v1/intake", params={"limit": 200}).json()["items"]
    return [i for i in items if i["series_instance_uid"] == series_uid]


def _wait_closed(stack: Stack, series_uid: str, count: int = 1) -> list[dict[str, Any]]:
    def closed() -> list[dict[str, Any]] | None:
        items = _intake_of(stack, series_uid)
        done = [i for i in items if i["state"] in ("submitted", "failed")]
        return done if len(done) >= count else None

    return list(wait_for(closed, 60, f"series {series_uid[-8:]} closed", interval=0.3))


def _failed_reasons(response: Dataset) -> list[int]:
    return [int(item.FailureReason) for item in response.get("FailedSOPSequence", [])]


@dataclass(frozen=True)
class Pushed:
    datasets: list[Dataset]
    response: Dataset
    intake: dict[str, Any]
    job: dict[str, Any]


@pytest.fixture(scope="module")
def pushed(dw: Stack) -> Pushed:
    """The held-back check's series: 3 real CT slices, 512x512, JPEG 2000 lossless, stored by
    dicomweb-client in one request, then waited on until its job has finished."""
    datasets = ct_series(patient_name=SECRET_NAME, patient_id=SECRET_ID)
    with warnings.catch_warnings():  # the test's own pydicom warns (and quotes it): expected here
        warnings.simplefilter("ignore", UserWarning)
        datasets[0].PatientBirthDate = "1961-02-03"  # not a valid DA: pydicom's validation would quote it
    datasets[0].AccessionNumber = "ACC-5511"
    assert all(ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless for ds in datasets)
    response = _client(dw).store_instances(datasets)
    (intake,) = _wait_closed(dw, datasets[0].SeriesInstanceUID)
    assert intake["state"] == "submitted", intake
    with dw.client() as c:
        job = wait_job(c, intake["job_id"], timeout=240)
    return Pushed(datasets, response, intake, job)


def test_stow_series_becomes_one_job_whose_seg_reads_back_with_dcmqi(
    dw: Stack, pushed: Pushed, tmp_path: Path
) -> None:
    sent = {str(ds.SOPInstanceUID) for ds in pushed.datasets}
    stored = {str(i.ReferencedSOPInstanceUID) for i in pushed.response.ReferencedSOPSequence}
    assert stored == sent and "FailedSOPSequence" not in pushed.response
    assert pushed.intake["instance_count"] == 3 and pushed.intake["model"] == MODEL
    assert pushed.job["status"] == "succeeded", pushed.job
    assert pushed.job["input"]["format"] == "dicom" and pushed.job["input"]["shape"] == [512, 512, 3]
    with dw.client() as c:
        jobs_for_series = c.get("/v1/intake", params={"job_id": pushed.job["id"]}).json()["items"]
        assert [i["id"] for i in jobs_for_series] == [pushed.intake["id"]]  # exactly one job
        seg_resp = c.get(f"/v1/jobs/{pushed.job['id']}/result", params={"format": "dicom-seg"})
        labels_resp = c.get(f"/v1/jobs/{pushed.job['id']}/result")
        events = c.get("/v1/audit", params={"resource_id": pushed.job["id"]}).json()["items"]
    assert seg_resp.status_code == 200, seg_resp.text
    seg_path, labels_path = tmp_path / "seg.dcm", tmp_path / "labels.nii.gz"
    seg_path.write_bytes(seg_resp.content)
    labels_path.write_bytes(labels_resp.content)

    source = pushed.datasets[0]
    seg = hd.seg.segread(io.BytesIO(seg_resp.content))
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    (referenced_series,) = seg.ReferencedSeriesSequence
    assert referenced_series.SeriesInstanceUID == source.SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced_series.ReferencedInstanceSequence} == sent

    # dcmqi reads the SEG, and its voxels are the job's NIfTI result on the source series' grid
    slices = tmp_path / "slices"
    slices.mkdir()
    for n, ds in enumerate(pushed.datasets):
        ds.save_as(slices / f"{n}.dcm")
    volume = read_image(sorted(slices.glob("*.dcm")))
    result = np.asarray(nib.load(str(labels_path)).dataobj)  # type: ignore[attr-defined]
    assert result.any()
    theirs, their_affine = dcmqi_read(seg_path, tmp_path / "dcmqi", LABELS)
    np.testing.assert_array_equal(place_on_grid(theirs, their_affine, result.shape, volume.affine), result)

    actions = {(e["action"], e["detail"].get("format")) for e in events}
    assert ("GET /v1/jobs/{job_id}/result", "dicom-seg") in actions  # the image access is audited
    assert ("intake.job_created", None) in actions
    (push,) = [e for e in events if e["action"] == "dicomweb.push"]  # to our own STOW: a SEG is refused
    assert push["status_code"] == 409 and push["detail"]["ok"] is False
    assert "0x0122" in push["detail"]["detail"]
    with dw.client() as c:
        stow_events = c.get("/v1/audit", params={"resource_id": pushed.intake["id"]}).json()["items"]
    assert any(e["action"] == "POST /dicomweb/{model}/studies" for e in stow_events)


def test_patient_data_stays_out_of_logs_and_from_roles_without_phi_read(dw: Stack, pushed: Pushed) -> None:
    assert pushed.job["status"] == "succeeded"
    logs = "\n".join(p.log_path.read_text(errors="replace") for p in [dw.api, *dw.workers] if p)
    assert "stow" in logs and "intake" in logs  # the new code paths did log
    for secret in ("SECRETSURNAME", "PID-9Z7Y5X", "1961-02-03", "ACC-5511"):
        assert secret not in logs
    with dw.client() as admin:
        reviewer = admin.post("/v1/keys", json={"name": "rad", "role": "reviewer"}).json()["key"]
        submitter = admin.post("/v1/keys", json={"name": "pacs", "role": "submitter"}).json()["key"]
    series_uid = pushed.datasets[0].SeriesInstanceUID
    (seen,) = _intake_of(dw, series_uid, reviewer)
    assert seen["patient"] == {
        "name": SECRET_NAME,
        "id": SECRET_ID,
        "birth_date": "1961-02-03",
        "accession_number": "ACC-5511",
    }
    (hidden,) = _intake_of(dw, series_uid, submitter)
    assert "patient" not in hidden and "original_uids" not in hidden
    assert hidden["job_id"] == pushed.job["id"]
    with dw.client(submitter) as c:
        job = c.get(f"/v1/jobs/{pushed.job['id']}").json()
    assert not {"patient", "PatientName", "PatientID"} & set(job)
    with dw.client() as admin:
        shown = admin.get("/v1/audit", params={"action": "GET /v1/intake"}).json()["items"]
    assert any(seen["id"] in e["detail"]["series"] and e["detail"]["phi"] for e in shown)  # reviewer's read
    reviewer_id = reviewer.split("_")[1]
    assert {e["key_id"] for e in shown} >= {reviewer_id}


def test_store_status_codes_and_failure_reasons(dw: Stack) -> None:
    good = ct_series()
    bad_parts: list[bytes | tuple[bytes, str | None]] = [
        b"this is not DICOM",
        to_bytes(without_pixels(good[0])),
        to_bytes(ct_series(compress=False)[0])[:-5000],  # native pixel data cut short
        (to_bytes(good[1]), "application/octet-stream"),
    ]
    url = f"{dw.base_url}/dicomweb/{MODEL}/studies"
    headers = {"Authorization": f"Bearer {dw.admin_key}"}
    body, content_type = related_body(bad_parts)
    resp = httpx.post(url, content=body, headers={**headers, "Content-Type": content_type}, timeout=60)
    assert resp.status_code == 409 and resp.headers["content-type"] == "application/dicom+json"
    failed = Dataset.from_json(resp.json())
    assert _failed_reasons(failed) == [0xC000, 0x0122, 0xC000, 0xC000]
    assert "ReferencedSOPSequence" not in failed
    assert "part 3 is truncated" in resp.headers["warning"]

    body, content_type = related_body([to_bytes(good[0]), b"junk", to_bytes(good[0])])  # a duplicate too
    resp = httpx.post(url, content=body, headers={**headers, "Content-Type": content_type}, timeout=60)
    assert resp.status_code == 202, resp.text
    mixed = Dataset.from_json(resp.json())
    assert [str(i.ReferencedSOPInstanceUID) for i in mixed.ReferencedSOPSequence] == [
        good[0].SOPInstanceUID
    ] * 2
    assert _failed_reasons(mixed) == [0xC000]
    (row,) = _intake_of(dw, good[0].SeriesInstanceUID)
    assert row["instance_count"] == 1  # the duplicate was stored once

    # /studies/{study}: an instance of another study is refused
    other = ct_series()[0]
    response = _client(dw).store_instances([good[1], other], study_instance_uid=good[0].StudyInstanceUID)
    assert [str(i.ReferencedSOPInstanceUID) for i in response.ReferencedSOPSequence] == [
        good[1].SOPInstanceUID
    ]
    assert _failed_reasons(response) == [0xA900]


@pytest.mark.parametrize(
    ("content_type", "fragment"),
    [
        ("multipart/form-data; boundary=x", "multipart/related"),
        ('multipart/related; type="application/dicom+json"; boundary=x', "application/dicom+json"),
        ("application/dicom", "multipart/related"),
    ],
)
def test_wrong_media_types_get_415(dw: Stack, content_type: str, fragment: str) -> None:
    with dw.client() as c:
        resp = c.post(
            f"/dicomweb/{MODEL}/studies", content=b"--x--\r\n", headers={"Content-Type": content_type}
        )
    assert resp.status_code == 415 and resp.headers["content-type"] == "application/problem+json"
    assert fragment in resp.json()["detail"]


def test_model_choice_and_keys(dw: Stack) -> None:
    body, content_type = related_body([to_bytes(ct_series()[0])])
    with dw.client() as c:
        resp = c.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
        assert resp.status_code == 404 and resp.json()["code"] == "no_default_model"
        assert "SEGSERVE_DICOMWEB_DEFAULT_MODEL" in resp.json()["detail"]
        resp = c.post("/dicomweb/no-such-model/studies", content=body, headers={"Content-Type": content_type})
        assert resp.status_code == 404 and resp.json()["code"] == "unknown_model"
        reviewer = c.post("/v1/keys", json={"name": "r", "role": "reviewer"}).json()["key"]
    url = f"{dw.base_url}/dicomweb/{MODEL}/studies"
    for headers, status in [
        ({}, 401),
        ({"Authorization": "Bearer ssk_nope_nope"}, 401),
        ({"Authorization": f"Bearer {reviewer}"}, 403),
        ({"X-API-Key": dw.admin_key}, 200),
    ]:
        resp = httpx.post(url, content=body, headers={**headers, "Content-Type": content_type}, timeout=60)
        assert resp.status_code == status, (headers.keys(), resp.text)
    with pytest.raises(Exception, match="401"):
        DICOMwebClient(url=f"{dw.base_url}/dicomweb/{MODEL}").store_instances([ct_series()[0]])


def test_a_series_refused_when_closed_is_recorded_and_a_late_instance_starts_a_new_collection(
    dw: Stack,
) -> None:
    tilted = ct_series(tilt_mm_per_slice=0.5)
    _client(dw).store_instances(tilted)
    (failed,) = _wait_closed(dw, tilted[0].SeriesInstanceUID)
    assert failed["state"] == "failed" and failed["job_id"] is None
    assert failed["error"]["code"] == "gantry_tilt" and "tilt" in failed["error"]["message"]
    assert not (dw.tmp / "data" / "incoming" / failed["id"]).exists()  # its files are not kept

    _client(dw).store_instances([tilted[0]])  # the same series again, after it was closed
    rows = _wait_closed(dw, tilted[0].SeriesInstanceUID, count=2)
    late = next(r for r in rows if r["id"] != failed["id"])
    assert late["instance_count"] == 1 and late["state"] == "failed" and late["error"]["code"] == "not_3d"
