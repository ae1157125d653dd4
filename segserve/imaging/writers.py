"""Atomic NIfTI writers for label maps and scans."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from segserve.imaging.volume import Volume

__all__ = ["write_labels_nifti", "write_volume_nifti"]

_NIFTI_INTENT_LABEL = 1002
#: sform/qform code when the grid did not come from a NIfTI header (DICOM/NRRD/MGZ world = scanner space).
_SCANNER_CODE = 1


def write_labels_nifti(labels: np.ndarray, like: Volume, path: Path) -> None:
    """Write the integer label map `labels` (shape == like.shape) to `path` (.nii.gz, or .nii) atomically.

    The file gets exactly like.shape and like.affine (stored as float32 in the sform, as NIfTI does); when
    like.header is a NIfTI header its sform/qform codes and matrices and xyzt units are kept, and its
    scaling, calibration range, description and extensions are dropped (a label map is never scaled;
    extensions may hold source-header copies). The data dtype is the labels' integer dtype (bool is written
    as uint8).
    Raises ValueError for a wrong shape or a non-integer dtype.
    """
    array = np.asarray(labels)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, not {array.dtype}")
    _check_shape(array, like)
    image = _make_image(array, like, intent_label=True)
    _atomic_save(image, Path(path))


def write_volume_nifti(volume: Volume, path: Path) -> None:
    """Write `volume` (array (I, J, K), its dtype kept; bool as uint8) to `path` (.nii.gz or .nii) atomically.

    Header handling as in `write_labels_nifti`; stored values are the array's values (no scaling).
    """
    array = np.asarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    _check_shape(array, volume)
    image = _make_image(array, volume, intent_label=False)
    _atomic_save(image, Path(path))


def _check_shape(array: np.ndarray, like: Volume) -> None:
    if array.shape != like.shape:
        raise ValueError(f"array shape {array.shape} does not match the volume shape {like.shape}")


def _make_image(array: np.ndarray, like: Volume, *, intent_label: bool) -> Any:
    affine = np.asarray(like.affine, dtype=np.float64)
    source = like.header
    if isinstance(source, nib.Nifti1Header):  # includes Nifti2Header
        header = source.copy()
        image_class: Any = nib.Nifti2Image if isinstance(source, nib.Nifti2Header) else nib.Nifti1Image
        sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
        if not np.allclose(header.get_best_affine(), affine, rtol=0, atol=1e-5):
            # The grid was changed after reading: store the new affine under the same codes.
            header.set_sform(affine, code=sform_code or qform_code or _SCANNER_CODE)
            header.set_qform(affine, code=qform_code)
        header.extensions.clear()
        header["descrip"] = b""
        header["aux_file"] = b""
    else:
        header = nib.Nifti1Header()
        image_class = nib.Nifti1Image
        header.set_sform(affine, code=_SCANNER_CODE)
        header.set_qform(affine, code=_SCANNER_CODE)
        header.set_xyzt_units(xyz="mm", t="sec")
    header.set_data_shape(array.shape)
    header.set_data_dtype(array.dtype)
    header.set_slope_inter(None, None)
    header["cal_min"] = 0
    header["cal_max"] = 0
    if intent_label:
        header.set_intent(_NIFTI_INTENT_LABEL)
    elif int(header["intent_code"]) == _NIFTI_INTENT_LABEL:
        header.set_intent(0)
    # affine=None: the header (with its codes) is the single source of the geometry.
    return image_class(array, None, header=header)


def _atomic_save(image: Any, path: Path) -> None:
    """Save to a temp file beside `path`, fsync, then os.replace: readers never see a partial file."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        suffix = ".nii.gz"
    elif name.endswith(".nii"):
        suffix = ".nii"
    else:
        raise ValueError(f"NIfTI output must end in .nii.gz or .nii, not {path.name!r}")
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        nib.save(image, tmp)
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
