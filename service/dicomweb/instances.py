"""Checking one STOW-RS part: is it a DICOM image instance that the series reader can use later?

Each part becomes a `Received` (stored, possibly after de-identification) or a `Rejected` with a PS3.4 /
PS3.18 failure reason and a detail in words (never patient data; only part numbers and DICOM facts):

    0xC000 cannot understand   not a PS3.10 DICOM file, damaged, or a part of another media type
    0xA900 data set mismatch   lacks the Study / Series / SOP Instance UID, or belongs to another study
                               than the one the request's URL names
    0x0122 SOP class not supported   no image pixel data (SR, SEG, RT objects, ...), or a colour image
    0xC122 transfer syntax not supported   compressed with a syntax no installed decoder reads
    0x0110 processing failure   could not be de-identified
    0xA700 out of resources     could not be stored (disk full)

The pixel data is not decoded here (the series is decoded once, when it is closed into a job), but native
pixel data shorter than Rows x Columns x frames says the file was cut short, and is refused now.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from segserve.dicom.deid import DeidentificationError
from segserve.dicom.deid_store import DeidOutcome, deidentify_file
from segserve.dicom.series import why_not_an_image
from segserve.intake import SeriesFacts
from service.dicomweb.multipart import DICOM, StowPart

CANNOT_UNDERSTAND = 0xC000
DATASET_MISMATCH = 0xA900
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700

_PATIENT_KEYWORDS = {
    "name": "PatientName",
    "id": "PatientID",
    "birth_date": "PatientBirthDate",
    "accession_number": "AccessionNumber",
}
_DEFER_BYTES = 256 * 1024  # large values (pixel data) stay on disk while the header is checked


@dataclass(frozen=True)
class Received:
    """An instance to store: `path` holds it as it will be kept (de-identified when that is on)."""

    part: int
    path: Path
    sop_class_uid: str  # as the client sent it (for the store response)
    sop_instance_uid: str  # as the client sent it
    stored_sop_instance_uid: str  # as kept (a replacement when de-identified)
    facts: SeriesFacts
    deid: DeidOutcome | None = None


@dataclass(frozen=True)
class Rejected:
    part: int
    reason: int
    detail: str
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


class _Refuse(Exception):
    def __init__(self, reason: int, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def inspect_part(part: StowPart, *, study_uid: str | None, deid_key: bytes | None) -> Received | Rejected:
    """Check `part` (see the module docstring); with `deid_key`, de-identify it next to the part file."""
    label = f"part {part.index}"
    sop_class = sop_instance = ""
    try:
        if part.media_type not in ("", DICOM):
            raise _Refuse(CANNOT_UNDERSTAND, f"{label} is {part.media_type}, not {DICOM}")
        ds = _read(part.path, label)
        sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
        sop_instance = str(ds.get("SOPInstanceUID", ""))
        _check(ds, label, study_uid)
        if deid_key is None:
            return Received(part.index, part.path, sop_class, sop_instance, sop_instance, _facts(ds))
        return _deidentified(part, sop_class, sop_instance, deid_key)
    except _Refuse as refusal:
        return Rejected(part.index, refusal.reason, refusal.detail, sop_class, sop_instance)


def _read(path: Path, label: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, defer_size=_DEFER_BYTES)
        except InvalidDicomError:
            raise _Refuse(
                CANNOT_UNDERSTAND, f"{label} is not a DICOM file (no PS3.10 preamble and 'DICM' prefix)"
            ) from None
        except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _Refuse(
                CANNOT_UNDERSTAND, f"{label} is truncated or damaged ({type(exc).__name__})"
            ) from None


def _check(ds: Dataset, label: str, study_uid: str | None) -> None:
    missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if not ds.get(k)]
    if missing:
        raise _Refuse(DATASET_MISMATCH, f"{label} lacks {', '.join(missing)}")
    if study_uid is not None and str(ds.StudyInstanceUID) != study_uid:
        raise _Refuse(DATASET_MISMATCH, f"{label} belongs to another study than the one in the URL")
    problem = why_not_an_image(ds)
    if problem is not None:
        raise _Refuse(SOP_CLASS_NOT_SUPPORTED, f"{label}: {problem}")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise _Refuse(SOP_CLASS_NOT_SUPPORTED, f"{label} is a colour image ({samples} samples per pixel)")
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            name = syntax.name if syntax.is_transfer_syntax else "an unknown transfer syntax"
            raise _Refuse(
                TRANSFER_SYNTAX_NOT_SUPPORTED,
                f"{label} is compressed as {name} ({syntax}), which no installed decoder reads",
            )
    elif "PixelData" in ds:
        _check_native_length(ds, label)


def _check_native_length(ds: Dataset, label: str) -> None:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = int(ds.Rows) * int(ds.Columns) * frames * int(ds.get("BitsAllocated", 16)) // 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            length = len(ds.PixelData)  # read from disk here (deferred), once
        except (EOFError, OSError, ValueError) as exc:
            raise _Refuse(
                CANNOT_UNDERSTAND, f"{label}: the pixel data cannot be read ({type(exc).__name__})"
            ) from None
    if length < expected:
        raise _Refuse(
            CANNOT_UNDERSTAND,
            f"{label} is truncated: its pixel data holds {length} bytes, {int(ds.Rows)}x{int(ds.Columns)} "
            f"x {frames} frame(s) need {expected}",
        )


def _facts(ds: Dataset, original: DeidOutcome | None = None) -> SeriesFacts:
    number = ds.get("SeriesNumber")
    try:
        series_number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        series_number = None
    patient = {}
    for name, keyword in _PATIENT_KEYWORDS.items():
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            patient[name] = value[:128]
    return SeriesFacts(
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        modality=str(ds.get("Modality", "") or ""),
        series_number=series_number,
        deidentified=original is not None,
        patient=patient,
        original_uids={}
        if original is None
        else {"study": original.original_study_uid, "series": original.original_series_uid},
    )


def _deidentified(part: StowPart, sop_class: str, sop_instance: str, key: bytes) -> Received:
    target = part.path.with_suffix(".deid.dcm")
    try:
        outcome = deidentify_file(part.path, target, key)
    except DeidentificationError as exc:
        raise _Refuse(PROCESSING_FAILURE, f"part {part.index} could not be de-identified: {exc}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(target, stop_before_pixels=True)
    part.path.unlink(missing_ok=True)  # the identified copy is not kept
    return Received(
        part.index, target, sop_class, sop_instance, str(ds.SOPInstanceUID), _facts(ds, outcome), outcome
    )
