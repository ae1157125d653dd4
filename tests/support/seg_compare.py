"""Helpers to compare label volumes across grids and to read DICOM SEGs back (tests only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest


def place_on_grid(
    src: np.ndarray, src_affine: np.ndarray, dst_shape: tuple[int, ...], dst_affine: np.ndarray
) -> np.ndarray:
    """Put the voxels of `src` (voxel -> world `src_affine`) onto the grid (`dst_shape`, `dst_affine`).

    Both grids must share voxel centres: the index map inv(dst_affine) @ src_affine must be a signed axis
    permutation with an integral shift (asserted), so no interpolation is involved. Non-zero `src` voxels
    falling outside the destination grid fail the assertion; destination voxels not covered stay 0.
    """
    index_map = np.linalg.inv(dst_affine) @ src_affine
    rotation, shift = np.round(index_map[:3, :3]), np.round(index_map[:3, 3])
    np.testing.assert_allclose(index_map[:3, :3], rotation, atol=1e-3, err_msg="grids are not aligned")
    np.testing.assert_allclose(index_map[:3, 3], shift, atol=2e-2, err_msg="grids are shifted by a fraction")
    idx = np.indices(src.shape).reshape(3, -1)
    dst_idx = (rotation @ idx + shift[:, None]).astype(np.int64)
    inside = np.all((dst_idx >= 0) & (dst_idx < np.array(dst_shape)[:, None]), axis=0)
    values = src.reshape(-1)
    assert not values[~inside].any(), "labelled voxels fall outside the destination grid"
    out = np.zeros(dst_shape, dtype=src.dtype)
    out[tuple(dst_idx[:, inside])] = values[inside]
    return out


def value_by_segment_number(seg: hd.seg.Segmentation, names: Mapping[int, str]) -> dict[int, int]:
    """Segment number -> model label value, through the segment labels (structure names)."""
    value_of = {name: value for value, name in names.items()}
    return {int(s.SegmentNumber): value_of[str(s.SegmentLabel)] for s in seg.SegmentSequence}


def seg_to_labels(
    seg: hd.seg.Segmentation, source_uids: Sequence[str], names: Mapping[int, str]
) -> np.ndarray:
    """Read `seg` back as an (I, J, K) label volume over the sources (slice k = `source_uids[k]`)."""
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(source_uids), combine_segments=True, relabel=False
    )  # (K, rows, columns) of segment numbers
    lut = np.zeros(int(max(value_by_segment_number(seg, names), default=0)) + 1, dtype=np.uint16)
    for number, value in value_by_segment_number(seg, names).items():
        lut[number] = value
    return np.transpose(lut[frames], (2, 1, 0))


def dcmqi_binary() -> str:
    """The `segimage2itkimage` command; skips (fails under CI) when it is not installed."""
    found = shutil.which("segimage2itkimage") or str(Path(sys.executable).parent / "segimage2itkimage")
    if not Path(found).is_file():
        message = "dcmqi's segimage2itkimage is not installed (pip install 'dcmqi>=1.5.7', the test extra)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def dcmqi_read(seg_path: Path, out_dir: Path, names: Mapping[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a SEG with dcmqi (merged label map, NIfTI) -> (array of model label values, RAS affine)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [dcmqi_binary(), "--inputDICOM", str(seg_path), "--outputDirectory", str(out_dir)]
    run = subprocess.run(
        [*cmd, "-t", "nifti", "--mergeSegments", "-p", "seg"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    images = sorted(out_dir.glob("seg-*.nii.gz"))
    assert len(images) == 1, f"dcmqi wrote {images} (overlapping segments?)"
    meta = json.loads((out_dir / "seg-meta.json").read_text())
    value_of = {name: value for value, name in names.items()}
    lut: dict[int, int] = {}
    for group in meta["segmentAttributes"]:
        for attrs in group:
            lut[int(attrs["labelID"])] = value_of[attrs["SegmentLabel"]]
    image = cast(nib.Nifti1Image, nib.load(str(images[0])))
    raw = np.asarray(image.dataobj)
    out = np.zeros(raw.shape, dtype=np.uint16)
    for number, value in lut.items():
        out[raw == number] = value
    assert not np.any(raw[out == 0]), "dcmqi output holds segment numbers that the metadata does not name"
    return out, np.asarray(image.affine, dtype=np.float64)
