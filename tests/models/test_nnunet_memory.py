"""nnU-Net's preprocessing and export in bounded memory give nnU-Net's own values, every one.

- models.nnunet.resample against skimage's ``resize`` (what nnU-Net calls): the plane-by-plane cubic zoom and
  the slabs of any order, on random volumes, down and up, with odd and tiny shapes;
- models.nnunet.preprocess against nnU-Net's ``DefaultPreprocessor.run_case_npy`` on the real CT cases with
  the real (made) nnU-Net models (the 0.8 x 0.8 x 5 mm spleen CT through the separate-z resampling): the
  same float32 array and properties, or None (nnU-Net's own path) for a z-scored channel and order 1;
- the export's slab path against its whole-channel path (nnU-Net's resampling function per channel).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.transform import resize

from models.nnunet.geometry import image_properties, nnunet_input
from models.nnunet.resample import prefilter, zoom_cubic_planes, zoom_slab
from segserve.scans.readers import read_channels
from tests.support.nnunet import CASES, images_dir, model_folder, nnunet_models

pytest.importorskip("nnunetv2")

SHAPES = [
    ((40, 37, 29), (8, 7, 6)),
    ((23, 30, 31), (47, 61, 60)),
    ((50, 20, 22), (10, 25, 9)),
    ((3, 9, 9), (7, 4, 4)),
    ((1, 12, 5), (1, 6, 10)),
]


@pytest.mark.parametrize(("shape", "new_shape"), SHAPES)
def test_cubic_zoom_by_planes_equals_skimage_resize(shape: tuple, new_shape: tuple) -> None:
    rng = np.random.default_rng(sum(shape))
    volume = (rng.normal(size=shape) * 300).astype(np.float32)
    expected = resize(volume.astype(np.float64), new_shape, 3, mode="edge", anti_aliasing=False, clip=False)
    got = np.full(new_shape, np.nan)
    order = []
    for index, plane in zoom_cubic_planes(lambda i: volume[i], shape, new_shape):
        got[index] = plane
        order.append(index)
    assert order == list(range(new_shape[0] - 1, -1, -1))
    assert np.array_equal(got, expected)


@pytest.mark.parametrize(("shape", "new_shape"), SHAPES)
@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zoom_slabs_equal_skimage_resize(shape: tuple, new_shape: tuple, order: int, dtype: type) -> None:
    rng = np.random.default_rng(sum(new_shape))
    volume: np.ndarray = (rng.normal(size=shape) * 10).astype(dtype)
    expected = resize(
        volume.astype(np.float64), new_shape, order, mode="edge", anti_aliasing=False, clip=False
    )
    coefficients = prefilter(volume, order) if order > 1 else volume
    slabs = [
        zoom_slab(coefficients, new_shape, order, start, min(start + 3, new_shape[0]), order > 1)
        for start in range(0, new_shape[0], 3)
    ]
    assert np.array_equal(np.concatenate(slabs), expected)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nnunet_models(tmp_path_factory)


def _managers(folder: Path) -> tuple:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(json.loads((folder / "plans.json").read_text()))
    return plans, plans.get_configuration("3d_fullres"), json.loads((folder / "dataset.json").read_text())


def _cases(root: Path, kind: str) -> dict[str, list]:
    images = images_dir(root, kind)
    out = {}
    for case in CASES:
        channels = sorted(images.glob(f"{case}_*.nii.gz"))
        out[case] = read_channels([(p.name, [p]) for p in channels])
    return out


@pytest.mark.parametrize("kind", ["single", "regions"])
def test_preprocessing_by_planes_equals_nnunet(root: Path, kind: str) -> None:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    from models.nnunet.preprocess import preprocess

    plans, config, dataset = _managers(model_folder(root, kind))
    for case, volumes in _cases(root, kind).items():
        image, expected_properties = nnunet_input(volumes)
        expected, _seg, expected_properties = DefaultPreprocessor(verbose=False).run_case_npy(
            image, None, expected_properties, plans, config, dataset
        )
        properties = image_properties(volumes[0])
        got = preprocess(volumes, properties, plans, config)
        assert got is not None, case
        assert got.dtype == expected.dtype == np.float32 and got.shape == expected.shape, case
        assert np.array_equal(got, expected), case
        for key in (
            "shape_before_cropping",
            "bbox_used_for_cropping",
            "shape_after_cropping_and_before_resampling",
        ):
            assert [list(map(int, np.ravel(v))) for v in [properties[key]]] == [
                list(map(int, np.ravel(v))) for v in [expected_properties[key]]
            ], (case, key)


def test_preprocessing_falls_back_where_not_plane_wise(root: Path) -> None:
    from models.nnunet.preprocess import preprocess

    plans, config, _dataset = _managers(model_folder(root, "multi"))  # channel 1: z-score (case statistics)
    volumes = _cases(root, "multi")["abdomen"]
    assert preprocess(volumes, image_properties(volumes[0]), plans, config) is None
    plans, config, _dataset = _managers(model_folder(root, "single"))
    volumes = _cases(root, "single")["abdomen"]
    properties = image_properties(volumes[0])
    config.configuration["resampling_fn_data_kwargs"]["order"] = 1  # only order 3 is done here
    assert preprocess(volumes, properties, plans, config) is None


@pytest.mark.parametrize("kind", ["single", "regions"])
def test_export_in_slabs_equals_whole_channels(
    root: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from models.nnunet import export

    plans, config, dataset = _managers(model_folder(root, kind))
    labels = plans.get_label_manager(dataset)
    rng = np.random.default_rng(3)
    heads = labels.num_segmentation_heads
    properties = {
        "spacing": [3.0, 0.9, 0.9],
        "shape_before_cropping": (40, 70, 66),
        "bbox_used_for_cropping": [[2, 37], [5, 70], [0, 61]],
        "shape_after_cropping_and_before_resampling": (35, 65, 61),
    }
    logits = torch.from_numpy((rng.normal(size=(heads, 24, 17, 16)) * 3).astype(np.float16))
    monkeypatch.setattr(export, "SLAB_VOXELS", 65 * 61 * 4)  # several slabs, the last one shorter
    got = export.logits_to_labels(logits, plans, config, labels, properties)
    monkeypatch.setattr(export, "_slab_order", lambda *_args: None)
    expected = export.logits_to_labels(logits, plans, config, labels, properties)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    assert len(np.unique(expected)) >= 2
