"""NIfTI writers: exact grid and header codes, dtype, atomic replace with no temp files left."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segserve.imaging import writers
from segserve.imaging.volume import Volume
from segserve.imaging.writers import write_labels_nifti, write_volume_nifti
from segserve.scans.readers import read_image, read_labels
from tests.imaging.conftest import shared


def test_labels_round_trip_keeps_grid_and_codes(tmp_path: Path) -> None:
    like = read_image([shared("mri-brain/subject-a/ref18.nii.gz")])
    labels = read_labels([shared("mri-brain/subject-a/ref18.nii.gz")]).array
    out = tmp_path / "labels.nii.gz"
    write_labels_nifti(labels, like, out)
    assert os.listdir(tmp_path) == ["labels.nii.gz"]
    written = nib.load(out)
    assert written.shape == like.shape
    assert np.array_equal(written.affine, like.affine)
    assert int(written.header["sform_code"]) == int(like.header["sform_code"])
    assert int(written.header["qform_code"]) == int(like.header["qform_code"])
    assert written.header.get_xyzt_units() == like.header.get_xyzt_units()
    assert written.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(written.dataobj), labels)
    assert int(written.header["intent_code"]) == 1002  # NIFTI_INTENT_LABEL


def test_codes_and_units_are_kept_exactly(tmp_path: Path) -> None:
    affine = np.array([[0.9, 0.1, 0, -90.5], [-0.1, 0.9, 0, 100.25], [0, 0, 2.5, -60.0], [0, 0, 0, 1]])
    source = nib.Nifti1Image(np.zeros((6, 7, 8), np.int16), affine)
    source.header.set_sform(affine, code=4)  # MNI
    source.header.set_qform(affine, code=1)  # scanner
    source.header.set_xyzt_units(xyz="mm", t="msec")
    source.header.set_slope_inter(2.0, -5.0)  # a scan's scaling must not leak onto labels
    path = tmp_path / "scan.nii.gz"
    nib.save(source, path)
    like = read_image([path])
    labels = np.zeros((6, 7, 8), np.uint16)
    labels[1, 2, 3] = 300
    out = tmp_path / "seg.nii.gz"
    write_labels_nifti(labels, like, out)
    written = nib.load(out)
    assert (int(written.header["sform_code"]), int(written.header["qform_code"])) == (4, 1)
    assert written.header.get_xyzt_units() == ("mm", "msec")
    assert np.array_equal(written.affine, like.affine)
    assert np.array_equal(written.header.get_sform(), nib.load(path).header.get_sform())
    assert written.get_data_dtype() == np.uint16
    data = np.asanyarray(written.dataobj)
    assert data.dtype == np.uint16 and np.array_equal(data, labels)


def test_labels_on_a_dicom_grid(ct3: list[Path], tmp_path: Path) -> None:
    like = read_image(ct3)
    labels = np.zeros(like.shape, np.uint8)
    labels[10, 20, 2] = 5
    out = tmp_path / "seg.nii.gz"
    write_labels_nifti(labels, like, out)
    written = nib.load(out)
    assert written.shape == (512, 512, 3)
    assert np.array_equal(written.affine, like.affine.astype(np.float32).astype(np.float64))
    assert int(written.header["sform_code"]) == 1
    assert written.header.get_xyzt_units()[0] == "mm"
    # voxel (10, 20, 2) must be where the DICOM grid puts it
    assert np.asanyarray(written.dataobj)[10, 20, 2] == 5


def test_volume_round_trip_keeps_dtype(tmp_path: Path) -> None:
    for relative in ("ct/abdomen-totalseg/example_ct_sm.nii.gz", "mri-brain/subject-a/norm.mgz"):
        volume = read_image([shared(relative)])
        out = tmp_path / "scan.nii.gz"
        write_volume_nifti(volume, out)
        again = read_image([out])
        assert again.array.dtype == volume.array.dtype
        assert np.array_equal(again.array, volume.array)
        assert np.allclose(again.affine, volume.affine, atol=1e-5)


def test_scaled_float_volume_is_written_unscaled(tmp_path: Path) -> None:
    source = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.eye(4))
    source.header.set_slope_inter(0.5, 3.0)
    nib.save(source, tmp_path / "s.nii.gz")
    volume = read_image([tmp_path / "s.nii.gz"])
    assert volume.array.dtype == np.float32
    write_volume_nifti(volume, tmp_path / "out.nii.gz")
    again = read_image([tmp_path / "out.nii.gz"])
    assert again.array.dtype == np.float32
    assert np.array_equal(again.array, volume.array)


def test_bad_labels_are_refused(tmp_path: Path) -> None:
    like = Volume(array=np.zeros((3, 4, 5), np.int16), affine=np.eye(4), source_format="nrrd")
    with pytest.raises(ValueError, match="integer dtype"):
        write_labels_nifti(np.zeros((3, 4, 5), np.float32), like, tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match="shape"):
        write_labels_nifti(np.zeros((3, 4, 6), np.uint8), like, tmp_path / "x.nii.gz")
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    like = Volume(array=np.zeros((3, 4, 5), np.int16), affine=np.eye(4), source_format="nrrd")
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"previous result")

    def broken_save(image: object, filename: Path) -> None:
        Path(filename).write_bytes(b"half a file")  # a partial write, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(writers.nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_labels_nifti(np.ones((3, 4, 5), np.uint8), like, out)
    assert out.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["seg.nii.gz"]


def test_write_goes_through_a_temp_file_in_the_same_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    like = Volume(array=np.zeros((3, 4, 5), np.int16), affine=np.eye(4), source_format="nrrd")
    out = tmp_path / "seg.nii.gz"
    seen: list[tuple[str, str, bool]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append((str(Path(src).parent), Path(src).name, Path(dst).exists()))
        real_replace(src, dst)

    monkeypatch.setattr(writers.os, "replace", spy)
    write_labels_nifti(np.ones((3, 4, 5), np.uint8), like, out)
    assert len(seen) == 1
    folder, name, target_existed = seen[0]
    assert folder == str(tmp_path) and name != "seg.nii.gz" and not target_existed
    assert os.listdir(tmp_path) == ["seg.nii.gz"]
    assert np.asanyarray(nib.load(out).dataobj).sum() == 60
