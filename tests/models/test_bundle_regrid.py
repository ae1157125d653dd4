"""models.bundle.regrid: a bundle's labels mapped onto the input's grid in slabs equal MONAI's whole-output
SpatialResample (onto_grid) followed by to_label_map, value for value; and the slab grids equal torch's
affine_grid of the whole output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from models.bundle import regrid
from models.bundle.regrid import onto_grid, to_label_map
from segserve.imaging.volume import Volume


def _affine(rng: np.random.Generator, shape: tuple, spacing: float, rotate: float) -> np.ndarray:
    """A grid of ``shape`` centred near the origin (so the two grids overlap), rotated and flipped."""
    angle = rng.uniform(-rotate, rotate)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(rng.uniform(0.8, 1.2, 3) * spacing) @ np.diag(rng.choice([-1, 1], 3))
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2) + rng.normal(0, 2, 3)
    return affine


@pytest.mark.parametrize("seed", range(6))
def test_labels_in_slabs_equal_monai_whole_output(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(seed)
    source_shape = tuple(int(n) for n in rng.integers(6, 14, 3))
    classes = 300 if seed == 5 else 5  # uint16 labels
    labels = rng.integers(0, classes, source_shape).astype(np.float32)
    pred = MetaTensor(
        torch.from_numpy(labels)[None], affine=torch.as_tensor(_affine(rng, source_shape, 4.0, 0.3))
    )
    target_shape = tuple(int(n) for n in rng.integers(20, 45, 3))
    volume = Volume(
        np.zeros(target_shape, dtype=np.int16),
        _affine(rng, target_shape, 1.0, 0.3 if seed % 2 else 0.0),
        "nifti",
    )
    monkeypatch.setattr(regrid, "SLAB_VOXELS", target_shape[1] * target_shape[2] * 3 + 1)  # 3 planes a slab
    expected = to_label_map(onto_grid(pred, volume), volume.shape, "m")
    got = regrid.labels_on_grid(pred, volume, "m")
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert len(np.unique(expected)) > 2


def test_same_grid_is_not_resampled() -> None:
    labels = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    pred = MetaTensor(torch.from_numpy(labels)[None], affine=torch.eye(4, dtype=torch.float64))
    got = regrid.labels_on_grid(pred, Volume(np.zeros((2, 3, 4), np.int16), np.eye(4), "nifti"), "m")
    assert np.array_equal(got, labels.astype(np.uint8))


@pytest.mark.parametrize("size", [(131, 77, 93), (33, 100, 301), (64, 128, 128)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_slab_grids_equal_affine_grid_of_the_whole(size: tuple, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(sum(size))
    matrix = np.c_[np.diag(rng.uniform(0.1, 1.5, 3)) + rng.normal(0, 0.05, (3, 3)), rng.normal(0, 0.2, 3)]
    theta = torch.tensor(matrix, dtype=dtype)[None]
    whole = F.affine_grid(theta, [1, 1, *size], align_corners=False)
    step = 7
    buffers = regrid.GridBuffers(size, step, dtype)  # reused by every slab, the last one shorter
    for start in range(0, size[0], step):
        stop = min(start + step, size[0])
        assert torch.equal(regrid.slab_grid(theta, size, start, stop), whole[:, start:stop])
        assert torch.equal(regrid.slab_grid(theta, size, start, stop, buffers), whole[:, start:stop])
    for start in (size[0] - 1, 0):  # backwards, one plane: the buffers keep nothing of earlier slabs
        assert torch.equal(
            regrid.slab_grid(theta, size, start, start + 1, buffers), whole[:, start : start + 1]
        )


def test_slab_grid_refuses_buffers_that_do_not_fit() -> None:
    theta = torch.eye(3, 4, dtype=torch.float64)[None]
    buffers = regrid.GridBuffers((10, 4, 5), 2, torch.float64)
    with pytest.raises(ValueError, match="do not fit"):
        regrid.slab_grid(theta, (10, 4, 5), 0, 3, buffers)
    with pytest.raises(ValueError, match="do not fit"):
        regrid.slab_grid(theta, (10, 4, 6), 0, 2, buffers)
    with pytest.raises(ValueError, match="do not fit"):
        regrid.slab_grid(theta.float(), (10, 4, 5), 0, 2, buffers)


@pytest.mark.parametrize("high", [5.0, 400.0])
def test_label_map_rounded_in_slabs_equals_rint_of_the_whole(
    high: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(regrid, "SLAB_VOXELS", 7 * 9 * 2)  # two planes a slab
    values = np.random.default_rng(0).uniform(0, high, (1, 11, 7, 9)).astype(np.float32)
    expected = np.rint(values[0]).astype(np.uint8 if high < 255 else np.uint16)
    got = to_label_map(torch.from_numpy(values), (11, 7, 9), "m")
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    with pytest.raises(ValueError, match="outside"):
        to_label_map(torch.from_numpy(values - 1.0), (11, 7, 9), "m")
