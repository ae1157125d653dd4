"""A DICOM job leaves a DICOM SEG of its result next to the NIfTI (`JobFiles.seg`), over the real stack.

The model is a brain-MRI model, and the shared 3-slice series are too thin for it: on both it finds no
structure (all background). So:
- the real CT 3-slice series: the job still succeeds, and its SEG lists every structure of the model as an
  empty segment and reads back as all background (if a future model finds something there, the SEG must
  equal the result instead);
- a 64-slice series made from a 64^3 block of subject-a's real T1, written as DICOM slices on the headers of
  the real CT (empty SpecificCharacterSet, private tags) and MR series (coronal slices whose normal runs
  against the block's K axis, so the reader reverses them): the model finds structures, and the SEG must
  read back with highdicom equal, voxel for voxel, to the NIfTI result.
"""

from __future__ import annotations

import copy
import io
import zipfile
from pathlib import Path
from typing import cast

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from segserve.scans.seg_export import read_dicom_volume_and_datasets, seg_result_path
from segserve.storage import JobFiles
from tests.support.paths import DATA
from tests.support.seg_compare import seg_to_labels
from tests.support.stack import Stack, wait_job
from tests.support.volumes import SUBJECT_A

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"


def _run_job(stack: Stack, files: list[tuple[str, tuple[str, bytes]]]) -> tuple[str, dict[int, str]]:
    with stack.client() as c:
        resp = c.post("/v1/jobs", data={"model": MODEL}, files=files)
        assert resp.status_code == 202, resp.text
        done = wait_job(c, resp.json()["id"])
        assert done["status"] == "succeeded", done
        card = c.get(f"/v1/models/{MODEL}").json()
    return str(done["id"]), {int(k): str(v) for k, v in card["labels"].items()}


def _check_seg_equals_result(stack: Stack, job_id: str, slices: list[Path], names: dict[int, str]) -> int:
    """Assert the job's SEG reads back equal to its NIfTI result; returns the number of segments."""
    files = JobFiles(stack.tmp / "data" / "jobs", job_id)
    result = cast(nib.Nifti1Image, nib.load(str(files.labels)))
    labels = np.asarray(result.dataobj)
    volume, datasets = read_dicom_volume_and_datasets(slices)
    np.testing.assert_allclose(result.affine, volume.affine, atol=1e-3)  # the NIfTI is on the series' grid
    present = sorted(int(v) for v in np.unique(labels) if v > 0)
    with stack.client() as c:
        resp = c.get(f"/v1/jobs/{job_id}/result", params={"format": "dicom-seg"})
    assert seg_result_path(files.seg) == files.seg
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(resp.content))  # what the API serves
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
    # nothing found: every structure the model looks for, as an empty segment
    segments = present or sorted(v for v in names if v > 0)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [names[v] for v in segments]
    back = seg_to_labels(seg, [str(ds.SOPInstanceUID) for ds in datasets], names)
    np.testing.assert_array_equal(back, labels)
    return len(present)


def brain_block_as_dicom(template: Path, out_dir: Path, size: int = 64) -> list[Path]:
    """Write the middle `size`^3 block of subject-a's T1 (LIA) as `size` DICOM slices on `template`'s header.

    Slice k holds block[:, :, k].T (rows = J = inferior, columns = I = left), at the world position of voxel
    (0, 0, k); row cosine = I's direction, column cosine = J's, both in LPS. Fresh UIDs; patient and private
    attributes are kept from the template.
    """
    image = cast(nib.MGHImage, nib.load(str(SUBJECT_A / "norm.mgz")))
    start = np.array([128 - size // 2] * 3)
    block = np.asarray(image.dataobj)[tuple(slice(int(s), int(s) + size) for s in start)].astype(np.uint16)
    affine = np.asarray(image.affine, dtype=np.float64).copy()
    affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_cos, col_cos = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    base = pydicom.dcmread(template)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(size):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = size, size
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.ImageOrientationPatient = [float(v) for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(block[:, :, k].T).tobytes()
        path = out_dir / f"{k:03d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def test_t1_block_on_mr_headers_as_zip_gets_a_seg_equal_to_the_result(stack: Stack, tmp_path: Path) -> None:
    slices = brain_block_as_dicom(DATA / "dicom" / "mr-3slice" / "1-001.dcm", tmp_path / "mr")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for s in slices:
            zf.write(s, f"series/{s.name}")
    job_id, names = _run_job(stack, [("image", ("s.zip", archive.getvalue()))])
    assert _check_seg_equals_result(stack, job_id, slices, names) > 0
    logs = "\n".join(p.log_path.read_text(errors="replace") for p in [stack.api, *stack.workers] if p)
    assert "VS-SEG-001" not in logs  # no patient ID in the logs, and no source UID (highdicom logs them)
    assert str(pydicom.dcmread(slices[0], stop_before_pixels=True).SOPInstanceUID) not in logs


def test_t1_block_on_ct_headers_as_parts_gets_a_seg_equal_to_the_result(stack: Stack, tmp_path: Path) -> None:
    slices = brain_block_as_dicom(DATA / "dicom" / "ct-3slice" / "01.dcm", tmp_path / "ct")
    assert pydicom.dcmread(slices[0]).SpecificCharacterSet == ""  # the scanner quirk travels along
    job_id, names = _run_job(stack, [("image", (s.name, s.read_bytes())) for s in slices])
    assert _check_seg_equals_result(stack, job_id, slices, names) > 0


def test_seg_of_a_nifti_job_is_refused_by_name(stack: Stack, tmp_path: Path) -> None:
    from tests.support.volumes import brain_crop

    image, _ = brain_crop(tmp_path, size=32)
    with stack.client() as c:
        job = c.post("/v1/jobs", data={"model": MODEL}, files={"image": image.open("rb")}).json()
        wait_job(c, job["id"])
        resp = c.get(f"/v1/jobs/{job['id']}/result", params={"format": "dicom-seg"})
    assert resp.status_code == 422 and "DICOM input" in resp.json()["detail"]


def test_real_ct_3slice_gets_a_seg_equal_to_its_result(stack: Stack) -> None:
    slices = sorted((DATA / "dicom" / "ct-3slice").glob("0*.dcm"))  # empty SpecificCharacterSet
    job_id, names = _run_job(stack, [("image", (s.name, s.read_bytes())) for s in reversed(slices)])
    _check_seg_equals_result(stack, job_id, slices, names)


def test_a_series_with_blanked_uids_runs_and_its_seg_refusal_says_why(stack: Stack, tmp_path: Path) -> None:
    """Public anonymised series often have empty SOP Instance, Study, Series and SOP Class UIDs (file meta
    intact): the job runs, and asking for its SEG names the blank UIDs instead of a slice-count mismatch."""
    slices = brain_block_as_dicom(DATA / "dicom" / "mr-3slice" / "1-001.dcm", tmp_path / "mr", size=32)
    for path in slices:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.StudyInstanceUID = ds.SeriesInstanceUID = ds.SOPClassUID = ""
        ds.save_as(path)
    job_id, _ = _run_job(stack, [("image", (s.name, s.read_bytes())) for s in slices])
    with stack.client() as c:
        resp = c.get(f"/v1/jobs/{job_id}/result", params={"format": "dicom-seg"})
        assert c.get(f"/v1/jobs/{job_id}/result").status_code == 200  # the NIfTI result is there
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    detail = resp.json()["detail"]
    assert "32 of the series' 32 images have no SOP Instance UID" in detail, detail
