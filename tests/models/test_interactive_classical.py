"""The classical interactive engine on real scans: clicks from the simulated user reach the Dice the
benchmark measured (thresholds set below it), undo, boxes, background clicks, bad prompts, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.interactive.classical import (
    REGION_CACHE,
    ClassicalEngine,
    ClassicalLargePrepared,
    ClassicalPrepared,
)
from models.interactive.engines import engine_names, get_engine
from models.interactive.prompts import Box, Click, PromptError, SliceMask
from models.interactive.simulated_user import dice, next_click, simulate
from segserve.imaging.nifti import read_nifti
from segserve.imaging.nrrd import read_nrrd
from tests.support.paths import DATA

Case = tuple[np.ndarray, tuple[float, float, float], np.ndarray]


def _load(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    if not path.is_file():
        pytest.skip(f"shared data not found: {path} (set SEGSERVE_SHARED_DIR)")
    volume = read_nrrd(path) if path.suffix == ".nrrd" else read_nifti(path, "nifti")
    s = np.linalg.norm(volume.affine[:3, :3], axis=0)
    return np.asarray(volume.array), (float(s[0]), float(s[1]), float(s[2]))


@pytest.fixture(scope="module")
def spleen() -> Case:
    """The spleen CT (164x166x26, 0.79x0.79x5 mm, HU) and its manual mask."""
    image, spacing = _load(DATA / "ct/spleen/sub-spleen2_ct.nii.gz")
    return image, spacing, _load(DATA / "ct/spleen/sub-spleen2_ct_seg-manual.nii.gz")[0] > 0


@pytest.fixture(scope="module")
def tumour() -> Case:
    """The brain MR (256x256x25, 0.78x0.78x6.5 mm) and its manual tumour mask."""
    image, spacing = _load(DATA / "mri-lesion/brain-tumor/brain1_image.nrrd")
    return image, spacing, _load(DATA / "mri-lesion/brain-tumor/brain1_label.nrrd")[0] > 0


@pytest.fixture(scope="module")
def subject_a() -> Case:
    """subject-a's norm.mgz (256³, 1 mm) and FreeSurfer's right hippocampus (label 53 of aparc+aseg)."""
    import nibabel as nib

    folder = DATA / "mri-brain/subject-a"
    if not (folder / "norm.mgz").is_file():
        pytest.skip(f"shared data not found: {folder} (set SEGSERVE_SHARED_DIR)")
    labels = np.asarray(nib.load(folder / "aparc.a2009s+aseg.mgz").dataobj)
    return np.asarray(nib.load(folder / "norm.mgz").dataobj), (1.0, 1.0, 1.0), labels == 53


@pytest.fixture(scope="module")
def spleen_prepared(spleen: Case) -> ClassicalPrepared:
    image, spacing, _ = spleen
    return ClassicalEngine().prepare(image, spacing)


def test_spleen_three_clicks(spleen: Case, spleen_prepared: ClassicalPrepared) -> None:
    """Measured by bench.interactive: 0.65, 0.84, 0.90 after 1, 2, 3 clicks."""
    _, spacing, reference = spleen
    steps = simulate(ClassicalEngine(), spleen_prepared, reference, spacing, 3)
    assert [s.clicks for s in steps] == [1, 2, 3]
    assert steps[0].prompt == next_click(np.zeros_like(reference), reference, spacing)
    assert steps[0].dice > 0.5
    assert steps[2].dice > 0.85


def test_brain_tumour_first_click(tumour: Case) -> None:
    """Measured: 0.72 after the first click (the heterogeneous tumour needs more; see the README)."""
    image, spacing, reference = tumour
    engine = ClassicalEngine()
    steps = simulate(engine, engine.prepare(image, spacing), reference, spacing, 1)
    assert steps[0].dice > 0.65


def test_brain_tumour_more_clicks_do_not_collapse(tumour: Case) -> None:
    """Across its 6.5 mm slices a click on the tumour's darker part leaked into the brain (Dice 0.72 after
    9 clicks, 0.37 after the 10th) until slice steps counted as edges (``anisotropy_cap``). Measured now,
    with each click's own component (``click_tolerance``): 0.78 after 3 clicks, 0.83 after 5, at least
    0.72 after any of the 10, 0.78 after the 10th."""
    image, spacing, reference = tumour
    engine = ClassicalEngine()
    steps = simulate(engine, engine.prepare(image, spacing), reference, spacing, 10)
    assert steps[2].dice > 0.76
    assert steps[4].dice > 0.8
    assert min(s.dice for s in steps) > 0.68
    assert steps[-1].dice > 0.75
    for n, step in enumerate(steps):  # every click keeps its label in every later mask
        for earlier in steps[: n + 1]:
            click = earlier.prompt
            assert isinstance(click, Click) and step.mask[click.point] == click.foreground


def test_a_click_on_the_darker_part_claims_it(tumour: Case) -> None:
    """The protocol's second click lands on the tumour's darker band, which has no edge against the brain
    around it: the watershed alone gave it 73 voxels of tumour (``click_tolerance=0``), the click's own
    component on its slice 195 (measured)."""
    image, spacing, reference = tumour
    gains = []
    for engine in (ClassicalEngine(), ClassicalEngine(click_tolerance=0)):
        steps = simulate(engine, engine.prepare(image, spacing), reference, spacing, 2)
        gains.append(int((steps[1].mask & reference).sum() - (steps[0].mask & reference).sum()))
    assert gains[0] > 150
    assert gains[1] < 100


def test_undo_gives_the_earlier_mask_exactly(spleen: Case, spleen_prepared: ClassicalPrepared) -> None:
    _, spacing, reference = spleen
    engine = ClassicalEngine()
    steps = simulate(engine, spleen_prepared, reference, spacing, 3)
    prompts = [s.prompt for s in steps]
    assert not np.array_equal(steps[1].mask, steps[2].mask)
    for n in (1, 2):
        assert np.array_equal(engine.segment(spleen_prepared, prompts[:n]), steps[n - 1].mask)


def test_deterministic(spleen: Case, spleen_prepared: ClassicalPrepared) -> None:
    image, spacing, reference = spleen
    prompts = [s.prompt for s in simulate(ClassicalEngine(), spleen_prepared, reference, spacing, 2)]
    again = ClassicalEngine().prepare(image, spacing)
    assert np.array_equal(
        ClassicalEngine().segment(again, prompts), ClassicalEngine().segment(spleen_prepared, prompts)
    )


def test_background_click_removes_its_region(spleen: Case, spleen_prepared: ClassicalPrepared) -> None:
    """The protocol's second click on the spleen is a background click on the largest false positive:
    afterwards that voxel is outside the mask, the mask is smaller, and Dice is higher."""
    _, spacing, reference = spleen
    engine = ClassicalEngine()
    first = next_click(np.zeros_like(reference), reference, spacing)
    assert first is not None
    one = engine.segment(spleen_prepared, [first])
    second = next_click(one, reference, spacing)
    assert second is not None and not second.foreground
    two = engine.segment(spleen_prepared, [first, second])
    assert one[second.point] and not two[second.point]
    assert two.sum() < one.sum()
    assert dice(two, reference) > dice(one, reference)


def test_a_lone_background_click_gives_nothing(spleen_prepared: ClassicalPrepared) -> None:
    mask = ClassicalEngine().segment(spleen_prepared, [Click((80, 80, 13), foreground=False)])
    assert mask.shape == spleen_prepared.image_shape and not mask.any()


def test_box_keeps_the_structure_inside_it(spleen: Case, spleen_prepared: ClassicalPrepared) -> None:
    """A box drawn on the spleen's middle slice (K fixed) around its extent there: the mask stays within
    the box in I and J on every slice, and finds most of the spleen."""
    _, _, reference = spleen
    k = int(np.argmax(reference.sum(axis=(0, 1))))
    i, j = np.nonzero(reference[:, :, k])
    box = Box((int(i.min()), int(j.min()), k), (int(i.max()), int(j.max()), k))
    mask = ClassicalEngine().segment(spleen_prepared, [box])
    mi, mj, _ = np.nonzero(mask)
    assert mi.min() >= box.lo[0] and mi.max() <= box.hi[0]
    assert mj.min() >= box.lo[1] and mj.max() <= box.hi[1]
    assert mask[(box.lo[0] + box.hi[0]) // 2, (box.lo[1] + box.hi[1]) // 2, k]
    assert dice(mask, reference) > 0.8  # measured 0.86


@pytest.mark.parametrize(
    "prompt",
    [
        Click((164, 0, 0)),
        Click((0, 0, -1), foreground=False),
        Box((10, 10, 3), (5, 20, 3)),
        Box((10, 10, 3), (20, 200, 3)),
        SliceMask(2, 26, np.zeros((164, 166), dtype=bool)),
        SliceMask(0, 3, np.zeros((164, 166), dtype=bool)),
    ],
)
def test_prompts_that_do_not_fit_raise(spleen_prepared: ClassicalPrepared, prompt: object) -> None:
    with pytest.raises(PromptError):
        ClassicalEngine().segment(spleen_prepared, [Click((80, 80, 13)), prompt])  # type: ignore[list-item]


def test_large_image_works_on_a_strided_grid(spleen: Case) -> None:
    """Over ``max_voxels`` the engine works on every step-th voxel (finest axes first) and gives the
    mask back on the image's own grid."""
    image, spacing, reference = spleen
    engine = ClassicalEngine(max_voxels=200_000)
    prepared = engine.prepare(image, spacing)
    assert prepared.step == (2, 2, 1) and prepared.image_shape == image.shape
    steps = simulate(engine, prepared, reference, spacing, 3)
    assert steps[-1].mask.shape == reference.shape
    assert steps[-1].dice > 0.8  # measured 0.88 (0.90 on the full grid)


def test_large_scan_works_per_seed_on_the_rois_own_grid() -> None:
    """Where the whole-image grid would put working voxels over ``max_working_mm`` apart, each seed's ROI
    gets its own grid, as fine as the voxel budget allows for the ROI alone: on a 0.5 mm grid of 160³ the
    whole-image grid is strided (2, 2, 2), a 20 mm ROI fits at full resolution, so the mask has edges on
    odd voxels where the whole-image grid's mask repeats each working voxel over 2."""
    grid = (np.indices((160, 160, 160)) - 80) * 0.5
    ball = np.sqrt((grid**2).sum(axis=0)) < 8.0
    image = (np.where(ball, 300.0, 100.0) + np.random.default_rng(0).normal(0.0, 20.0, ball.shape)).astype(
        np.float32
    )
    spacing = (0.5, 0.5, 0.5)
    whole = ClassicalEngine(margin_mm=20.0)
    large = ClassicalEngine(margin_mm=20.0, max_working_mm=0.75)
    assert whole.prepare(image, spacing).step == (2, 2, 2)  # type: ignore[union-attr]
    prepared = large.prepare(image, spacing)
    assert isinstance(prepared, ClassicalLargePrepared) and prepared.scaled.dtype == np.float16
    mask = large.segment(prepared, [Click((80, 80, 80))])
    coarse = whole.segment(whole.prepare(image, spacing), [Click((80, 80, 80))])
    assert list(prepared.regions) == [((40, 40, 40), (121, 121, 121), (1, 1, 1))]
    assert (mask[0:-1:2] != mask[1::2]).any() and not (coarse[0:-1:2] != coarse[1::2]).any()
    assert mask.any() and not (mask & (np.sqrt((grid**2).sum(axis=0)) > 20.0)).any()


def test_large_scan_small_structure(subject_a: Case) -> None:
    """A small structure on a 1 mm 256³ MRI (FreeSurfer's right hippocampus on subject-a): on its ROI's
    own 1 mm grid the engine follows it, where the whole-image grid (3 mm apart) did not (bench.interactive
    --large, 2026-11-28: 0.141 / 0.702 / 0.717 after 1 / 3 / 5 clicks against 0.013 / 0.119 / 0.628)."""
    image, spacing, reference = subject_a
    engine = ClassicalEngine()
    prepared = engine.prepare(image, spacing)
    assert isinstance(prepared, ClassicalLargePrepared)
    steps = simulate(engine, prepared, reference, spacing, 3)
    assert steps[-1].dice > 0.6
    assert max(s.seconds for s in steps) < 30  # a generous bound: the bench reports the latency


def test_large_scan_masks_do_not_depend_on_the_roi_cache(spleen: Case) -> None:
    """The mask is a function of the prompts alone, whatever the cache holds; it keeps REGION_CACHE ROIs."""
    image, spacing, _ = spleen
    engine = ClassicalEngine(max_voxels=200_000, margin_mm=20.0, max_working_mm=1.0)
    warm = engine.prepare(image, spacing)
    assert isinstance(warm, ClassicalLargePrepared)
    clicks = [Click((60 + 6 * n, 70 + 4 * n, 5 + 2 * (n % 8))) for n in range(REGION_CACHE + 3)]
    prompts = [clicks[0], Click((110, 40, 13), foreground=False), clicks[1]]
    first = engine.segment(warm, prompts)
    for n in range(len(clicks)):
        engine.segment(warm, clicks[: n + 1])
    assert len(warm.regions) == REGION_CACHE
    again = engine.segment(warm, prompts)
    cold = engine.segment(engine.prepare(image, spacing), prompts)
    assert first.any() and np.array_equal(first, again) and np.array_equal(first, cold)
    assert warm.nbytes >= warm.scaled.nbytes + REGION_CACHE * 2 * 4 * 200_000


def test_registry() -> None:
    assert "classical" in engine_names()
    engine = get_engine("classical")
    assert engine.name == "classical" and isinstance(engine, ClassicalEngine)
    with pytest.raises(KeyError, match="known: classical"):
        get_engine("nope")


def test_prepared_reports_its_bytes(spleen_prepared: ClassicalPrepared) -> None:
    assert spleen_prepared.nbytes == 2 * 4 * 164 * 166 * 26
