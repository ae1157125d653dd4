"""read_channels: one volume per input channel, all on the first channel's grid, errors name the channel."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segserve.imaging.errors import GridMismatch, ImageError
from segserve.scans.readers import read_channels


def _save(path: Path, shape: tuple[int, int, int], spacing: float = 1.0, fill: int = 1) -> Path:
    nib.save(nib.Nifti1Image(np.full(shape, fill, np.int16), np.diag([spacing, spacing, spacing, 1.0])), path)
    return path


def test_channels_are_read_in_the_given_order(tmp_path: Path) -> None:
    paths = [_save(tmp_path / f"{n}.nii.gz", (6, 5, 4), fill=v) for n, v in (("a", 1), ("b", 2), ("c", 3))]
    volumes = read_channels(
        [(name, [p]) for name, p in zip("cab", [paths[2], paths[0], paths[1]], strict=True)]
    )
    assert [int(v.array.max()) for v in volumes] == [3, 1, 2]


def test_a_channel_on_another_grid_names_both_channels_and_grids(tmp_path: Path) -> None:
    t1c = _save(tmp_path / "t1c.nii.gz", (6, 5, 4))
    flair = _save(tmp_path / "flair.nii.gz", (6, 5, 3))
    shifted = _save(tmp_path / "t2.nii.gz", (6, 5, 4), spacing=2.0)
    with pytest.raises(
        GridMismatch, match=r"channel 'flair' grid 6x5x3 .* does not match channel 't1c' grid 6x5x4"
    ):
        read_channels([("t1c", [t1c]), ("flair", [flair])])
    with pytest.raises(GridMismatch, match=r"channel 't2' grid 6x5x4 at 2.00x2.00x2.00 mm .*affines differ"):
        read_channels([("t1c", [t1c]), ("t2", [shifted])])


def test_an_unreadable_channel_is_named(tmp_path: Path) -> None:
    t1c = _save(tmp_path / "t1c.nii.gz", (6, 5, 4))
    broken = tmp_path / "t1.nii.gz"
    broken.write_bytes(t1c.read_bytes()[:60])
    with pytest.raises(ImageError, match=r"^channel 't1': "):
        read_channels([("t1c", [t1c]), ("t1", [broken])])
