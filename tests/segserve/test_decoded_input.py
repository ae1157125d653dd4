"""The decoded form of an input (segserve.scans.decoded): what `load_decoded` maps is what the reader gave,
voxel for voxel, with the same grid, header and meta; an uncompressed upload is referenced, not copied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segserve.imaging.volume import Volume
from segserve.scans.decoded import DECODED_DIR, decoded_bytes, load_decoded, save_decoded
from segserve.scans.readers import read_image, read_labels
from tests.support.paths import DATA, require_shared


def _same(kept: Volume | None, read: Volume) -> None:
    assert kept is not None
    assert kept.array.dtype == read.array.dtype and kept.shape == read.shape
    np.testing.assert_array_equal(np.asarray(kept.array), np.asarray(read.array))
    np.testing.assert_array_equal(kept.affine, read.affine)
    assert kept.source_format == read.source_format
    assert kept.meta == json.loads(json.dumps(read.meta))


def _nifti(path: Path, array: np.ndarray, endian: str = "<") -> Volume:
    image = nib.Nifti1Image(array, np.diag([1.2, 0.9, 2.0, 1.0]))
    image.header.set_qform(image.affine, code=1)
    image.header.set_sform(image.affine, code=2)
    if endian == ">":
        image = nib.Nifti1Image(array, None, header=image.header.as_byteswapped(">"))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return read_image([path])


@pytest.mark.parametrize("name", ["0000.nii.gz", "0000.nii", "0000.mgz"])
def test_round_trip_keeps_voxels_grid_and_header(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 3000, (21, 17, 9)).astype(np.int16)
    path = tmp_path / "image" / name
    if name.endswith(".mgz"):
        path.parent.mkdir(parents=True)
        nib.save(nib.MGHImage(array, np.diag([1.0, 1.0, 1.5, 1.0])), path)
        read = read_image([path])
    else:
        read = _nifti(path, array)
    save_decoded(read, tmp_path, "image")
    kept = load_decoded(tmp_path, "image")
    _same(kept, read)
    assert kept is not None
    if name.endswith(".mgz"):
        assert kept.header is None
    else:
        assert isinstance(kept.header, nib.Nifti1Header)
        assert int(kept.header["sform_code"]) == 2 and int(kept.header["qform_code"]) == 1
        assert kept.header.get_zooms()[:3] == read.header.get_zooms()[:3]
    assert not [p for p in (tmp_path / DECODED_DIR).iterdir() if p.name.startswith(".")]  # no temp files


def test_uncompressed_nifti_is_referenced_not_copied(tmp_path: Path) -> None:
    array = np.arange(24 * 20 * 16, dtype=np.float32).reshape(24, 20, 16)
    read = _nifti(tmp_path / "image" / "0000.nii", array)
    assert decoded_bytes(read, tmp_path) == 0
    save_decoded(read, tmp_path, "image")
    record = json.loads((tmp_path / DECODED_DIR / "image.json").read_text())
    assert record["file"] == "image/0000.nii" and record["offset"] == 352
    assert not list((tmp_path / DECODED_DIR).glob("*.npy"))
    _same(load_decoded(tmp_path, "image"), read)


def test_compressed_and_byteswapped_inputs_are_copied(tmp_path: Path) -> None:
    array = np.arange(10 * 11 * 12, dtype=np.int16).reshape(10, 11, 12)
    for name, endian in (("a.nii.gz", "<"), ("b.nii", ">")):
        read = _nifti(tmp_path / "image" / name, array, endian)
        assert decoded_bytes(read, tmp_path) == array.nbytes
        save_decoded(read, tmp_path, name[0])
        kept = load_decoded(tmp_path, name[0])
        _same(kept, read)
        assert json.loads((tmp_path / DECODED_DIR / f"{name[0]}.json").read_text())["file"].endswith(".npy")


def test_mapped_voxels_are_copy_on_write(tmp_path: Path) -> None:
    read = _nifti(tmp_path / "image" / "0000.nii", np.ones((8, 9, 10), dtype=np.int16))
    save_decoded(read, tmp_path, "image")
    kept = load_decoded(tmp_path, "image")
    assert kept is not None
    kept.array[0, 0, 0] = 7  # a predictor may work in place: the stored upload must not change
    assert int(np.asarray(read_image([tmp_path / "image" / "0000.nii"]).array)[0, 0, 0]) == 1


def test_dicom_series_and_labels_keep_their_meta(tmp_path: Path) -> None:
    require_shared()
    series = tmp_path / "image"
    shutil.copytree(DATA / "dicom" / "mr-3slice", series)
    read = read_image(sorted(series.iterdir()))
    save_decoded(read, tmp_path, "image")
    kept = load_decoded(tmp_path, "image")
    _same(kept, read)
    assert kept is not None and kept.meta["sop_instance_uids"] == read.meta["sop_instance_uids"]

    labels = np.zeros(read.shape, dtype=np.float32)
    labels[1:3, 2:5, 1] = 4
    reference = _nifti(tmp_path / "reference" / "0000.nii.gz", labels)
    as_labels = read_labels([tmp_path / "reference" / "0000.nii.gz"])
    save_decoded(as_labels, tmp_path, "reference")
    kept_labels = load_decoded(tmp_path, "reference")
    _same(kept_labels, as_labels)
    assert kept_labels is not None and kept_labels.meta["label_values"] == [0, 4]
    assert reference.array.dtype == np.float32 and kept_labels.array.dtype == np.uint8


def test_no_decoded_form_answers_none(tmp_path: Path) -> None:
    assert load_decoded(tmp_path, "image") is None
