"""Our volumes as nnU-Net's SimpleITK reader would give them, and its label maps back on our grid.

nnU-Net reads images with SimpleITK (``SimpleITKIO``, named by ``plans.json["image_reader_writer"]``): the
array comes out in ITK's (z, y, x) order, the reverse of the file's voxel index order (i, j, k), with no
reorientation, and the spacing is reversed with it: ``properties["spacing"] = (dk, dj, di)``. A
:class:`~segserve.imaging.volume.Volume` keeps the file's own voxel order (I, J, K) (NIfTI/NRRD/MGZ as stored,
DICOM as column, row, slice), which is ITK's (x, y, z) for the same file, so nnU-Net's input is the array
transposed (2, 1, 0), and a predicted (z, y, x) label map transposed back is on the input's own grid.

Spacing: ITK takes a NIfTI's spacing from its ``pixdim`` (float32), so for NIfTI input we take the header's
zooms, bit for bit; for other sources the affine's column norms. ``sitk_stuff`` (spacing, origin and direction
in ITK's LPS convention) is filled as the reader fills it; nnU-Net itself only uses it to write files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segserve.imaging.volume import Volume

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def spacing_ijk(volume: Volume) -> tuple[float, float, float]:
    """Voxel size along I, J, K in mm as ITK reads it (NIfTI: the header's pixdim)."""
    header = volume.header
    if volume.source_format == "nifti" and header is not None and hasattr(header, "get_zooms"):
        zooms = header.get_zooms()
        if len(zooms) >= 3 and all(float(z) > 0 for z in zooms[:3]):
            return float(zooms[0]), float(zooms[1]), float(zooms[2])
    return volume.spacing_mm


def image_properties(volume: Volume) -> dict[str, Any]:
    """The properties dict ``SimpleITKIO.read_images`` returns for this volume."""
    spacing = spacing_ijk(volume)
    affine = np.asarray(volume.affine, dtype=np.float64)
    rotation = _RAS_TO_LPS @ affine[:3, :3] / np.asarray(spacing)
    origin = _RAS_TO_LPS @ affine[:3, 3]
    return {
        "sitk_stuff": {
            "spacing": spacing,
            "origin": tuple(float(v) for v in origin),
            "direction": tuple(float(v) for v in rotation.reshape(-1)),
        },
        "spacing": [abs(s) for s in spacing[::-1]],
    }


def nnunet_input(volumes: Sequence[Volume]) -> tuple[np.ndarray, dict[str, Any]]:
    """(C, z, y, x) C-contiguous image and its properties, as nnU-Net's reader would give them.

    The voxels keep their own type (one type for all channels: numpy's common type of theirs), not float32:
    nnU-Net's preprocessing starts with its own ``data.astype(np.float32)`` copy, which gives the same
    float32 values from int16 as from a float32 copy of ours, so a float32 copy here would only cost
    2 x an int16 input's bytes more at the peak. C-contiguous as a reader's array is, so that nnU-Net's
    statistics sum in the same order.

    Raises:
        ValueError: the volumes are not on one grid shape (the caller checks the full geometry).
    """
    shapes = {v.shape for v in volumes}
    if len(shapes) != 1:
        raise ValueError(f"all input channels must have one shape, got {sorted(shapes)}")
    arrays = [np.asarray(v.array) for v in volumes]
    dtype = np.result_type(*arrays) if arrays else np.dtype(np.float32)
    image = np.empty((len(volumes), *volumes[0].shape[::-1]), dtype=dtype)
    for index, array in enumerate(arrays):
        if array.ndim != 3:
            raise ValueError(f"input channel {index} must be 3D, got shape {array.shape}")
        image[index] = array.transpose(2, 1, 0)
    return image, image_properties(volumes[0])


def labels_to_volume_grid(labels_zyx: np.ndarray) -> np.ndarray:
    """nnU-Net's (z, y, x) label map as an (I, J, K) C-contiguous array on the input volume's grid."""
    return np.ascontiguousarray(np.asarray(labels_zyx).transpose(2, 1, 0))
