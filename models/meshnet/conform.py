"""Resampling to and from the FreeSurfer "conformed" grid: 256³ voxels of 1 mm, LIA orientation.

Like ``mri_convert --conform``, the conformed grid is centred on the input's centre (the world position of
voxel ``shape / 2``), so the head stays in the middle of the field of view. The image is resampled with
trilinear interpolation; labels predicted on the conformed grid go back to the input's own grid with
nearest-neighbour, so they overlay the input exactly. An input that already is 256³ 1 mm LIA is passed
through untouched (no interpolation at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segserve.imaging.volume import Volume

CONFORMED_SHAPE: tuple[int, int, int] = (256, 256, 256)
_EXACT_IN_FLOAT32 = {np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.float32)}
# Columns are the world (RAS) directions of the voxel axes: i -> Left, j -> Inferior, k -> Anterior.
LIA_DIRECTIONS = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class ConformedImage:
    """An image on the conformed grid plus what is needed to map results back.

    Attributes:
        array: float32, shape (256, 256, 256), intensities as in the input (not normalised).
        affine: (4, 4) conformed voxel -> RAS mm.
        source_affine: (4, 4) the input's voxel -> RAS mm.
        source_shape: the input's (I, J, K).
        identity: True when the input already was conformed and ``array`` is the input itself.
    """

    array: np.ndarray
    affine: np.ndarray
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    identity: bool


def as_3d(array: np.ndarray) -> np.ndarray:
    """Drop trailing singleton axes; refuse anything that is not a single 3D volume."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume, got array of shape {array.shape}")
    return array


def is_conformed(affine: np.ndarray, shape: tuple[int, ...], atol: float = 1e-3) -> bool:
    """True when the grid is 256³ with 1 mm voxels along L, I, A (any translation)."""
    return tuple(shape[:3]) == CONFORMED_SHAPE and bool(
        np.allclose(np.asarray(affine, dtype=np.float64)[:3, :3], LIA_DIRECTIONS, atol=atol)
    )


def conformed_affine(source_affine: np.ndarray, source_shape: tuple[int, int, int]) -> np.ndarray:
    """The conformed grid's voxel -> RAS affine, centred where the source's centre voxel lies."""
    centre = np.asarray(source_affine, dtype=np.float64) @ np.array([*(np.array(source_shape) / 2.0), 1.0])
    affine = np.eye(4)
    affine[:3, :3] = LIA_DIRECTIONS
    affine[:3, 3] = centre[:3] - LIA_DIRECTIONS @ (np.array(CONFORMED_SHAPE) / 2.0)
    return affine


def conform(volume: Volume) -> ConformedImage:
    """Resample ``volume`` onto the conformed grid (trilinear, float32, 0 outside the input)."""
    source = as_3d(np.asanyarray(volume.array))
    shape = (int(source.shape[0]), int(source.shape[1]), int(source.shape[2]))
    source_affine = np.asarray(volume.affine, dtype=np.float64)
    if is_conformed(source_affine, shape):
        return ConformedImage(
            array=np.asarray(source, dtype=np.float32),
            affine=source_affine,
            source_affine=source_affine,
            source_shape=shape,
            identity=True,
        )
    target_affine = conformed_affine(source_affine, shape)
    # Maps a conformed voxel index to a source voxel index (what affine_transform wants: output -> input).
    mapping = np.linalg.inv(source_affine) @ target_affine
    # Types that float32 holds exactly (int16 for most CTs, uint8 MRIs, float32) go in as stored: scipy
    # interpolates in float64 whatever the input type and order 1 needs no spline prefilter, so the values
    # equal those from a float32 copy, without that whole-input copy (2 x a CT's bytes). Other types are
    # rounded to float32 first, as before, so their results do not change either.
    if source.dtype not in _EXACT_IN_FLOAT32:
        source = np.asarray(source, dtype=np.float32)
    resampled = ndimage.affine_transform(
        source,
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=CONFORMED_SHAPE,
        output=np.float32,
        order=1,
        mode="constant",
        cval=0.0,
    )
    return ConformedImage(
        array=resampled,
        affine=target_affine,
        source_affine=source_affine,
        source_shape=shape,
        identity=False,
    )


def labels_to_source(labels: np.ndarray, conformed: ConformedImage) -> np.ndarray:
    """Map a label volume on the conformed grid back onto the input grid (nearest neighbour).

    Args:
        labels: integer labels, shape (256, 256, 256), on ``conformed.affine``.
    Returns:
        labels of the same dtype, shape ``conformed.source_shape`` (Fortran order when resampled); 0 where
        the input lies outside the conformed field of view.
    """
    if conformed.identity:
        return labels
    mapping = np.linalg.inv(conformed.affine) @ conformed.source_affine
    # Fortran order, as NIfTI stores voxels: the result is written without a whole-volume transpose.
    out = np.empty(conformed.source_shape, dtype=labels.dtype, order="F")
    ndimage.affine_transform(
        labels,
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=conformed.source_shape,
        output=out,
        order=0,
        mode="constant",
        cval=0,
    )
    return out
