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
from typing import Any

import numpy as np
import pytest
from skimage.transform import resize

from models.nnunet.geometry import image_properties, nnunet_input
from models.nnunet.resample import prefilter, zoom_cubic_planes, zoom_slab
from segserve.scans.readers import read_channels
from tests.support.nnunet import CASES, images_dir, model_folder, nnunet_models
from tests.support.paths import DATA

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


def _assert_planes_equal_nnunet(
    volumes: list, plans: Any, config: Any, dataset: dict, case: str
) -> np.ndarray:
    """models.nnunet.preprocess gives run_case_npy's float32 array (every value) and properties."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    from models.nnunet.preprocess import preprocess

    image, expected_properties = nnunet_input(volumes)
    expected, _seg, expected_properties = DefaultPreprocessor(verbose=False).run_case_npy(
        image, None, expected_properties, plans, config, dataset
    )
    properties = image_properties(volumes[0])
    got = preprocess(volumes, properties, plans, config)
    assert got is not None, case
    assert got.dtype == expected.dtype == np.float32 and got.shape == expected.shape, case
    assert np.array_equal(got, expected), (case, float(np.max(np.abs(got - expected))))
    for key in (
        "shape_before_cropping",
        "bbox_used_for_cropping",
        "shape_after_cropping_and_before_resampling",
    ):
        assert [list(map(int, np.ravel(v))) for v in [properties[key]]] == [
            list(map(int, np.ravel(v))) for v in [expected_properties[key]]
        ], (case, key)
    return expected


@pytest.mark.parametrize("kind", ["single", "multi", "regions"])
def test_preprocessing_by_planes_equals_nnunet(root: Path, kind: str) -> None:
    """multi: channel 1 is z-scored (nnU-Net's plan), on the three CTs (the spleen's through separate z)."""
    plans, config, dataset = _managers(model_folder(root, kind))
    for case, volumes in _cases(root, kind).items():
        _assert_planes_equal_nnunet(volumes, plans, config, dataset, case)


@pytest.mark.parametrize("scan", ["subject-a/norm.mgz", "t1-raw/chris_t1.nii.gz"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_zscore_by_planes_equals_nnunet_on_brain_mri(root: Path, scan: str, use_mask: bool) -> None:
    """ZScoreNormalization with and without use_mask_for_norm on real brain MRIs: the skull-stripped
    FreeSurfer norm.mgz (zero outside the brain: the crop and the mask matter) and a raw T1 (0.88 mm)."""
    path = DATA / "mri-brain" / scan
    if not path.is_file():
        pytest.skip(f"{path} not found")
    plans, config, dataset = _managers(model_folder(root, "single"))
    config.configuration["normalization_schemes"] = ["ZScoreNormalization"]
    config.configuration["use_mask_for_norm"] = [use_mask]
    volumes = read_channels([("t1", [path])])
    expected = _assert_planes_equal_nnunet(volumes, plans, config, dataset, scan)
    assert abs(float(expected.mean())) < 3 and len(np.unique(expected)) > 100  # z-scored, not constant


@pytest.mark.parametrize("scheme", ["RescaleTo01Normalization", "RGBTo01Normalization"])
def test_range_schemes_by_planes_equal_nnunet(root: Path, scheme: str) -> None:
    """The per-case min/max schemes on the real CTs (RGB: the CT clipped to 0..255 as uint8), resampled."""
    import dataclasses

    plans, config, dataset = _managers(model_folder(root, "single"))
    config.configuration["normalization_schemes"] = [scheme]
    for case, volumes in _cases(root, "single").items():
        if scheme == "RGBTo01Normalization":
            volumes = [
                dataclasses.replace(v, array=np.clip(np.asarray(v.array), 0, 255).astype(np.uint8))
                for v in volumes
            ]
        expected = _assert_planes_equal_nnunet(volumes, plans, config, dataset, case)
        assert float(expected.min()) >= 0.0 and float(expected.max()) <= 1.0 + 1e-6


def test_preprocessing_falls_back_where_not_plane_wise(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.nnunet import zscore
    from models.nnunet.preprocess import preprocess

    plans, config, _dataset = _managers(model_folder(root, "multi"))
    volumes = _cases(root, "multi")["abdomen"]
    with monkeypatch.context() as patch:  # a numpy that sums in another order: nnU-Net's own path
        patch.setattr(zscore, "numpy_order_holds", lambda: False)
        assert preprocess(volumes, image_properties(volumes[0]), plans, config) is None
    assert preprocess(volumes, image_properties(volumes[0]), plans, config) is not None
    config.configuration["normalization_schemes"] = ["CTNormalization", "RGBTo01Normalization"]
    assert preprocess(volumes, image_properties(volumes[0]), plans, config) is None  # HU are not 0..255
    config.configuration["normalization_schemes"] = ["CTNormalization", "SomeoneElsesNormalization"]
    assert preprocess(volumes, image_properties(volumes[0]), plans, config) is None
    plans, config, _dataset = _managers(model_folder(root, "single"))
    volumes = _cases(root, "single")["abdomen"]
    properties = image_properties(volumes[0])
    config.configuration["resampling_fn_data_kwargs"]["order"] = 1  # only order 3 is done here
    assert preprocess(volumes, properties, plans, config) is None


def _reduction_sizes(view: np.ndarray) -> list[int]:
    """Inner-loop lengths of numpy's buffered iteration as its add.reduce(view, axis=None) sets it up."""
    out = np.zeros((), np.float32)
    flags = [
        "buffered",
        "external_loop",
        "grow_inner",
        "reduce_ok",
        "zerosize_ok",
        "refs_ok",
        "delay_bufalloc",
    ]
    iterator = np.nditer(
        [view, out],
        flags=flags,
        op_flags=[["readonly", "aligned", "no_broadcast"], ["readwrite", "aligned", "no_broadcast"]],
        op_axes=[list(range(view.ndim)), [-1] * view.ndim],
        buffersize=np.getbufsize(),
    )
    iterator.reset()
    return [int(x.size) for x, _y in iterator]


def test_reduction_chunks_are_numpys_and_statistics_bit_equal() -> None:
    from models.nnunet import zscore

    assert zscore.numpy_order_holds()

    rng = np.random.default_rng(11)
    shapes = [((40, 512, 512), (38, 480, 500)), ((30, 90, 91), (28, 90, 91)), ((4, 3, 20000), (4, 2, 19998))]
    for _ in range(60):
        full = tuple(int(n) for n in rng.integers(1, 100, size=3))
        shapes.append((full, tuple(int(rng.integers(1, n + 1)) if rng.random() < 0.7 else n for n in full)))
    for full, crop in shapes:
        view = np.zeros(full, np.float32)[tuple(slice(0, n) for n in crop)]
        assert list(zscore.reduction_chunks(crop, full)) == _reduction_sizes(view), (full, crop)
    for full, crop in shapes[1:30]:
        volume = (rng.standard_cauchy(size=full) * 30 + 5).astype(np.float32)
        view = volume[tuple(slice(n - c, n) for n, c in zip(full, crop, strict=True))]
        got = zscore.unmasked(lambda i, v=view: np.ascontiguousarray(v[i]), crop, full)
        assert (got.mean, got.std) == (view.mean(), view.std()), (full, crop)
        turned = view.transpose(2, 0, 1)
        mask = rng.random(turned.shape) > 0.3
        got = zscore.masked(lambda i, v=turned: np.ascontiguousarray(v[i]), mask)
        assert (got.mean, got.std) == (turned[mask].mean(), turned[mask].std()), (full, crop)


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


@pytest.mark.parametrize("use_mask", [False, True])
def test_zscore_labels_equal_with_nnunets_own_preprocessing(
    root: Path, use_mask: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real (made) model z-scoring the skull-stripped brain MRI: the labels from the plane-wise
    preprocessing are nnU-Net's own preprocessing's, voxel for voxel."""
    from models.nnunet import predictor

    path = DATA / "mri-brain" / "subject-a" / "norm.mgz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    runner = predictor.NnunetRunner(model_folder(root, "single"), [0], use_mirroring=False)
    runner.predictor.configuration_manager.configuration["normalization_schemes"] = ["ZScoreNormalization"]
    runner.predictor.configuration_manager.configuration["use_mask_for_norm"] = [use_mask]
    volumes = read_channels([("t1", [path])])
    got = runner.predict(volumes)
    assert runner.last_preprocessing == "planes"
    monkeypatch.setattr(predictor, "preprocess", lambda *_args: None)
    expected = runner.predict(volumes)
    assert runner.last_preprocessing == "nnunet"
    assert got.dtype == expected.dtype and np.array_equal(got, expected)
    assert len(np.unique(expected)) >= 2


def test_zscore_statistics_take_bounded_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """An uncropped channel is one chunk of numpy's reduction: still summed LEAF values at a time."""
    from models.nnunet import zscore

    sizes: list[int] = []
    take = zscore.Stream.take
    monkeypatch.setattr(zscore.Stream, "take", lambda self, n: sizes.append(n) or take(self, n))
    monkeypatch.setattr(zscore, "LEAF", 1000)
    volume = (np.random.default_rng(4).standard_cauchy(size=(20, 30, 40)) * 30).astype(np.float32)
    got = zscore.unmasked(lambda i: volume[i], volume.shape, volume.shape)
    assert (got.mean, got.std) == (volume.mean(), volume.std())
    got = zscore.masked(lambda i: volume[i], volume > -10)
    assert (got.mean, got.std) == (volume[volume > -10].mean(), volume[volume > -10].std())
    assert max(sizes) <= 1000 and sum(sizes) > 3 * volume.size
