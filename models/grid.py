"""Moving an image onto a model's grid (orientation + voxel spacing) and its labels back.

Two steps, like MONAI's ``Orientationd`` then ``Spacingd``:
    1. reorient to the model's axis codes (e.g. "RAS"): only transposes and flips, a view, no copy;
    2. resample to the model's spacing (mm) when it differs by more than 0.1 %: trilinear, float32,
       border values replicated. The new grid keeps the axis directions and the centre of the field of
       view; its shape is ``round(shape * spacing / pixdim)``.
Labels go back by nearest neighbour onto the reoriented grid, then through the inverse transposes and
flips, so they lie exactly on the input's grid (same shape, same affine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations
from scipy import ndimage

from models.meshnet.conform import as_3d
from segserve.imaging.volume import Volume

_SPACING_RTOL = 1e-3


@dataclass(frozen=True)
class ModelGrid:
    """An image on the model's grid plus what is needed to map labels back.

    Attributes:
        array: shape (X, Y, Z) on the model grid: a view of the input when only reoriented (input
            dtype), else a float32 resampled copy.
        affine: (4, 4) model voxel -> RAS mm.
        reoriented_shape: the input's shape after reorientation, before resampling.
        to_model: orientation transform (nibabel ``ornt``) from the input's axes to the model's.
        source_shape: the input's (I, J, K).
        resampled: whether step 2 ran.
        scale: model voxel size / reoriented voxel size per axis (pixdim / spacing); 1 when not resampled.
    """

    array: np.ndarray
    affine: np.ndarray
    reoriented_shape: tuple[int, int, int]
    to_model: np.ndarray
    source_shape: tuple[int, int, int]
    resampled: bool
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def labels_to_source(self, labels: np.ndarray) -> np.ndarray:
        """Map integer labels of shape ``array.shape`` back onto the input grid (nearest neighbour)."""
        if labels.shape != self.array.shape:
            raise ValueError(f"labels have shape {labels.shape}, the model grid is {self.array.shape}")
        if self.resampled:
            # Reoriented voxel j lies at model index (m-1)/2 + (spacing / pixdim) * (j - (n-1)/2).
            model = np.array(self.array.shape, dtype=np.float64)
            reoriented = np.array(self.reoriented_shape, dtype=np.float64)
            scale = 1.0 / np.array(self.scale)
            offset = (model - 1) / 2.0 - scale * (reoriented - 1) / 2.0
            labels = ndimage.affine_transform(
                labels,
                scale,
                offset=offset,
                output_shape=self.reoriented_shape,
                output=labels.dtype,
                order=0,
                mode="nearest",
            )
        inverse = orientations.ornt_transform(_identity_ornt(), self.to_model)
        out = orientations.apply_orientation(labels, inverse)
        return np.ascontiguousarray(out)


def _identity_ornt() -> np.ndarray:
    return np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])


def to_model_grid(
    volume: Volume, axcodes: str | None, pixdim: tuple[float, float, float] | None
) -> ModelGrid:
    """Reorient ``volume`` to ``axcodes`` and resample it to ``pixdim`` mm (None: keep the input's).

    Raises:
        ValueError: the volume is not 3D, or its affine is singular.
    """
    source = as_3d(np.asanyarray(volume.array))
    shape = (int(source.shape[0]), int(source.shape[1]), int(source.shape[2]))
    affine = np.asarray(volume.affine, dtype=np.float64)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"the volume's affine is singular: {affine.tolist()}")
    if axcodes is None:
        to_model = _identity_ornt()
    else:
        to_model = orientations.ornt_transform(
            orientations.io_orientation(affine), orientations.axcodes2ornt(tuple(axcodes.upper()))
        )
    reoriented = orientations.apply_orientation(source, to_model)
    reoriented_affine = affine @ orientations.inv_ornt_aff(to_model, shape)
    reoriented_shape = (int(reoriented.shape[0]), int(reoriented.shape[1]), int(reoriented.shape[2]))
    spacing = np.linalg.norm(reoriented_affine[:3, :3], axis=0)
    if pixdim is None or np.allclose(spacing, pixdim, rtol=_SPACING_RTOL, atol=0):
        return ModelGrid(reoriented, reoriented_affine, reoriented_shape, to_model, shape, resampled=False)

    target = np.array(pixdim, dtype=np.float64)
    n = np.array(reoriented_shape, dtype=np.float64)
    model_shape = tuple(max(1, round(v)) for v in n * spacing / target)
    m = np.array(model_shape, dtype=np.float64)
    # Same directions, new spacing, same centre of the field of view (centre of voxel (n-1)/2).
    directions = reoriented_affine[:3, :3] / spacing
    centre = reoriented_affine @ np.append((n - 1) / 2.0, 1.0)
    model_affine = np.eye(4)
    model_affine[:3, :3] = directions * target
    model_affine[:3, 3] = centre[:3] - model_affine[:3, :3] @ ((m - 1) / 2.0)
    # Output (model) index -> input (reoriented) index is diagonal here: pass it as a 1-D matrix.
    scale = target / spacing
    offset = (n - 1) / 2.0 - scale * (m - 1) / 2.0
    resampled = ndimage.affine_transform(
        reoriented,
        scale,
        offset=offset,
        output_shape=model_shape,
        output=np.float32,
        order=1,
        mode="nearest",
    )
    return ModelGrid(
        resampled,
        model_affine,
        reoriented_shape,
        to_model,
        shape,
        resampled=True,
        scale=(float(scale[0]), float(scale[1]), float(scale[2])),
    )
