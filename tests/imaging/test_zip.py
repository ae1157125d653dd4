"""Zip uploads: one series in sub-folders, junk and DICOMDIR skipped, caps against zip bombs, no zip-slip."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from segserve.imaging.errors import ArchiveTooLarge, CorruptImage, InvalidSeries, UnsupportedFormat
from segserve.scans.archive import read_zip
from segserve.scans.readers import read_image, read_single_volume
from tests.imaging.conftest import shared


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _dicomdir() -> bytes:
    path = get_testdata_file("DICOMDIR", download=False)
    if path is None:
        pytest.skip("pydicom's DICOMDIR test file is not bundled")
    return Path(str(path)).read_bytes()


def test_series_in_subfolders_with_junk(ct3: list[Path], tmp_path: Path) -> None:
    members = {f"STUDY/SERIES/IM{n}": p.read_bytes() for n, p in enumerate(reversed(ct3))}
    members["DICOMDIR"] = _dicomdir()
    members["README.txt"] = b"exported by a viewer\n"
    members["__MACOSX/STUDY/._IM0"] = b"\x00\x05\x16\x07junk"
    members["STUDY/.DS_Store"] = b"\x00\x00\x00\x01Bud1"
    archive = _zip(tmp_path / "upload.zip", members)
    volume = read_image([archive])
    direct = read_image(ct3)
    assert np.array_equal(volume.array, direct.array)
    assert np.array_equal(volume.affine, direct.affine)
    assert volume.meta["sop_instance_uids"] == direct.meta["sop_instance_uids"]
    assert volume.meta["skipped_objects"] == {"DICOMDIR": 1}


def test_two_series_in_a_zip(ct3: list[Path], mr3: list[Path], tmp_path: Path) -> None:
    members = {f"a/{p.name}": p.read_bytes() for p in ct3} | {f"b/{p.name}": p.read_bytes() for p in mr3}
    with pytest.raises(InvalidSeries, match="2 DICOM series"):
        read_image([_zip(tmp_path / "two.zip", members)])


def test_single_volume_in_a_zip(tmp_path: Path) -> None:
    nifti = shared("ct/abdomen-totalseg/example_ct_sm.nii.gz")
    archive = _zip(tmp_path / "vol.zip", {"../../escape.nii.gz": nifti.read_bytes(), "notes.txt": b"hello\n"})
    volume = read_image([archive])
    assert volume.source_format == "nifti"
    assert np.array_equal(volume.array, read_image([nifti]).array)
    # Never extracted under the member's own name (zip-slip).
    for folder in (tmp_path, tmp_path.parent, tmp_path.parent.parent, Path.cwd()):
        assert not (folder / "escape.nii.gz").exists()


def test_zip_slip_names_for_dicom(ct3: list[Path], tmp_path: Path) -> None:
    members = {f"../../../evil{n}.dcm": p.read_bytes() for n, p in enumerate(ct3)}
    members["/abs/path.dcm"] = b"not dicom text"
    volume = read_image([_zip(tmp_path / "slip.zip", members)])
    assert volume.shape == (512, 512, 3)
    for folder in (tmp_path.parent, tmp_path.parent.parent, Path.cwd()):
        assert not (folder / "evil0.dcm").exists()


def test_several_volumes_refused(tmp_path: Path) -> None:
    data = shared("ct/abdomen-totalseg/example_ct_sm.nii.gz").read_bytes()
    with pytest.raises(InvalidSeries, match="2 volume files"):
        read_image([_zip(tmp_path / "v.zip", {"a.nii.gz": data, "b.nii.gz": data})])


def test_zip_bomb_caps(tmp_path: Path) -> None:
    bomb = _zip(tmp_path / "bomb.zip", {"zeros.dcm": b"\x00" * (8 * 1024 * 1024)})
    assert bomb.stat().st_size < 100_000  # highly compressed
    with pytest.raises(ArchiveTooLarge, match="unpacks to") as info:
        read_zip(bomb, read_single_volume, max_total_bytes=1024 * 1024)
    assert info.value.status == 413
    many = _zip(tmp_path / "many.zip", {f"f{n}.txt": b"x" for n in range(5)})
    with pytest.raises(ArchiveTooLarge, match="5 entries"):
        read_zip(many, read_single_volume, max_entries=4)


def test_truncated_zip_is_corrupt(ct3: list[Path], tmp_path: Path) -> None:
    full = _zip(tmp_path / "full.zip", {p.name: p.read_bytes() for p in ct3})
    cut = tmp_path / "cut.zip"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CorruptImage, match="zip archive is damaged"):
        read_image([cut])


def test_damaged_member_is_corrupt(ct3: list[Path], tmp_path: Path) -> None:
    full = _zip(
        tmp_path / "stored.zip", {p.name: p.read_bytes() for p in ct3}, compression=zipfile.ZIP_STORED
    )
    data = bytearray(full.read_bytes())
    middle = 200_000  # inside the first member's pixel data
    data[middle : middle + 64] = bytes(64)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptImage, match="cannot be decompressed"):  # CRC check
        read_image([bad])


def test_zip_with_nothing_usable(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormat, match=r"\(found: 2 x a text file\)$"):
        members = {"a.txt": b"hello\n", "b/c.txt": b"world\n", "__MACOSX/b/._c.txt": b"\x00\x05\x16\x07\x00"}
        read_image([_zip(tmp_path / "t.zip", members)])  # the AppleDouble junk is not even counted
    with pytest.raises(InvalidSeries, match=r"no DICOM image slices.*DICOMDIR"):
        read_image([_zip(tmp_path / "d.zip", {"DICOMDIR": _dicomdir()})])
