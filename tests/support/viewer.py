"""Helpers of the viewer tests: label volumes over HTTP, keys, a DICOM series that carries known patient
data, and the folder screenshots are written to."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import nibabel as nib
import pydicom

from tests.support.paths import DATA, REPO
from tests.support.stack import Stack

# Screenshots of the browser tests: kept after the run (gitignored), or where SEGSERVE_TEST_ARTIFACTS says.
ARTIFACTS = Path(os.environ.get("SEGSERVE_TEST_ARTIFACTS") or REPO / "test-artifacts")

# Written into the DICOM headers of a test series; must never appear in anything the service shows.
PATIENT_NAME = "Doe^Jane^Quincy"
PATIENT_ID = "PID-4711-XYZ"
PATIENT_STRINGS = ("Quincy", "Doe^Jane", "PID-4711", "VS-SEG")  # "VS-SEG-001": the series' own patient


def nifti(content: bytes) -> nib.Nifti1Image:
    """A .nii.gz response body as an image."""
    return nib.Nifti1Image.from_bytes(gzip.decompress(content))


def create_key(stack: Stack, role: str) -> str:
    with stack.client() as c:
        resp = c.post("/v1/keys", json={"name": f"viewer {role}", "role": role})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["key"])


def dicom_parts_with_patient() -> list[tuple[str, tuple[str, bytes]]]:
    """The shared 3-slice MR series with PATIENT_NAME and PATIENT_ID written in, as multipart `image`
    parts (the model finds no structure on 3 slices, but the job succeeds)."""
    parts = []
    for path in sorted((DATA / "dicom" / "mr-3slice").glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        dataset.PatientName = PATIENT_NAME
        dataset.PatientID = PATIENT_ID
        buffer = io.BytesIO()
        dataset.save_as(buffer)
        parts.append(("image", (path.name, buffer.getvalue())))
    return parts


def assert_no_patient_data(text: str | bytes, where: str) -> None:
    for secret in PATIENT_STRINGS:
        found = secret.encode() in text if isinstance(text, bytes) else secret in text
        assert not found, f"patient data '{secret}' in {where}"
