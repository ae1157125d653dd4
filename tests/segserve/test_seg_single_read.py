"""The worker decodes a DICOM series once per job: given the volume it already read, the SEG export reads
only the headers again. Shown by taking the pixel data away after the first read: the export still works
with the volume, and fails without it (it would have to decode the pixels a second time)."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from segserve.imaging.errors import ImageError
from segserve.imaging.volume import Volume
from segserve.imaging.writers import write_labels_nifti
from segserve.scans.readers import read_image
from segserve.scans.seg_export import export_job_seg
from tests.support.dicomweb import ct_series
from tests.support.paths import require_shared


class _Card:
    id, version, labels, colors = "m", "1", {0: "background", 1: "liver"}, {1: (200, 80, 60)}


def _saved_series(folder: Path) -> tuple[list[Path], Volume]:
    """The 3-slice real CT series saved as files in `folder`, and the volume read from them."""
    require_shared()
    paths = []
    for n, ds in enumerate(ct_series()):
        ds.save_as(folder / f"{n}.dcm")
        paths.append(folder / f"{n}.dcm")
    return paths, read_image(paths)


def test_export_with_the_read_volume_reads_headers_only(tmp_path: Path) -> None:
    paths, volume = _saved_series(tmp_path)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[200:300, 150:250, :] = 1
    write_labels_nifti(labels, volume, tmp_path / "labels.nii.gz")
    for path in paths:  # headers only from now on: a second decode cannot succeed
        pydicom.dcmread(path, stop_before_pixels=True).save_as(path)

    out = export_job_seg(paths, tmp_path / "labels.nii.gz", _Card(), tmp_path / "seg.dcm", volume)
    seg = hd.seg.segread(out)
    assert int(seg.NumberOfFrames) == 3 and seg.SegmentSequence[0].SegmentLabel == "liver"
    with pytest.raises(ImageError):
        export_job_seg(paths, tmp_path / "labels.nii.gz", _Card(), tmp_path / "again.dcm")


def test_export_with_the_written_labels_reads_only_the_nifti_header(tmp_path: Path) -> None:
    """Given the label array it wrote, the export takes the grid from the NIfTI's header and the voxels
    from the array: a label file whose voxel data is gone still exports, and the SEG holds those labels."""
    paths, volume = _saved_series(tmp_path)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[200:300, 150:250, 1:] = 1
    nifti = tmp_path / "labels.nii"
    write_labels_nifti(labels, volume, nifti)
    nifti.write_bytes(nifti.read_bytes()[:352])  # the header alone: reading the voxels cannot succeed

    out = export_job_seg(paths, nifti, _Card(), tmp_path / "seg.dcm", volume, labels)
    seg = hd.seg.segread(out)
    assert int(seg.NumberOfFrames) == 2  # the two slices that hold the structure
    with pytest.raises(Exception):  # noqa: B017 - nibabel's own error for the missing voxels
        export_job_seg(paths, nifti, _Card(), tmp_path / "again.dcm", volume)
