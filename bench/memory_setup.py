"""Inputs and models for ``bench/memory.py`` made in its parent process (never imported by its child rows,
which may run with another checkout's code: ``--baseline``).

- :func:`write_series`: a NIfTI as a CT DICOM series (the ``seg`` row);
- :func:`write_label_pair`: a "prediction" and a "reference" label map of a scan (``evaluate``, ``seg``);
- :func:`install_totalseg`: TotalSegmentator's ``total`` task (1.5 mm, five part models with the real class
  counts) as stand-in weights (``tests/support/totalseg_standin.py``: tiny real nnU-Net v2 networks),
  pulled as ``segserve models pull`` installs it (from a ``file://`` release mirror), for the ``totalseg``
  row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TOTALSEG_CARD = "totalseg-total"


def threshold_labels(array: np.ndarray) -> np.ndarray:
    """uint8 labels from HU bands: 0 air (< -500), 1 fat (< -30), 2 soft tissue (< 200), 3 bone."""
    out = np.zeros(array.shape, dtype=np.uint8)
    for value, low in ((1, -500), (2, -30), (3, 200)):
        out[array >= low] = value
    return out


def write_label_pair(image: Path, prediction: Path, reference: Path, block: int = 4) -> None:
    """A "prediction" and a "reference" for the metrics: HU-band labels of the input taken on every
    ``block``-th voxel and repeated (regions with smooth borders, as a model's are, not the voxel noise of a
    threshold), and the same shifted by 2 voxels along each axis. uint8 NIfTI on the input's grid."""
    import nibabel as nib

    nifti: Any = nib.load(image)
    data = np.asarray(nifti.dataobj)
    coarse = threshold_labels(data[::block, ::block, ::block])
    index = np.ix_(*(np.arange(n) // block for n in data.shape))
    labels = coarse[index]
    del data
    nib.save(nib.Nifti1Image(labels, nifti.affine), prediction)
    shifted = np.zeros_like(labels)
    shifted[2:, 2:, 2:] = labels[:-2, :-2, :-2]
    nib.save(nib.Nifti1Image(shifted, nifti.affine), reference)


def install_totalseg(work: Path, card_id: str = TOTALSEG_CARD) -> list[str]:
    """The stand-in release of ``card_id`` written under ``work`` and pulled into ``work/models-totalseg``
    (with the install-time check, ``validate_staged``); returns the child's --models-dir/--model-id."""
    from models.totalseg import pull, tasks
    from models.totalseg.predictor import validate_staged
    from tests.support.totalseg_standin import write_release

    release = work / "totalseg-release"
    models_dir = work / "models-totalseg"
    write_release(tasks.task_card(card_id), release)
    pull.pull(card_id, models_dir, base=release.as_uri(), validate=validate_staged)
    return ["--models-dir", str(models_dir), "--model-id", card_id]


def write_series(image: Path, folder: Path) -> None:
    """The NIfTI ``image`` as a CT DICOM series, one int16 file per k slice, on a real CT slice's header
    (``dicom/ct-3slice/01.dcm``; fresh UIDs). Slice k holds ``volume[:, :, k].T`` (rows J, columns I)."""
    import copy

    import nibabel as nib
    import pydicom
    from pydicom.uid import generate_uid

    from tests.support.paths import DATA

    nifti: Any = nib.load(image)
    data = np.asarray(nifti.dataobj)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(nifti.affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_cos, col_cos = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    base = pydicom.dcmread(DATA / "dicom" / "ct-3slice" / "01.dcm")
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(data.shape[2]):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = int(data.shape[1]), int(data.shape[0])
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.ImageOrientationPatient = [float(v) for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T).astype(np.int16).tobytes()
        ds.save_as(folder / f"{k:04d}.dcm")
