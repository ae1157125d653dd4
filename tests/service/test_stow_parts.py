"""STOW-RS pieces on real files: the streaming multipart/related parser, the per-part checks and their
failure reasons, de-identification on intake, and the DICOM JSON store response."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID

from service.dicomweb.instances import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    SOP_CLASS_NOT_SUPPORTED,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
    Received,
    Rejected,
    inspect_part,
)
from service.dicomweb.multipart import StowPart, check_media_type, receive_related
from service.dicomweb.response import status_code, store_response, warning_headers
from service.problems import Problem
from tests.support.dicomweb import ct_series, related_body, to_bytes
from tests.support.paths import require_shared


async def _chunks(body: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _parse(body: bytes, content_type: str, root: Path, max_bytes: int = 10**8) -> list[StowPart]:
    boundary = check_media_type(content_type)
    return asyncio.run(receive_related(boundary, _chunks(body), root, max_bytes))


def _part(tmp_path: Path, data: bytes, media_type: str = "application/dicom") -> StowPart:
    path = tmp_path / "00001.part"
    path.write_bytes(data)
    return StowPart(1, path, media_type, len(data))


def test_parts_stream_to_files_in_order(tmp_path: Path) -> None:
    body, content_type = related_body([b"first", (b"second", None), (b"third", "text/plain")])
    parts = _parse(body, content_type, tmp_path)
    assert [p.path.read_bytes() for p in parts] == [b"first", b"second", b"third"]
    assert [p.media_type for p in parts] == ["application/dicom", "", "text/plain"]
    assert [p.index for p in parts] == [1, 2, 3]


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("multipart/form-data; boundary=a", 415),
        ('multipart/related; type="application/dicom+xml"; boundary=a', 415),
        ("application/json", 415),
        ("", 415),
        ('multipart/related; type="application/dicom"', 400),
    ],
)
def test_media_type_problems(content_type: str, status: int) -> None:
    with pytest.raises(Problem) as info:
        check_media_type(content_type)
    assert info.value.status == status
    assert check_media_type('multipart/related; boundary="b1"') == b"b1"  # type is optional


def test_truncated_and_oversized_bodies_are_refused(tmp_path: Path) -> None:
    body, content_type = related_body([b"x" * 100, b"y" * 100])
    with pytest.raises(Problem) as info:
        _parse(body[:-30], content_type, tmp_path)
    assert info.value.status == 400 and "closing boundary" in info.value.detail
    with pytest.raises(Problem) as info:
        _parse(body, content_type, tmp_path, max_bytes=150)
    assert info.value.status == 413


def test_a_jpeg2000_slice_is_received_with_its_series_facts(tmp_path: Path) -> None:
    require_shared()
    ds = ct_series(patient_name="ROE^RICHARD", patient_id="P-77")[0]
    checked = inspect_part(_part(tmp_path, to_bytes(ds)), study_uid=ds.StudyInstanceUID, deid_key=None)
    assert isinstance(checked, Received)
    assert checked.sop_instance_uid == checked.stored_sop_instance_uid == ds.SOPInstanceUID
    facts = checked.facts
    assert (facts.study_uid, facts.series_uid, facts.modality) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        "CT",
    )
    assert facts.series_number == 2 and facts.patient["name"] == "ROE^RICHARD" and not facts.deidentified


def test_deidentified_intake_keeps_the_clients_uids_for_the_answer(tmp_path: Path) -> None:
    require_shared()
    ds = ct_series(patient_name="ROE^RICHARD", patient_id="P-77")[0]
    checked = inspect_part(_part(tmp_path, to_bytes(ds)), study_uid=None, deid_key=b"z" * 32)
    assert isinstance(checked, Received) and checked.deid is not None
    assert checked.sop_instance_uid == ds.SOPInstanceUID != checked.stored_sop_instance_uid
    assert not (tmp_path / "00001.part").exists()  # the identified copy is gone
    stored = pydicom.dcmread(checked.path)
    assert stored.PatientName == "" and stored.PatientIdentityRemoved == "YES"
    assert stored.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless  # pixels untouched
    assert checked.facts.deidentified and checked.facts.patient == {}
    assert checked.facts.original_uids == {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID}


def _refused(tmp_path: Path, ds: Dataset, study: str | None = None) -> Rejected:
    checked = inspect_part(_part(tmp_path, to_bytes(ds)), study_uid=study, deid_key=None)
    assert isinstance(checked, Rejected), checked
    return checked


def test_failure_reasons(tmp_path: Path) -> None:
    require_shared()
    ds = ct_series(compress=False)[0]
    assert _refused(tmp_path, ds, study="1.2.3").reason == DATASET_MISMATCH
    missing = copy.deepcopy(ds)
    del missing.SeriesInstanceUID
    refused = _refused(tmp_path, missing)
    assert refused.reason == DATASET_MISMATCH and "SeriesInstanceUID" in refused.detail
    colour = copy.deepcopy(ds)
    colour.SamplesPerPixel = 3
    assert _refused(tmp_path, colour).reason == SOP_CLASS_NOT_SUPPORTED
    seg = copy.deepcopy(ds)
    seg.Modality = "SEG"
    assert "segmentation" in _refused(tmp_path, seg).detail
    mpeg = ct_series()[0]
    mpeg.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2: no decoder here
    refused = _refused(tmp_path, mpeg)
    assert refused.reason == TRANSFER_SYNTAX_NOT_SUPPORTED and refused.sop_instance_uid == mpeg.SOPInstanceUID
    wrong_type = inspect_part(_part(tmp_path, to_bytes(ds), "image/png"), study_uid=None, deid_key=None)
    assert isinstance(wrong_type, Rejected) and wrong_type.reason == CANNOT_UNDERSTAND
    assert wrong_type.sop_instance_uid == ""  # not read at all


def test_store_response_is_dicom_json_with_the_standard_sequences() -> None:
    refused = [
        Rejected(2, 0xC000, 'part 2 is not "DICOM"'),
        Rejected(3, 0xA900, "x", "1.2.840.10008.5.1.4.1.1.2", "9.8"),
    ]
    body = store_response([], refused)
    back = Dataset.from_json(body)
    assert "ReferencedSOPSequence" not in back
    assert [int(i.FailureReason) for i in back.FailedSOPSequence] == [0xC000, 0xA900]
    assert back.FailedSOPSequence[1].ReferencedSOPInstanceUID == "9.8"
    assert body["00081198"]["Value"][0]["00081155"] == {"vr": "UI"}  # unknown UID: empty, not invented
    assert [status_code(3, 0), status_code(2, 1), status_code(0, 2)] == [200, 202, 409]
    (header, _) = warning_headers(refused)
    assert header == ("warning", "299 segserve \"part 2 is not 'DICOM'\"")
