"""Fixtures for the imaging tests: the shared real data (never copied into the repo) and synthetic DICOM
series made from a real CT slice."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SEGSERVE_SHARED_DIR", REPO.parent / "shared")).resolve()
DATA = SHARED / "data"


def shared(relative: str) -> Path:
    """Path of a shared data file; skips the test when the shared data is absent."""
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (set SEGSERVE_SHARED_DIR to the shared folder)")
    return path


@pytest.fixture
def ct3() -> list[Path]:
    """The three real CT slices (512x512, implicit VR, empty SpecificCharacterSet)."""
    return [shared(f"dicom/ct-3slice/0{n}.dcm") for n in (1, 2, 3)]


@pytest.fixture
def mr3() -> list[Path]:
    """The three real MR slices."""
    return [shared(f"dicom/mr-3slice/1-00{n}.dcm") for n in (1, 2, 3)]


SeriesMaker = Callable[..., list[Path]]


@pytest.fixture
def make_series(tmp_path: Path) -> SeriesMaker:
    """Build a synthetic single-frame series by copying one real slice and editing its position.

    `positions_mm` are offsets along the slice normal (+z for the axial CT slice); `in_plane_mm` optional
    per-slice (x, y) shifts (LPS). Slice k's first pixel row is set to 100 * k so tests can see the order.
    """

    def make(
        positions_mm: Sequence[float],
        *,
        in_plane_mm: Sequence[tuple[float, float]] | None = None,
        source: Path | None = None,
        folder: str = "series",
        series_uid: str | None = None,
        edit: Callable[[pydicom.Dataset, int], None] | None = None,
        mark: bool = True,
    ) -> list[Path]:
        src = source if source is not None else shared("dicom/ct-3slice/01.dcm")
        out_dir = tmp_path / folder
        out_dir.mkdir(parents=True, exist_ok=True)
        uid = series_uid or generate_uid()
        paths = []
        for k, z in enumerate(positions_mm):
            ds = pydicom.dcmread(src)
            x0, y0, z0 = (float(v) for v in ds.get("ImagePositionPatient", [0.0, 0.0, 0.0]))
            dx, dy = in_plane_mm[k] if in_plane_mm is not None else (0.0, 0.0)
            ds.ImagePositionPatient = [x0 + dx, y0 + dy, z0 + z]
            ds.InstanceNumber = k + 1
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesInstanceUID = uid
            if mark:
                pixels = ds.pixel_array.copy()
                pixels[0, :] = 100 * k
                ds.PixelData = pixels.tobytes()
            if edit is not None:
                edit(ds, k)
            path = out_dir / f"slice{k:03d}.dcm"
            ds.save_as(path)
            paths.append(path)
        return paths

    return make


def tilt_offsets(n: int, spacing: float, degrees: float) -> list[tuple[float, float]]:
    """In-plane (x, y) shifts that tilt a stack of `n` slices by `degrees` around the x axis."""
    shift = spacing * math.tan(math.radians(degrees))
    return [(0.0, k * shift) for k in range(n)]


def ipp_to_ras(ipp: Sequence[float]) -> np.ndarray:
    """A DICOM (LPS) ImagePositionPatient as an RAS point."""
    x, y, z = (float(v) for v in ipp)
    return np.array([-x, -y, z])
