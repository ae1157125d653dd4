"""Lesion instances: components, volumes, LPS centroids, RECIST diameters, intensity statistics.

Checked against independent computations: scikit-image's labelling and region properties, SimpleITK's
index-to-physical-point (which works in LPS, as DICOM), numpy means, and closed-form diameters.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.measure import label as sk_label
from skimage.measure import regionprops

from evaluation.instances import lesion_instances, slice_diameters
from segserve.imaging.nrrd import read_nrrd
from tests.support.paths import DATA

sitk = pytest.importorskip("SimpleITK")
nib = pytest.importorskip("nibabel")


def test_lits_tumour_components_match_scikit_image() -> None:
    path = DATA / "ct/liver-tumor/lits117_label.nii.gz"
    if not path.is_file():
        pytest.skip(f"real data not found: {path}")
    labels = np.asarray(nib.load(path).dataobj).astype(np.uint8)
    ct = np.asarray(nib.load(DATA / "ct/liver-tumor/lits117_ct.nii.gz").dataobj).astype(np.float32)
    instances, lesions = lesion_instances(labels, {2: "tumour"}, np.eye(4), ct)
    reference = sk_label(labels == 2, connectivity=3)
    props = sorted(regionprops(reference, intensity_image=ct), key=lambda p: (-p.area, p.label))
    assert len(lesions) == len(props) == int(instances.max())
    assert [les.n_voxels for les in lesions] == [int(p.area) for p in props]
    for les, prop in zip(lesions, props, strict=True):
        assert np.array_equal(instances == les.id, reference == prop.label)
        assert les.centroid_voxel == pytest.approx(prop.centroid, abs=1e-9)
        assert les.intensity_mean == pytest.approx(float(prop.intensity_mean), rel=1e-6)
        assert les.intensity_max == pytest.approx(float(prop.intensity_max), rel=1e-6)
        assert les.bbox_start + les.bbox_stop == tuple(int(b) for b in prop.bbox)
    assert lesions[0].volume_ml == pytest.approx(lesions[0].n_voxels / 1000.0)


def test_brain_tumour_centroid_is_lps_as_simpleitk() -> None:
    path = DATA / "mri-lesion/brain-tumor/brain1_label.nrrd"
    if not path.is_file():
        pytest.skip(f"real data not found: {path}")
    volume = read_nrrd(path)
    _, lesions = lesion_instances(np.asarray(volume.array), {1: "tumour"}, volume.affine)
    assert lesions
    image = sitk.ReadImage(str(path))
    spacing = image.GetSpacing()
    for les in lesions:
        expected = image.TransformContinuousIndexToPhysicalPoint(les.centroid_voxel)
        assert les.centroid_lps_mm == pytest.approx(expected, abs=1e-6)
        assert les.volume_ml == pytest.approx(les.n_voxels * math.prod(spacing) / 1000.0, rel=1e-9)


def test_recist_diameters_of_a_rectangle_are_closed_form() -> None:
    # 10 x 4 voxels in plane at spacing 0.5 x 0.8 mm, 3 slices; the axial axis is the third (z).
    mask = np.zeros((14, 8, 5), dtype=np.uint8)
    mask[2:12, 2:6, 1:4] = 1
    affine = np.diag([0.5, 0.8, 3.0, 1.0])
    _, (lesion,) = lesion_instances(mask, {1: "lesion"}, affine)
    a, b = 9 * 0.5, 3 * 0.8  # centre-to-centre sides
    assert lesion.long_axis_mm == pytest.approx(math.hypot(a, b), abs=1e-9)
    # extent of the rectangle across its diagonal: twice its area over the diagonal
    assert lesion.short_axis_mm == pytest.approx(2 * a * b / math.hypot(a, b), abs=1e-9)
    assert 1 <= lesion.axial_slice <= 3


def test_axial_axis_follows_the_affine() -> None:
    # the superior-inferior direction is the array's first axis here (a sagittal-first grid)
    mask = np.zeros((6, 20, 20), dtype=np.uint8)
    mask[2, 5:15, 8:9] = 1
    affine = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    _, (lesion,) = lesion_instances(mask, {1: "lesion"}, affine)
    assert lesion.long_axis_mm == pytest.approx(9.0)
    assert lesion.short_axis_mm == 0.0
    assert lesion.axial_slice == 2


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        (np.array([[0.0, 0.0]]), (0.0, 0.0)),
        (np.array([[0.0, 0.0], [3.0, 4.0]]), (5.0, 0.0)),
        (np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0], [5.0, 0.0]]), (5.0, 0.0)),
    ],
)
def test_slice_diameters_degenerate_slices(points: np.ndarray, expected: tuple[float, float]) -> None:
    assert slice_diameters(points) == pytest.approx(expected)


def test_labels_are_split_separately_and_numbered_by_label_then_size() -> None:
    volume = np.zeros((10, 10, 10), dtype=np.uint8)
    volume[1:3, 1:3, 1:3] = 3  # 8 voxels of label 3
    volume[3:4, 1:3, 1:3] = 2  # touching, but label 2: its own instance
    volume[6:9, 6:9, 6:9] = 3  # 27 voxels of label 3
    instances, lesions = lesion_instances(volume, {2: "node", 3: "metastasis"}, np.eye(4))
    assert [(les.id, les.label, les.n_voxels) for les in lesions] == [(1, 2, 4), (2, 3, 27), (3, 3, 8)]
    assert instances.dtype == np.uint16 and int(instances[7, 7, 7]) == 2
