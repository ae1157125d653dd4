"""Test series for DICOMweb intake, built from the real CT slices in ../shared (never written to the repo),
a plain multipart/related encoder for requests that dicomweb-client would not send, and an API-only stack
for tests that check what the API stores (no worker)."""

from __future__ import annotations

import copy
import io
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, generate_uid

from models.testing.make_bundle import write_unet_bundle
from tests.conftest import redis_db
from tests.support.paths import DATA, require_shared
from tests.support.stack import Stack

CT_3SLICE = DATA / "dicom" / "ct-3slice"


def ct_series(
    *,
    compress: bool = True,
    patient_name: str = "DOE^JANE",
    patient_id: str = "PID-STOW-4711",
    tilt_mm_per_slice: float = 0.0,
) -> list[Dataset]:
    """The three real 512x512 CT slices (1 mm apart) as a series of its own: fresh Study, Series, Frame of
    Reference and SOP Instance UIDs, the given patient name and ID, pixel data JPEG 2000 lossless (pydicom
    + pylibjpeg-openjpeg) unless `compress` is False. `tilt_mm_per_slice` shifts each slice sideways (a
    gantry tilt the reader refuses)."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k, path in enumerate(sorted(CT_3SLICE.glob("0*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID = patient_name, patient_id
        if tilt_mm_per_slice:
            position = [float(v) for v in ds.ImagePositionPatient]
            position[1] += k * tilt_mm_per_slice
            ds.ImagePositionPatient = position
        if compress:
            ds.compress(JPEG2000Lossless)
        out.append(ds)
    return out


def without_pixels(ds: Dataset) -> Dataset:
    """A copy of `ds` without pixel data (and without its image attributes): a non-image object."""
    out = copy.deepcopy(ds)
    for keyword in ("PixelData", "Rows", "Columns", "ImagePositionPatient"):
        if keyword in out:
            delattr(out, keyword)
    out.SOPInstanceUID = out.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out.Modality = "SR"
    return out


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def related_body(
    parts: Sequence[bytes | tuple[bytes, str | None]], declared_type: str | None = "application/dicom"
) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/related request; a part is bytes (application/dicom) or
    (bytes, part media type or None for no Content-Type header)."""
    boundary = uuid.uuid4().hex
    chunks = []
    for part in parts:
        data, media = (part, "application/dicom") if isinstance(part, bytes) else part
        header = f"Content-Type: {media}\r\n" if media else ""
        chunks.append(f"--{boundary}\r\n{header}\r\n".encode() + data + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; boundary="{boundary}"'
    if declared_type is not None:
        content_type += f'; type="{declared_type}"'
    return body, content_type


@contextmanager
def api_only_stack(tmp: Path, env: Mapping[str, str], bundle_model: str) -> Iterator[Stack]:
    """uvicorn over SQLite in `tmp` with `env`, an admin key (`stack.admin_key`) and a small CT UNet bundle
    installed as `bundle_model`; no worker, so STOW-RS collections stay as the API stored them."""
    require_shared()
    stack = Stack(tmp, {"SEGSERVE_REDIS_URL": redis_db(10), **env})
    (tmp / "data").mkdir()
    stack.admin_key = json.loads(stack.cli("keys", "create", "--name", "a", "--role", "admin").stdout)["key"]
    stack.cli("models", "install", str(write_unet_bundle(tmp / "src" / bundle_model)))
    try:
        stack.start_api()
        yield stack
    finally:
        stack.stop()
