"""The DeepEdit engine against MONAI's own DeepEdit inference: same clicks, same file, identical labels.

The Zoo's spleen_deepedit_annotation bundle (../shared/zoo) with seeded random weights built from its own
network_def (models.testing.zoo.seed_bundle, seed 0 as in the Zoo conformance suite), installed with
--trust-code into a temporary models folder, and a real CT crop (../shared/data/ct/spleen, 120x120x26) stored
flipped along its first axis (an LAS grid), so that the bundle's Orientationd and its click re-orientation
both do something. The reference is MONAI's bundle runner (``monai.bundle.run``, in this process) on that
file with the clicks given the way the config reads them: entries of the case dict, one per label name.

Size: the copied config resizes to 64x64x32 instead of the Zoo's 128^3 (the same DynUNet, whose strides
need multiples of 32, 32, 16); at 128^3 one click costs about a minute on the loaded 2-core test machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from models.bundle.build import _bundle_on_path
from models.card import ModelUnavailable
from models.catalog import Catalog
from models.formats import InstallOptions
from models.install import install_models
from models.interactive.deepedit import DeepEditEngine, PreparedDeepEdit
from models.interactive.model_engines import available_model_engines, is_deepedit_config, model_engine
from models.interactive.prompts import Box, Click, PromptError
from models.testing.make_bundle import write_unet_bundle
from models.testing.zoo import config_file, seed_bundle
from tests.support.paths import DATA, SHARED

ZOO = SHARED / "zoo" / "spleen_deepedit_annotation"
MODEL = "spleen_deepedit_annotation"
SPATIAL_SIZE = [64, 64, 32]
# fg clicks in the spleen region of the crop, one bg click in the body wall (file voxel indices, I J K)
CLICKS = (Click((60, 60, 13)), Click((50, 70, 10)), Click((100, 20, 5), foreground=False))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle copy with seeded weights, models dir it is installed in with --trust-code)."""
    if not ZOO.is_dir():
        pytest.skip(f"{ZOO} not found (set SEGSERVE_SHARED_DIR)")
    root = tmp_path_factory.mktemp("deepedit")
    source = root / "src"
    source.mkdir()
    # the source folder's name is the model id
    bundle = seed_bundle(ZOO, source / MODEL, seed=0)
    path = config_file(bundle)
    config = json.loads(path.read_text())
    config["spatial_size"] = SPATIAL_SIZE
    path.write_text(json.dumps(config, indent=2))
    models = root / "models"
    install_models(bundle, models, options=InstallOptions(trust_code=True))
    return bundle, models


@pytest.fixture(scope="module")
def engine(installed: tuple[Path, Path]) -> DeepEditEngine:
    _, models = installed
    return DeepEditEngine.load(Catalog(models).card(MODEL), models)


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """(file, array, affine): the real CT crop, stored with its first axis flipped (L instead of R)."""
    source: Any = nib.load(str(DATA / "ct" / "spleen" / "sub-spleen2_ct.nii.gz"))
    start, size = (20, 30, 0), (120, 120, 26)
    array = np.asarray(
        source.dataobj[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))], dtype=np.int16
    )
    affine = source.affine.copy()
    affine[:3, 3] = source.affine[:3, :3] @ np.asarray(start, float) + source.affine[:3, 3]
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, size[0] - 1
    array, affine = np.ascontiguousarray(array[::-1]), affine @ flip
    path = tmp_path_factory.mktemp("scan") / "crop.nii.gz"
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path, array, affine


def monai_labels(bundle: Path, image: Path, clicks: dict[str, list[list[int]]], out: Path) -> np.ndarray:
    """Labels of MONAI's bundle runner (the config's ``run``) on ``image``, ``clicks`` in the case dict."""
    from monai.bundle import run

    data = [{"image": str(image), **clicks}]
    with _bundle_on_path(bundle):  # its scripts/ importable, as MONAI's runner puts bundle_root on the path
        run(
            "run",
            config_file=str(config_file(bundle)),
            meta_file=str(bundle / "configs" / "metadata.json"),
            bundle_root=str(bundle),
            output_dir=str(out),
            **{"dataset#data": data, "dataloader#num_workers": 0},
        )
    saved = sorted(out.rglob("*.nii.gz"))
    assert len(saved) == 1, saved
    img: Any = nib.load(str(saved[0]))
    return np.asarray(img.dataobj).squeeze()


def test_clicks_give_monai_runner_labels_voxel_for_voxel(
    engine: DeepEditEngine,
    installed: tuple[Path, Path],
    scan: tuple[Path, np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    bundle, _ = installed
    path, array, affine = scan
    prepared = engine.prepare(array, (0.79, 0.79, 5.0), affine=affine)
    mask = engine.segment(prepared, CLICKS)
    clicks = {"spleen": [[60, 60, 13], [50, 70, 10]], "background": [[100, 20, 5]]}
    assert engine.clicks(CLICKS) == clicks
    reference = monai_labels(bundle, path, clicks, tmp_path / "monai")
    assert reference.shape == mask.shape == array.shape
    assert set(np.unique(reference).tolist()) == {0, 1}, "seeded weights should give both labels"
    np.testing.assert_array_equal(mask, reference == 1)
    print(f"\nspleen voxels {int(mask.sum())} of {mask.size}")


def test_prepare_once_segment_many_is_a_function_of_the_clicks(
    engine: DeepEditEngine, scan: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    _, array, affine = scan
    prepared = engine.prepare(array, (0.79, 0.79, 5.0), affine=affine)
    assert isinstance(prepared, PreparedDeepEdit) and prepared.nbytes == array.size * 4
    first = engine.segment(prepared, CLICKS)
    other = engine.segment(prepared, CLICKS[:1])
    again = engine.segment(prepared, CLICKS)
    assert not np.array_equal(first, other), "the clicks must change the result"
    np.testing.assert_array_equal(first, again)


def test_refusals(engine: DeepEditEngine, installed: tuple[Path, Path], scan: Any, tmp_path: Path) -> None:
    _, models = installed
    _, array, _ = scan
    prepared = engine.prepare(array[:8, :8, :4], (1.0, 1.0, 1.0))
    with pytest.raises(PromptError, match="DeepEdit takes clicks only"):
        engine.segment(prepared, [Click((1, 1, 1)), Box((0, 0, 1), (4, 4, 1))])
    with pytest.raises(PromptError, match="outside the image"):
        engine.segment(prepared, [Click((8, 1, 1))])
    with pytest.raises(ModelUnavailable, match="no label 'liver'"):
        DeepEditEngine(engine.pipeline, MODEL, label="liver")
    with pytest.raises(ModelUnavailable, match="not a DeepEdit bundle"):
        DeepEditEngine.from_folder(write_unet_bundle(tmp_path / "unet"))
    with pytest.raises(ModelUnavailable, match="--trust-code"):  # its config runs code
        DeepEditEngine.from_folder(models / "bundles" / MODEL)
    card = Catalog(models).card(MODEL)
    with pytest.raises(ModelUnavailable, match=r"missing|changed|does not match"):
        (models / "bundles" / MODEL / "models" / "model.pt").rename(models / "elsewhere.pt")
        try:
            DeepEditEngine.load(card, models)
        finally:
            (models / "elsewhere.pt").rename(models / "bundles" / MODEL / "models" / "model.pt")


def test_deepedit_configs_are_recognised_as_data() -> None:
    if not ZOO.is_dir():
        pytest.skip(f"{ZOO} not found")
    assert is_deepedit_config(json.loads(config_file(ZOO).read_text()))
    assert not is_deepedit_config(json.loads(config_file(ZOO.parent / "spleen_ct_segmentation").read_text()))


def test_registry_lists_and_loads_installed_deepedit_bundles(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, models = installed
    assert available_model_engines(models) == [f"deepedit:{MODEL}"]
    assert available_model_engines(tmp_path) == []
    loaded = model_engine(f"deepedit:{MODEL}:spleen", models)
    assert (
        isinstance(loaded, DeepEditEngine) and loaded.name == f"deepedit:{MODEL}" and loaded.label_value == 1
    )
    with pytest.raises(ModelUnavailable, match="no label 'liver'"):
        model_engine(f"deepedit:{MODEL}:liver", models)


def test_the_sessions_registry_offers_and_loads_the_bundle(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    """What the session API lists and the interactive worker loads: models.interactive.engines."""
    from models.interactive import engines

    _, models = installed
    assert engines.engine_names(models) == ["classical", f"deepedit:{MODEL}"]
    assert engines.engine_names(tmp_path) == engines.engine_names() == ["classical"]
    assert engines.is_engine_name(f"deepedit:{MODEL}:spleen", models)
    assert not engines.is_engine_name(f"deepedit:{MODEL}:spleen", tmp_path)
    assert isinstance(engines.get_engine(f"deepedit:{MODEL}", models), DeepEditEngine)
    with pytest.raises(ModelUnavailable, match="no available DeepEdit bundle 'no-such-bundle'"):
        engines.get_engine("deepedit:no-such-bundle", models)
    with pytest.raises(KeyError, match="known: classical, deepedit"):
        engines.get_engine("no-such-engine", models)
