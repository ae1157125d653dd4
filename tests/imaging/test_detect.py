"""Format detection by content, with the name only as a hint."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
from PIL import Image

from segserve.imaging.errors import UnsupportedFormat
from segserve.scans.readers import detect_format
from tests.imaging.conftest import shared


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("mri-brain/subject-a/ref18.nii.gz", "nifti"),
        ("ct/abdomen-totalseg/example_ct_sm.nii.gz", "nifti"),
        ("mri-brain/subject-a/norm.mgz", "mgz"),
        ("mri-lesion/brain-tumor/brain1_image.nrrd", "nrrd"),
        ("dicom/ct-3slice/01.dcm", "dicom"),
        ("dicom/mr-3slice/1-001.dcm", "dicom"),
    ],
)
def test_real_files(relative: str, expected: str) -> None:
    assert detect_format(shared(relative)) == expected


def test_content_wins_over_name(tmp_path: Path) -> None:
    misnamed = tmp_path / "scan.png"
    shutil.copy(shared("ct/abdomen-totalseg/example_ct_sm.nii.gz"), misnamed)
    assert detect_format(misnamed) == "nifti"
    mgz_no_ext = tmp_path / "upload"
    shutil.copy(shared("mri-brain/subject-a/norm.mgz"), mgz_no_ext)
    assert detect_format(mgz_no_ext) == "mgz"
    nrrd_as_dcm = tmp_path / "x.dcm"
    shutil.copy(shared("mri-lesion/brain-tumor/brain1_label.nrrd"), nrrd_as_dcm)
    assert detect_format(nrrd_as_dcm) == "nrrd"


def test_uncompressed_nifti_and_mgh(tmp_path: Path) -> None:
    nii = tmp_path / "scan.nii"
    nii.write_bytes(gzip.decompress(shared("ct/abdomen-totalseg/example_ct_sm.nii.gz").read_bytes()))
    assert detect_format(nii) == "nifti"
    mgh = tmp_path / "brain.mgh"
    mgh.write_bytes(gzip.decompress(shared("mri-brain/subject-a/norm.mgz").read_bytes()))
    assert detect_format(mgh) == "mgz"


def test_dicom_without_preamble(tmp_path: Path) -> None:
    data = shared("dicom/ct-3slice/01.dcm").read_bytes()
    assert data[128:132] == b"DICM"
    bare = tmp_path / "IM0001"  # no extension, no preamble, no "DICM"
    bare.write_bytes(data[132:])
    assert detect_format(bare) == "dicom"


def test_zip(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "series.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(shared("dicom/ct-3slice/01.dcm"), "a/01.dcm")
    assert detect_format(path) == "zip"


def _message(path: Path) -> str:
    with pytest.raises(UnsupportedFormat) as info:
        detect_format(path)
    message = str(info.value)
    assert "NIfTI" in message and "NRRD" in message and "DICOM" in message and "MGZ" in message
    assert info.value.code == "unsupported_format" and info.value.status == 415
    return message


def test_png_is_named(tmp_path: Path) -> None:
    path = tmp_path / "scan.nii.gz"  # a misleading name must not make it pass
    Image.new("L", (16, 16), 7).save(path, format="PNG")
    message = _message(path)
    assert "a PNG image" in message
    assert ".nii.gz" in message  # tells the client the name and the content disagree


def test_other_recognisable_kinds(tmp_path: Path) -> None:
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(jpeg, format="JPEG")
    assert "a JPEG image" in _message(jpeg)
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    assert "a PDF document" in _message(pdf)
    text = tmp_path / "notes.dcm"
    text.write_text("patient scan notes\nsecond line\n")
    assert "a text file" in _message(text)
    empty = tmp_path / "empty.nii"
    empty.write_bytes(b"")
    assert "an empty file" in _message(empty)
    tgz = tmp_path / "data.tar.gz"
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    tgz.write_bytes(gzip.compress(buf.getvalue()))
    assert "tar archive" in _message(tgz)


def test_unknown_binary(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 4)
    assert "unknown" in _message(path)
