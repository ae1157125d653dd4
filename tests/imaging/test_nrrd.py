"""NRRD reading (pynrrd) with the NRRD space converted to RAS."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest

from segserve.imaging.errors import CorruptImage, NotVolumetric
from segserve.scans.readers import check_same_grid, read_image, read_labels
from tests.imaging.conftest import shared


def test_brain_tumor_affine_by_hand() -> None:
    path = shared("mri-lesion/brain-tumor/brain1_image.nrrd")
    header = nrrd.read_header(str(path))
    assert header["space"] == "left-posterior-superior"
    volume = read_image([path])
    assert volume.source_format == "nrrd"
    assert volume.shape == (256, 256, 25)
    assert volume.array.dtype == np.int16
    # space directions rows are the per-axis vectors in LPS; RAS flips x and y of each, and of the origin.
    d = np.asarray(header["space directions"], dtype=float)
    o = np.asarray(header["space origin"], dtype=float)
    expected = np.eye(4)
    for axis in range(3):
        expected[:3, axis] = [-d[axis][0], -d[axis][1], d[axis][2]]
    expected[:3, 3] = [-o[0], -o[1], o[2]]
    assert np.allclose(volume.affine, expected, atol=1e-9)
    # The same numbers written out, so a wrong convention in both places still fails.
    assert np.allclose(
        volume.affine,
        [[-0.78125, 0, 0, 99.609375], [0, 0.78125, 0, -99.609375], [0, 0, 6.5, -78.0], [0, 0, 0, 1]],
    )
    data, _ = nrrd.read(str(path), index_order="F")
    assert np.array_equal(volume.array, data)


def test_brain_tumor_label_shares_grid() -> None:
    image = read_image([shared("mri-lesion/brain-tumor/brain1_image.nrrd")])
    labels = read_labels([shared("mri-lesion/brain-tumor/brain1_label.nrrd")])
    check_same_grid(image, labels)
    assert labels.array.dtype == np.uint8  # stored as int32
    assert labels.meta["label_values"] == [0, 1]
    assert int(labels.array.sum()) > 100


def test_liver_seg_nrrd() -> None:
    volume = read_labels([shared("dicom/ct-3slice/liver_seg.nrrd")])
    assert volume.shape == (512, 512, 3)
    assert volume.array.dtype == np.uint8
    assert volume.affine[:3, 3] == pytest.approx([235.2, 226.8, -128.69])
    assert volume.spacing_mm == pytest.approx((0.810547, 0.810547, 1.0))


def _write(path: Path, data: np.ndarray, header: dict[str, object]) -> Path:
    nrrd.write(str(path), data, header, index_order="F")
    return path


def test_ras_space_is_kept(tmp_path: Path) -> None:
    directions = np.array([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    path = _write(
        tmp_path / "ras.nrrd",
        np.zeros((4, 5, 6), np.int16),
        {"space": "RAS", "space directions": directions, "space origin": np.array([1.0, 2.0, 3.0])},
    )
    volume = read_image([path])
    expected = np.eye(4)
    expected[:3, :3] = directions.T
    expected[:3, 3] = [1.0, 2.0, 3.0]
    assert np.allclose(volume.affine, expected)


def test_without_space_uses_spacings(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "plain.nrrd", np.ones((4, 5, 6), np.uint8), {"spacings": np.array([0.5, 0.7, 2.0])}
    )
    volume = read_image([path])
    assert np.allclose(volume.affine, np.diag([0.5, 0.7, 2.0, 1.0]))
    bare = _write(tmp_path / "bare.nrrd", np.ones((4, 5, 6), np.uint8), {})
    assert np.allclose(read_image([bare]).affine, np.eye(4))


def test_raw_encoding_and_2d(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = _write(tmp_path / "raw.nrrd", data, {"encoding": "raw"})
    assert np.array_equal(read_image([path]).array, data)
    flat = _write(tmp_path / "flat.nrrd", np.zeros((8, 9), np.uint8), {})
    with pytest.raises(NotVolumetric, match=r"2D image \(8x9\)"):
        read_image([flat])


@pytest.mark.parametrize("encoding", ["gzip", "raw"])
def test_truncated_is_corrupt(tmp_path: Path, encoding: str) -> None:
    data, header = nrrd.read(str(shared("mri-lesion/brain-tumor/brain1_image.nrrd")), index_order="F")
    header["encoding"] = encoding
    full = _write(tmp_path / "full.nrrd", data, header)
    cut = tmp_path / "cut.nrrd"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CorruptImage, match="truncated"):
        read_image([cut])
