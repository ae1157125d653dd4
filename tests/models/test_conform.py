"""Resampling to the conformed 256³ 1 mm LIA grid and back, and the intensity/crop helpers."""

from __future__ import annotations

import numpy as np
import pytest

from models.meshnet.conform import (
    CONFORMED_SHAPE,
    LIA_DIRECTIONS,
    conform,
    conformed_affine,
    is_conformed,
    labels_to_source,
)
from models.meshnet.preprocess import foreground_box, intensity_range, normalise, parse_normalisation
from segserve.imaging.volume import Volume

RAS_088 = np.diag([0.88, 0.88, 0.88, 1.0])
RAS_088[:3, 3] = [-83.12, -118.12, -77.12]


def _ellipsoid(
    shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]
) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    dist = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3))
    return dist <= 1.0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def _lia_affine(centre_ras: tuple[float, float, float]) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = LIA_DIRECTIONS
    affine[:3, 3] = np.array(centre_ras) - LIA_DIRECTIONS @ np.full(3, 128.0)
    return affine


def test_conformed_affine_is_lia_and_centred() -> None:
    shape = (188, 256, 190)
    affine = conformed_affine(RAS_088, shape)
    assert is_conformed(affine, CONFORMED_SHAPE)
    source_centre = RAS_088 @ np.array([94.0, 128.0, 95.0, 1.0])
    np.testing.assert_allclose(affine @ np.array([128.0, 128.0, 128.0, 1.0]), source_centre)


def test_is_conformed_checks_shape_and_directions() -> None:
    assert is_conformed(_lia_affine((3.0, -5.0, 7.0)), (256, 256, 256))
    assert not is_conformed(_lia_affine((0.0, 0.0, 0.0)), (256, 256, 255))
    assert not is_conformed(np.diag([1.0, 1.0, 1.0, 1.0]), (256, 256, 256))
    assert not is_conformed(np.diag([-1.1, 1.0, 1.0, 1.0]) @ np.eye(4), (256, 256, 256))


def test_round_trip_non_lia_volume_lands_on_same_voxels() -> None:
    shape = (120, 140, 110)
    blob = _ellipsoid(shape, (55.0, 75.0, 50.0), (22.0, 30.0, 18.0))
    image = np.where(blob, 100.0, 10.0).astype(np.float32)
    volume = Volume(array=image, affine=RAS_088, source_format="nifti")

    conformed = conform(volume)
    assert not conformed.identity
    assert conformed.array.shape == CONFORMED_SHAPE and conformed.array.dtype == np.float32
    # The blob keeps its physical size: 0.88 mm voxels -> 1 mm voxels scales the count by 0.88³.
    conformed_blob = conformed.array > 55.0
    assert np.count_nonzero(conformed_blob) == pytest.approx(np.count_nonzero(blob) * 0.88**3, rel=0.03)
    # ... and its physical position.
    world_in = RAS_088 @ np.array([*np.argwhere(blob).mean(axis=0), 1.0])
    world_out = conformed.affine @ np.array([*np.argwhere(conformed_blob).mean(axis=0), 1.0])
    np.testing.assert_allclose(world_out[:3], world_in[:3], atol=0.5)

    back = labels_to_source(conformed_blob.astype(np.uint8), conformed)
    assert back.shape == shape and back.dtype == np.uint8
    assert _dice(back == 1, blob) > 0.95


def test_oblique_volume_round_trip() -> None:
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.2, 1.2, 2.0])
    affine[:3, 3] = [-60.0, -50.0, -40.0]
    shape = (100, 90, 40)
    blob = _ellipsoid(shape, (50.0, 45.0, 20.0), (25.0, 20.0, 10.0))
    conformed = conform(Volume(array=blob.astype(np.float32), affine=affine, source_format="nifti"))
    back = labels_to_source((conformed.array > 0.5).astype(np.uint8), conformed)
    assert _dice(back == 1, blob) > 0.95


def test_conformed_input_is_identity() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=CONFORMED_SHAPE, dtype=np.uint8)
    affine = _lia_affine((-6.2, 9.5, -0.4))
    conformed = conform(Volume(array=image, affine=affine, source_format="mgz"))
    assert conformed.identity
    np.testing.assert_array_equal(conformed.array, image.astype(np.float32))
    labels = rng.integers(0, 18, size=CONFORMED_SHAPE, dtype=np.uint8)
    assert labels_to_source(labels, conformed) is labels


def test_trailing_singleton_axis_is_dropped_and_4d_refused() -> None:
    image = np.zeros((20, 20, 20, 1), np.float32)
    assert conform(Volume(array=image, affine=RAS_088, source_format="nifti")).source_shape == (20, 20, 20)
    with pytest.raises(ValueError, match=r"3D volume"):
        conform(Volume(array=np.zeros((20, 20, 20, 2)), affine=RAS_088, source_format="nifti"))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("minmax", ("minmax", 0.0, 1.0)),
        ("quantile:0.05,0.95", ("quantile", 0.05, 0.95)),
        ("scale:0.95,1.15", ("scale", 0.95, 1.15)),
    ],
)
def test_parse_normalisation(spec: str, expected: tuple[str, float, float]) -> None:
    assert parse_normalisation(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["zscore", "quantile:0.9,0.1", "quantile:a,b", "quantile:0.1", "scale:0,1", "scale:0.95,-1", "scale:1"],
)
def test_parse_normalisation_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match=spec.split(":")[0]):
        parse_normalisation(spec)


def test_quantile_range_ignores_background() -> None:
    array = np.zeros((10, 10, 10), np.float32)
    array[:5, :5, :4] = np.arange(100, dtype=np.float32).reshape(5, 5, 4) + 1
    low, high = intensity_range(array, "quantile:0.05,0.95")
    assert 1 < low < 10 and 90 < high < 100
    scaled = normalise(array, low, high, clip=True)
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    assert intensity_range(array, "minmax") == (0.0, 100.0)
    assert not normalise(array, 5.0, 5.0, clip=False).any()


def test_scale_only_multiplies_and_anchors_on_the_non_zero_quantile() -> None:
    """Under "scale:Q,V" 0 stays 0, the non-zero Q quantile becomes V and brighter voxels exceed 1."""
    array = np.zeros((10, 10, 10), np.float32)
    array[:5, :5, :4] = np.arange(100, dtype=np.float32).reshape(5, 5, 4) + 1
    low, high = intensity_range(array, "scale:0.95,1.15")
    anchor = float(np.quantile(np.arange(1, 101), 0.95))
    assert low == 0.0 and high == pytest.approx(anchor / 1.15)
    scaled = normalise(array, low, high, clip=False)
    assert scaled[array == 0].max() == 0.0
    assert scaled.max() == pytest.approx(100 / anchor * 1.15, rel=1e-6) and scaled.max() > 1.0
    assert intensity_range(np.zeros((4, 4, 4), np.float32), "scale:0.95,1.15") == (0.0, 0.0)


def test_foreground_box_margin_and_clamp() -> None:
    array = np.zeros((30, 30, 30), np.uint8)
    array[2, 10:20, 25] = 1
    assert foreground_box(array, 4) == (slice(0, 7), slice(6, 24), slice(21, 30))
    assert foreground_box(np.zeros((5, 5, 5)), 4) is None
