"""The in-memory volume that every reader returns and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Volume:
    """A 3D scan or label volume on a physical grid.

    Attributes:
        array: voxel values, shape (I, J, K), any numeric dtype. Axis order follows the source file
            (NIfTI/MGZ/NRRD as stored; DICOM as I = column, J = row, K = slice along the normal).
        affine: (4, 4) float64 matrix mapping voxel indices (i, j, k, 1) to RAS+ world coordinates in mm.
        source_format: "nifti", "mgz", "nrrd" or "dicom".
        meta: reader-specific facts that are safe to log (never patient identifiers).
        header: the source NIfTI header when the input was NIfTI (so a result can keep its sform/qform
            codes); None otherwise. Never logged.
    """

    array: np.ndarray
    affine: np.ndarray
    source_format: str
    meta: dict[str, Any] = field(default_factory=dict)
    header: Any = None

    @property
    def shape(self) -> tuple[int, int, int]:
        i, j, k = self.array.shape[:3]
        return int(i), int(j), int(k)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along I, J, K in mm (column norms of the affine)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(norms[0]), float(norms[1]), float(norms[2])
