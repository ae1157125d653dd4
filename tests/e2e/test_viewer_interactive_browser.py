"""Semi-automatic segmentation in the viewer, in a real headless chromium: open a job, click twice in a
structure with the foreground prompt, see the mask, accept it as a new named label, and check the saved
label version over HTTP voxel by voxel (the model's result with the mask's voxels set to the new label);
undo and the version's provenance (the two clicks, in file voxels) too; then painted slices filled between."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.support.stack import Stack, wait_for, wait_job
from tests.support.viewer import create_key, nifti
from tests.support.viewer_page import (
    chromium_or_skip,
    page,
    screenshot,
    select,
    sign_in_and_open,
    stroke,
    wait_page,
    wait_state,
)
from tests.support.volumes import brain_crop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]
MODEL = "brain-mri-structures"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_or_skip() as driver:
        yield driver


def _click(driver: Any, dx: int, dy: int) -> list[int]:
    """A left click on the prediction canvas, (dx, dy) pixels off its centre; returns the file voxel the
    crosshair went to (the prompt's voxel)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    before = page(driver, "interactive.prompts")
    canvas = driver.find_element(By.ID, "gl")
    ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).click().perform()
    wait_for(lambda: page(driver, "interactive.prompts") == before + 1, 60, "the click's mask")
    wait_state(driver, "loaded", timeout=60)
    return list(page(driver, "readout.voxel"))


def test_two_clicks_make_a_mask_that_is_saved_as_a_new_label(
    stack: Stack, browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    image, _ = brain_crop(tmp_path_factory.mktemp("viewer-interactive"), size=64)
    with stack.client() as c:
        resp = c.post("/v1/jobs", data={"model": MODEL}, files={"image": image.open("rb")})
        assert resp.status_code == 202, resp.text
        job = wait_job(c, resp.json()["id"])
        assert job["status"] == "succeeded", job
        model_result = nifti(c.get(f"/v1/jobs/{job['id']}/result").content)
    predicted = np.asarray(model_result.dataobj)
    key = create_key(stack, "reviewer")

    sign_in_and_open(browser, stack.base_url, key, job["id"])
    select(browser, "layout", "axial")
    select(browser, "ia-mode", "foreground")
    first = _click(browser, 0, 0)
    one_click = page(browser, "interactive.voxels")
    second = _click(browser, 6, 4)
    assert second != first
    assert page(browser, "interactive.voxels") > 0
    assert page(browser, "interactive.maskLoads") == 2  # one mask fetched per answer
    screenshot(browser, "interactive-two-clicks")
    print(f"click to mask on screen: {page(browser, 'interactive.lastMs'):.0f} ms")  # -s shows it
    session_id = page(browser, "interactive.session")
    headers = {"Authorization": f"Bearer {key}"}
    base = f"/v1/jobs/{job['id']}/interactions/{session_id}"
    with stack.client() as c:
        two_clicks = np.asarray(nifti(c.get(f"{base}/mask", headers=headers).content).dataobj)
        prompts = c.get(base, headers=headers).json()["prompts"]
    assert [p["point"] for p in prompts] == [first, second]
    assert all(p["type"] == "click" and p["foreground"] for p in prompts)
    assert two_clicks[tuple(first)] == 1 and two_clicks[tuple(second)] == 1  # seeds lie in their mask
    assert int(two_clicks.sum()) == page(browser, "interactive.voxels")

    # Undo goes back to the one-click mask; the second click again gives the same two-click mask.
    browser.find_element(By.ID, "ia-undo").click()
    wait_for(lambda: page(browser, "interactive.prompts") == 1, 60, "undo")
    wait_state(browser, "loaded")
    assert page(browser, "interactive.voxels") == one_click
    assert _click(browser, 6, 4) == second
    assert page(browser, "interactive.voxels") == int(two_clicks.sum())

    # Prompts given while an earlier one is still being answered wait their turn and are sent after it,
    # none lost: two clicks in quick succession, then two Undo presses in one go (the second press comes
    # while the first is in flight), which bring the session back to the two clicks.
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = browser.find_element(By.ID, "gl")
    chain = ActionChains(browser).move_to_element_with_offset(canvas, -6, 4).click().pause(0.1)
    chain.move_to_element_with_offset(canvas, -6, -4).click().perform()
    wait_for(lambda: page(browser, "interactive.prompts") == 4, 60, "both quick clicks answered")
    wait_for(lambda: not page(browser, "interactive.busy"), 60, "the clicks' queue to drain")
    browser.execute_script("const u = document.getElementById('ia-undo'); u.click(); u.click();")
    wait_for(lambda: page(browser, "interactive.prompts") == 2, 60, "both undos answered")
    wait_for(lambda: not page(browser, "interactive.busy"), 60, "the undos' queue to drain")
    assert page(browser, "interactive.mostQueued") >= 1  # the second undo waited for the first
    with stack.client() as c:
        assert [p["point"] for p in c.get(base, headers=headers).json()["prompts"]] == [first, second]
    wait_state(browser, "loaded")
    assert page(browser, "interactive.voxels") == int(two_clicks.sum())

    # Accept as a new label the reviewer names: a new label version, the model's result untouched.
    select(browser, "ia-target", "new")
    browser.find_element(By.ID, "ia-name").send_keys("clicked structure")
    browser.find_element(By.ID, "ia-accept").click()
    version = wait_page(browser, "savedVersion", "the mask saved as a label version", timeout=120)
    assert page(browser, "labelVersion") == version
    screenshot(browser, "interactive-accepted")
    with stack.client() as c:
        saved = np.asarray(
            nifti(c.get(f"/v1/jobs/{job['id']}/result", params={"version": version}).content).dataobj
        )
        assert c.get(f"/v1/jobs/{job['id']}/result").content  # still served
        unchanged = np.asarray(nifti(c.get(f"/v1/jobs/{job['id']}/result").content).dataobj)
        listed = c.get(f"/v1/jobs/{job['id']}/labels/versions").json()["items"][-1]
    ((value, name),) = listed["label_names"].items()
    assert name == "clicked structure" and int(value) not in np.unique(predicted)
    expected = np.where(two_clicks == 1, int(value), predicted)
    np.testing.assert_array_equal(saved, expected)
    np.testing.assert_array_equal(unchanged, predicted)
    assert listed["version"] == version and listed["key_id"] == key.split("_")[1]
    assert [p["point"] for p in listed["provenance"]["prompts"]] == [first, second]
    # the new label is offered in the structure list
    assert browser.find_element(By.ID, f"struct-{value}").is_selected()

    # Fill between slices: paint on two axial slices four apart, then fill; a new session's mask covers
    # the painted slices and every slice between them, nothing beyond.
    # A patch on each (pen size 3, rows 4 px apart), overlapping in-plane as the interpolation needs.
    select(browser, "pen-size", "3")
    select(browser, "ia-mode", "paint")
    painted = [[stroke(browser, -40, dy, 80) for dy in (0, 4, 8)][-1]]
    for _ in range(4):
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_UP)
    wait_for(lambda: page(browser, "readout.voxel") != painted[0], 30, "the next slices")
    painted.append([stroke(browser, -40, dy, 80) for dy in (0, 4, 8)][-1])
    browser.find_element(By.ID, "ia-fill").click()
    wait_for(lambda: page(browser, "interactive.prompts") == 2, 60, "both painted slices filled between")
    wait_state(browser, "loaded")
    screenshot(browser, "interactive-filled")
    filled_session = page(browser, "interactive.session")
    with stack.client() as c:
        fill_base = f"/v1/jobs/{job['id']}/interactions/{filled_session}"
        filled = np.asarray(nifti(c.get(f"{fill_base}/mask", headers=headers).content).dataobj)
        slices = c.get(fill_base, headers=headers).json()["prompts"]
    assert [p["type"] for p in slices] == ["slice", "slice"]
    axis = slices[0]["axis"]
    ends = sorted(p["index"] for p in slices)
    assert ends == sorted(v[axis] for v in painted) and ends[1] - ends[0] >= 2
    has_mask = filled.any(axis=tuple(a for a in range(3) if a != axis))
    assert np.flatnonzero(has_mask).tolist() == list(range(ends[0], ends[1] + 1))
