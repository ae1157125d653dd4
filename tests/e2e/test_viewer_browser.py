"""A reviewer's whole path through the viewer page in a real headless chromium (Debian's, software WebGL,
driven by chromedriver): sign in, filter the worklist, open a job, see a structure in its model-card
colour and hide it, show the reference beside the prediction, paint a correction with the brush and the
eraser, save it as a new label version, accept, and find the job accepted in the worklist. Checked over
HTTP too: the saved version differs from the model's exactly where painted. Waits are on the page's state
(`document.body.dataset.state`, `window.segserveViewer`), never on sleeps. Screenshots: ARTIFACTS."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.support.stack import Stack, wait_for, wait_job
from tests.support.viewer import (
    ARTIFACTS,
    assert_no_patient_data,
    create_key,
    dicom_parts_with_patient,
    nifti,
)
from tests.support.viewer_page import (
    chromium_or_skip,
    page,
    screenshot,
    select,
    sign_in,
    stroke,
    wait_page,
    wait_state,
)
from tests.support.volumes import brain_crop

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_or_skip() as driver:
        yield driver


@pytest.fixture(scope="module")
def jobs(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A 96³ job with its reference (large enough for the model to find every structure, small enough for
    software WebGL to re-slice in about a second), and a DICOM job whose headers name a patient."""
    image, reference = brain_crop(tmp_path_factory.mktemp("viewer-browser"), size=96)
    with stack.client() as c:
        review = c.post(
            "/v1/jobs",
            data={"model": MODEL},
            files={"image": image.open("rb"), "reference": reference.open("rb")},
        )
        dicom = c.post("/v1/jobs", data={"model": MODEL}, files=dicom_parts_with_patient())
        assert review.status_code == 202 and dicom.status_code == 202, (review.text, dicom.text)
        finished = [wait_job(c, r.json()["id"]) for r in (review, dicom)]
    assert all(j["status"] == "succeeded" for j in finished), finished
    return {"review": finished[0]["id"], "dicom": finished[1]["id"]}


# --- page helpers ------------------------------------------------------------------------------------------


def _pixels(driver: Any, name: str, view: str = "prediction") -> np.ndarray:
    data_url = driver.execute_script("return window.segserveViewer.snapshot(arguments[0])", view)
    png = base64.b64decode(data_url.split(",", 1)[1])
    (ARTIFACTS / f"viewer-{name}.png").write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _count_colour(pixels: np.ndarray, rgb: tuple[int, ...], tol: int = 6) -> int:
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tol).sum())


def _structure_to_check(labels: np.ndarray, colors: dict[str, list[int]]) -> int:
    """The most frequent predicted structure with a saturated colour (unlike grey tissue or the red
    crosshair)."""
    counts = np.bincount(labels.ravel(), minlength=len(colors))
    for value in np.argsort(counts)[::-1]:
        r, g, b = colors[str(int(value))]
        reddish = r > 150 and g < 90 and b < 90
        if value > 0 and counts[value] > 50 and max(r, g, b) - min(r, g, b) > 60 and not reddish:
            return int(value)
    raise AssertionError("no predicted structure with a distinctive colour")


# --- the reviewer's path ----------------------------------------------------------------------------------


def test_reviewer_opens_corrects_and_accepts_a_job(stack: Stack, jobs: dict[str, str], browser: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for stale in ARTIFACTS.glob("viewer-*.png"):
        stale.unlink()
    job_id = jobs["review"]
    reviewer = create_key(stack, "reviewer")
    with stack.client() as c:
        colors = c.get(f"/v1/models/{MODEL}").json()["colors"]
        model_result = c.get(f"/v1/jobs/{job_id}/result").content
    predicted = np.asarray(nifti(model_result).dataobj)
    axes = nib.aff2axcodes(nifti(model_result).affine)
    label = _structure_to_check(predicted, colors)
    rgb = tuple(colors[str(label)])

    # Sign in, filter the worklist: only identifiers safe to display.
    sign_in(browser, stack.base_url, reviewer)
    rows = {r.get_attribute("data-job") for r in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")}
    assert {job_id, jobs["dicom"]} <= rows
    assert_no_patient_data(browser.find_element(By.TAG_NAME, "body").text, "the worklist page")
    select(browser, "filter-review", "unreviewed")
    wait_state(browser, "worklist")
    screenshot(browser, "worklist")

    # Open: the scan and the labels, two volume requests, one re-slice.
    browser.find_element(By.CSS_SELECTOR, f'#jobs tr[data-job="{job_id}"]').click()
    wait_state(browser, "loaded", timeout=180)
    state = browser.execute_script("return JSON.parse(JSON.stringify(window.segserveViewer))")
    assert state["jobId"] == job_id and state["volumeLoads"] == 2 and state["reslices"] == 1
    volume_requests = [r["url"] for r in page(browser, "requestsSinceOpen()") if "/v1/jobs/" in r["url"]]
    assert sorted(u.rsplit("/", 1)[1] for u in volume_requests if u.endswith(("image", "result"))) == [
        "image",
        "result",
    ]
    assert not any("reference" in u for u in volume_requests)

    # An opaque overlay shows the structure in its card colour; the opacity slider costs no re-slice.
    browser.execute_script(
        "const o = document.getElementById('opacity'); o.value = 1; o.dispatchEvent(new Event('input'))"
    )
    shown = _count_colour(_pixels(browser, "overlay"), rgb)
    assert shown > 100, f"label {label} colour {rgb}: {shown} pixels"
    screenshot(browser, "overlay-on-anatomy")
    assert page(browser, "reslices") == 1

    # Hiding the structure re-colours the overlay (one re-slice, nothing fetched or decoded again).
    browser.find_element(By.ID, f"struct-{label}").click()
    wait_page(browser, "lutUpdates === 1", "the colour table update")
    hidden = _count_colour(_pixels(browser, "structure-hidden"), rgb)
    assert hidden <= shown // 20, f"{hidden} pixels of label {label} left after hiding it (shown: {shown})"
    assert page(browser, "volumeLoads") == 2 and page(browser, "reslices") == 2
    browser.find_element(By.ID, f"struct-{label}").click()
    wait_page(browser, "lutUpdates === 2", "the structure shown again")

    # The crosshair readout names the structure and the intensity; arrow keys scroll slices.
    before = page(browser, "readout")
    assert {"structure", "label", "intensity", "voxel"} <= set(before)
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_UP)
    moved = wait_for(
        lambda: (v := page(browser, "readout.voxel")) != before["voxel"] and v, 30, "the crosshair to move"
    )

    # The reference beside the prediction: fetched now (once), in a second view that follows the first.
    browser.find_element(By.ID, "show-reference").click()
    wait_page(browser, "referenceShown", "the reference view")
    assert page(browser, "volumeLoads") == 3 and page(browser, "reslices") == 4
    assert _count_colour(_pixels(browser, "reference", view="reference"), rgb) > 100
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_DOWN)
    wait_for(lambda: page(browser, "readout.voxel") != moved, 30, "the crosshair to move back")
    crosshairs = page(browser, "crosshairMM()")
    np.testing.assert_allclose(crosshairs["prediction"], crosshairs["reference"], atol=1e-3)
    assert "reference" in page(browser, "readout")
    screenshot(browser, "reference-beside-prediction")
    browser.find_element(By.ID, "show-reference").click()
    wait_for(lambda: not page(browser, "referenceShown"), 30, "the reference view hidden")

    # Brush: one axial slice, a label pen chosen in the page (the rarest predicted structure), then the
    # eraser on another row. Drawing costs no re-slice; saving costs one.
    counts = np.bincount(predicted.ravel(), minlength=len(colors))
    pen = int(min((v for v in range(1, len(colors)) if v != label), key=lambda v: counts[v]))
    select(browser, "layout", "axial")
    browser.find_element(By.ID, "edit").click()
    wait_for(lambda: page(browser, "editing"), 30, "drawing mode")
    select(browser, "pen", str(pen))
    select(browser, "pen-size", "3")
    painted_at = stroke(browser, -100, 60, 200)
    browser.find_element(By.ID, "eraser").click()
    erased_at = stroke(browser, -100, -60, 200)
    screenshot(browser, "drawing")
    assert page(browser, "reslices") == 4
    browser.find_element(By.ID, "version-comment").send_keys("painted and erased one row each")
    browser.find_element(By.ID, "save-labels").click()
    version = wait_page(browser, "savedVersion", "the corrected labels saved", timeout=120)
    assert page(browser, "labelVersion") == version and page(browser, "reslices") == 5
    # The crosshair (which followed the pen) moved off both rows, within the slice, to show them.
    ActionChains(browser).move_to_element_with_offset(
        browser.find_element(By.ID, "gl"), 0, 250
    ).click().perform()
    wait_for(lambda: page(browser, "readout.voxel") != erased_at, 30, "the crosshair moved")
    screenshot(browser, "corrected")
    select(browser, "layout", "multiplanar")

    with stack.client() as c:
        assert c.get(f"/v1/jobs/{job_id}/result").content == model_result  # the model's result is kept
        corrected = np.asarray(
            nifti(c.get(f"/v1/jobs/{job_id}/result", params={"version": version}).content).dataobj
        )
        versions = c.get(f"/v1/jobs/{job_id}/labels/versions").json()["items"]
    _assert_painted_exactly(predicted, corrected, axes, pen, (painted_at, erased_at))
    assert versions[-1]["version"] == version and versions[-1]["key_id"] == reviewer.split("_")[1]
    assert versions[-1]["comment"] == "painted and erased one row each"

    # Accept the corrected version, then find the job accepted in the worklist.
    browser.find_element(By.ID, "review-comment").send_keys("corrected and accepted")
    browser.find_element(By.ID, "accept").click()
    wait_for(lambda: "accepted" in browser.find_element(By.ID, "review-state").text, 30, "review shown")
    screenshot(browser, "accepted")
    with stack.client() as c:
        review = c.get(f"/v1/jobs/{job_id}/review").json()
    assert review["state"] == "accepted" and review["latest"]["comment"] == "corrected and accepted"
    assert review["latest"]["key_id"] == reviewer.split("_")[1]
    assert review["latest"]["label_version"] == version
    browser.find_element(By.ID, "back").click()
    wait_state(browser, "worklist")
    select(browser, "filter-review", "accepted")
    wait_state(browser, "worklist")
    row = browser.find_element(By.CSS_SELECTOR, f'#jobs tr[data-job="{job_id}"]')
    assert row.find_elements(By.TAG_NAME, "td")[-1].text == "accepted"
    screenshot(browser, "worklist-accepted")
    _assert_no_csp_violations(browser)


def _assert_painted_exactly(
    before: np.ndarray,
    after: np.ndarray,
    axes: tuple[str, ...],
    pen: int,
    ends: tuple[list[int], list[int]],
) -> None:
    """Every changed voxel is the pen's label on the painted row or background on the erased row, all in
    the one axial slice drawn on; `ends` are the file voxels where the strokes ended, and the pens are
    3 voxels wide. Each stroke changed something."""
    painted_at, erased_at = ends
    slice_axis = next(i for i, code in enumerate(axes) if code in "SI")  # axial: constant along S-I
    row_axis = next(i for i, code in enumerate(axes) if code in "AP")  # the strokes run left-right
    assert painted_at[slice_axis] == erased_at[slice_axis]
    changed = np.argwhere(before != after)
    assert len(changed), "the saved version equals the model's result"
    assert np.all(changed[:, slice_axis] == painted_at[slice_axis])  # the pen is square within the slice
    values = after[tuple(changed.T)]
    on_paint = (np.abs(changed[:, row_axis] - painted_at[row_axis]) <= 1) & (values == pen)
    on_erase = (np.abs(changed[:, row_axis] - erased_at[row_axis]) <= 1) & (values == 0)
    assert np.all(on_paint | on_erase), changed[~(on_paint | on_erase)][:10]
    assert on_paint.sum() >= 10 and on_erase.sum() >= 10, (on_paint.sum(), on_erase.sum())


def _assert_no_csp_violations(driver: Any) -> None:
    """No CSP violation or script error in the console; then one made on purpose must show up there."""
    log = driver.get_log("browser")
    problems = [
        e["message"] for e in log if "Content Security Policy" in e["message"] or e["level"] == "SEVERE"
    ]
    assert not problems, problems
    driver.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.x = 1'; document.body.append(s)"
    )
    blocked = wait_for(
        lambda: [e for e in driver.get_log("browser") if "Content Security Policy" in e["message"]],
        10,
        "the inline script refused",
    )
    assert blocked and driver.execute_script("return window.x") is None
