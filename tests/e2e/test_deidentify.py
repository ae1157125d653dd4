"""SEGSERVE_DEIDENTIFY=true over the real API (uvicorn, SQLite; no worker needed: what is checked is what
the API stores): STOW-RS intake and POST /v1/jobs uploads are stored de-identified, the client still gets
its own UIDs back, and the UID mapping is kept so results can be tied back."""

from __future__ import annotations

import io
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.support.dicomweb import api_only_stack, ct_series, to_bytes
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e
MODEL = "ct_deid_test"
NAME, PATIENT_ID = "IDENTIFIABLE^PERSON", "MRN-31337"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "SEGSERVE_DEIDENTIFY": "true",
        "SEGSERVE_DICOMWEB_DEFAULT_MODEL": MODEL,
        "SEGSERVE_DICOMWEB_QUIET_S": "3600",  # stays open: the stored files are inspected in place
    }
    with api_only_stack(tmp_path_factory.mktemp("deid"), env, MODEL) as stack:
        yield stack


def _assert_deidentified(path: Path) -> pydicom.Dataset:
    raw = path.read_bytes()
    assert NAME.encode() not in raw and PATIENT_ID.encode() not in raw
    ds = pydicom.dcmread(path)
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientName == "" and ds.PatientID == ""
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert not any(e.tag.is_private for e in ds) and ds.SOPInstanceUID.startswith("2.25.")
    return ds


def test_stow_intake_is_stored_deidentified_and_tied_back(api: Stack) -> None:
    series = ct_series(patient_name=NAME, patient_id=PATIENT_ID)
    client = DICOMwebClient(url=f"{api.base_url}/dicomweb", headers={"X-API-Key": api.admin_key})
    response = client.store_instances(series)  # the default model (no model in the path)
    sent = [str(ds.SOPInstanceUID) for ds in series]
    assert [str(i.ReferencedSOPInstanceUID) for i in response.ReferencedSOPSequence] == sent

    with api.client() as c:
        items = c.get("/v1/intake").json()["items"]
        submitter = c.post("/v1/keys", json={"name": "s", "role": "submitter"}).json()["key"]
    (row,) = [i for i in items if i.get("original_uids", {}).get("series") == series[0].SeriesInstanceUID]
    assert row["deidentified"] and row["model"] == MODEL and row["state"] == "open"
    assert row["study_instance_uid"] != series[0].StudyInstanceUID and row["patient"] == {}
    assert row["original_uids"]["study"] == series[0].StudyInstanceUID
    with api.client(submitter) as c:
        hidden = c.get(f"/v1/intake/{row['id']}").json()
    assert "original_uids" not in hidden and hidden["series_instance_uid"] == row["series_instance_uid"]

    stored = sorted((api.tmp / "data" / "incoming" / row["id"] / "image").iterdir())
    assert len(stored) == 3
    kept = [_assert_deidentified(p) for p in stored]
    assert {ds.SeriesInstanceUID for ds in kept} == {row["series_instance_uid"]}
    assert all(ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless for ds in kept)

    with sqlite3.connect(api.tmp / "data" / "segserve.db") as db:
        pairs = dict(db.execute("SELECT replacement, original FROM deid_uids").fetchall())
    assert pairs[row["study_instance_uid"]] == series[0].StudyInstanceUID
    assert {pairs[str(ds.SOPInstanceUID)] for ds in kept} == set(sent)


def test_job_uploads_are_stored_deidentified(api: Stack) -> None:
    series = ct_series(patient_name=NAME, patient_id=PATIENT_ID)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for n, ds in enumerate(series):
            zf.writestr(f"study/{n}.dcm", to_bytes(ds))
    with api.client() as c:
        zipped = c.post("/v1/jobs", data={"model": MODEL}, files={"image": ("s.zip", archive.getvalue())})
        parts = c.post(
            "/v1/jobs",
            data={"model": MODEL},
            files=[("image", (f"{NAME}_{n}.dcm", to_bytes(ds))) for n, ds in enumerate(series)],
        )
    for resp in (zipped, parts):
        assert resp.status_code == 202, resp.text
        assert resp.json()["input"]["shape"] == [512, 512, 3]
        image_dir = api.tmp / "data" / "jobs" / resp.json()["id"] / "input" / "image"
        names = sorted(p.name for p in image_dir.iterdir())
        assert names == ["0000.dcm", "0001.dcm", "0002.dcm"]  # the zip was unpacked de-identified
        for path in image_dir.iterdir():
            _assert_deidentified(path)


def test_an_upload_that_cannot_be_deidentified_is_refused_and_not_kept(api: Stack) -> None:
    series = ct_series(patient_name=NAME, patient_id=PATIENT_ID)
    series[1].BurnedInAnnotation = "YES"
    with api.client() as c:
        before = c.get("/v1/jobs").json()["total"]
        resp = c.post(
            "/v1/jobs",
            data={"model": MODEL},
            files=[("image", (f"{n}.dcm", to_bytes(ds))) for n, ds in enumerate(series)],
        )
        after = c.get("/v1/jobs").json()["total"]
    assert resp.status_code == 422 and resp.json()["code"] == "deidentification_failed"
    assert "file 2 of 3" in resp.json()["detail"] and "burned-in" in resp.json()["detail"]
    assert after == before and list((api.tmp / "data" / "staging").iterdir()) == []
