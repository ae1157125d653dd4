"""The viewer's lesion table in a real headless chromium: a job of a model with a lesion label and a
reference shows one row per predicted lesion (id, label, volume, RECIST axes, as GET .../lesions says) and
one per reference lesion the prediction missed; clicking a row (or Enter on it) moves the crosshair onto that
lesion's centroid, read back as the file voxel under the crosshair."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as sk_label

from tests.support.lesions import LESION_CASE, install_lesion_model
from tests.support.stack import Stack, wait_for, wait_job
from tests.support.viewer import create_key, nifti
from tests.support.viewer_page import chromium_or_skip, page, screenshot, sign_in_and_open, wait_page

Index3 = tuple[int, int, int]
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_or_skip() as driver:
        yield driver


def _reference_far_from(directory: Path, prediction: np.ndarray) -> tuple[Path, list[Index3]]:
    """A reference of two small lesions (a voxel and its six neighbours each) where the prediction is
    farthest away, beyond the 2023 rule's three dilations, so that the table must list both as missed."""
    source = nib.load(LESION_CASE[1])
    mask = np.zeros(prediction.shape, dtype=np.uint8)
    grid = np.indices(mask.shape)
    free = ndimage.distance_transform_edt(prediction == 0)
    free[[0, -1], :, :] = free[:, [0, -1], :] = free[:, :, [0, -1]] = 0  # whole lesions inside the volume
    centres: list[Index3] = []
    for _ in range(2):
        centre = np.unravel_index(int(np.argmax(free)), free.shape)
        assert free[centre] > 5, f"no room for a missed lesion: {free[centre]} voxels from the prediction"
        centres.append((int(centre[0]), int(centre[1]), int(centre[2])))
        distance2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
        mask[distance2 <= 1] = 1
        free[distance2 <= 100] = 0  # the next one well away from this one
    out = directory / "reference.nii.gz"
    nib.save(nib.Nifti1Image(mask, source.affine), out)
    return out, centres


def _click_row_and_read_voxel(driver: Any, row: Any, previous: list[int] | None) -> list[int]:
    row.click()
    return list(
        wait_for(
            lambda: (v := page(driver, "readout.voxel")) != previous and v, 30, "the crosshair on the lesion"
        )
    )


def test_lesion_table_lists_lesions_and_moves_the_crosshair(
    stack: Stack, browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    directory = tmp_path_factory.mktemp("viewer-lesions")
    model = install_lesion_model(stack, directory)
    with stack.client() as c:
        first = c.post("/v1/jobs", data={"model": model}, files={"image": LESION_CASE[0].open("rb")})
        assert first.status_code == 202, first.text
        assert wait_job(c, first.json()["id"], timeout=300)["status"] == "succeeded"
        prediction = np.asarray(nifti(c.get(f"/v1/jobs/{first.json()['id']}/result").content).dataobj)
        reference, far_centres = _reference_far_from(directory, prediction)
        resp = c.post(
            "/v1/jobs",
            data={"model": model},
            files={"image": LESION_CASE[0].open("rb"), "reference": reference.open("rb")},
        )
        assert resp.status_code == 202, resp.text
        job = wait_job(c, resp.json()["id"], timeout=300)
        assert job["status"] == "succeeded", job
        table = c.get(f"/v1/jobs/{job['id']}/lesions").json()
    missed = [m for items in table["missed"].values() for m in items]
    far = {tuple(np.round(m["centroid_voxel"]).astype(int)) for m in missed}
    assert set(far_centres) <= far, (far_centres, missed)  # the reference's far balls are missed
    ref_components = sk_label(np.asarray(nib.load(reference).dataobj) > 0, connectivity=3)
    assert len(missed) <= int(ref_components.max())

    sign_in_and_open(browser, stack.base_url, create_key(stack, "reviewer"), job["id"])
    counts = wait_page(browser, "lesions", "the lesion table")
    assert counts == {"count": table["n_lesions"], "missed": len(missed)}
    rows = browser.find_elements(By.CSS_SELECTOR, "#lesions tbody tr")
    assert len(rows) == table["n_lesions"] + len(missed)
    summary = browser.find_element(By.ID, "lesions-summary").text
    assert summary == f"{table['n_lesions']} lesions, {len(missed)} missed"
    shown = browser.execute_script(  # one round trip for every cell
        "return [...document.querySelectorAll('#lesions tbody tr')]"
        ".map((tr) => [tr.className, ...[...tr.cells].map((td) => td.textContent)])"
    )
    assert shown[: table["n_lesions"]] == [
        [
            "",
            str(lesion["id"]),
            lesion["name"],
            f"{lesion['volume_ml']:.2f}",
            f"{lesion['long_axis_mm']:.1f}",
            f"{lesion['short_axis_mm']:.1f}",
        ]
        for lesion in table["lesions"]
    ]
    assert [row[:2] + row[3:4] for row in shown[table["n_lesions"] :]] == [
        ["missed", f"missed {m['ref_id']}", f"{m['volume_ml']:.2f}"] for m in missed
    ]
    screenshot(browser, "lesions")

    # A click on a row puts the crosshair on that lesion's centroid (the file voxel nearest to it): the
    # largest and the smallest predicted lesion and every missed one (each click re-renders every view in
    # software WebGL, about 3 s).
    voxel: list[int] | None = page(browser, "readout.voxel")
    targets = [lesion["centroid_voxel"] for lesion in table["lesions"]]
    targets += [m["centroid_voxel"] for m in missed]
    by_size = sorted(range(table["n_lesions"]), key=lambda n: table["lesions"][n]["n_voxels"])
    chosen = sorted({by_size[0], by_size[-1], *range(table["n_lesions"], len(rows))})
    for tr, centroid in ((rows[n], targets[n]) for n in chosen):
        voxel = _click_row_and_read_voxel(browser, tr, voxel)
        assert np.abs(np.array(voxel) - np.array(centroid)).max() <= 0.5 + 1e-3, (voxel, centroid)
    # Enter on a focused row does the same (the table is usable from the keyboard).
    rows[0].send_keys(Keys.ENTER)  # the last click was on another row
    wait_for(
        lambda: np.abs(np.array(page(browser, "readout.voxel")) - targets[0]).max() <= 0.5 + 1e-3,
        30,
        "the crosshair back on the first lesion",
    )
    screenshot(browser, "lesion-selected")
