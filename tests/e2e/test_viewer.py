"""The review viewer over real HTTP: volumes with ETags, reviews, label versions; and the page itself in a
real headless chromium (software WebGL), driven by Selenium: sign in, open a job, see a structure's
colour, hide it, accept the job."""

from __future__ import annotations

import base64
import gzip
import importlib.util
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.support.browser import CHROMEDRIVER, CHROMIUM, start_chromium
from tests.support.paths import REPO
from tests.support.stack import Stack, wait_for, wait_job
from tests.support.volumes import brain_crop

pytestmark = pytest.mark.e2e
MODEL = "brain-mri-structures"
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def finished_job(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A succeeded 64³ job with its reference (small, so software WebGL renders it in seconds)."""
    image, reference = brain_crop(tmp_path_factory.mktemp("viewer"), size=64)
    with stack.client() as c:
        resp = c.post(
            "/v1/jobs",
            data={"model": MODEL},
            files={"image": image.open("rb"), "reference": reference.open("rb")},
        )
        assert resp.status_code == 202, resp.text
        done = wait_job(c, resp.json()["id"])
    assert done["status"] == "succeeded", done
    return {"id": done["id"], "image": image, "reference": reference}


def _nifti(content: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(content))


def _key(stack: Stack, role: str) -> str:
    with stack.client() as c:
        resp = c.post("/v1/keys", json={"name": f"viewer {role}", "role": role})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["key"])


def test_volumes_have_etags_and_sit_on_one_grid(stack: Stack, finished_job: dict[str, Any]) -> None:
    job_id = finished_job["id"]
    with stack.client() as c:
        image = c.get(f"/v1/jobs/{job_id}/image")
        assert image.status_code == 200 and image.headers["content-type"] == "application/gzip"
        assert image.content == finished_job["image"].read_bytes()  # NIfTI input: the stored file as is
        etag = image.headers["etag"]
        assert image.headers["cache-control"].startswith("private, max-age=")
        again = c.get(f"/v1/jobs/{job_id}/image", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        result = c.get(f"/v1/jobs/{job_id}/result")
        assert (
            c.get(f"/v1/jobs/{job_id}/result", headers={"If-None-Match": result.headers["etag"]}).status_code
            == 304
        )
        ref = c.get(f"/v1/jobs/{job_id}/reference")
        assert ref.status_code == 200
        missing = c.get("/v1/jobs/0123456789abcdef/image")
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    labels, reference = _nifti(result.content), _nifti(ref.content)
    assert labels.get_data_dtype() == np.uint8 and reference.get_data_dtype() == np.uint8
    np.testing.assert_allclose(labels.affine, _nifti(image.content).affine, atol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(reference.dataobj),
        np.asarray(nib.Nifti1Image.from_filename(finished_job["reference"]).dataobj),
    )


def test_mgz_scan_is_converted_once_onto_the_result_grid(stack: Stack, tmp_path: Path) -> None:
    image, _ = brain_crop(tmp_path, size=32)
    source = nib.Nifti1Image.from_filename(image)
    mgz = tmp_path / "crop.mgz"
    nib.save(nib.MGHImage(np.asarray(source.dataobj), source.affine), mgz)
    with stack.client() as c:
        resp = c.post("/v1/jobs", data={"model": MODEL}, files={"image": mgz.open("rb")})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        assert wait_job(c, job_id)["status"] == "succeeded"
        first = c.get(f"/v1/jobs/{job_id}/image")
        second = c.get(f"/v1/jobs/{job_id}/image")
        result = _nifti(c.get(f"/v1/jobs/{job_id}/result").content)
        assert c.get(f"/v1/jobs/{job_id}/reference").status_code == 404
    assert first.status_code == 200 and first.headers["etag"] == second.headers["etag"]  # converted once
    converted = _nifti(first.content)
    np.testing.assert_array_equal(np.asarray(converted.dataobj), np.asarray(source.dataobj))
    np.testing.assert_allclose(converted.affine, result.affine, atol=1e-5)
    assert converted.shape == result.shape


def test_worklist_and_review_roles(stack: Stack, finished_job: dict[str, Any]) -> None:
    job_id = finished_job["id"]
    submitter, reviewer = _key(stack, "submitter"), _key(stack, "reviewer")
    with stack.client(submitter) as c:
        denied = c.post(f"/v1/jobs/{job_id}/review", json={"decision": "accepted"})
        assert denied.status_code == 403 and denied.json()["code"] == "forbidden_role"
        listed = c.get("/v1/worklist", params={"status": "succeeded"}).json()["items"]
        assert job_id in {i["id"] for i in listed}
        assert all(
            set(i) == {"id", "model", "status", "created_at", "has_reference", "review"} for i in listed
        )
    with stack.client(reviewer) as c:
        bad = c.post(f"/v1/jobs/{job_id}/review", json={"decision": "maybe"})
        assert bad.status_code == 422
        resp = c.post(f"/v1/jobs/{job_id}/review", json={"decision": "rejected", "comment": "left putamen"})
        assert resp.status_code == 201, resp.text
        assert (
            resp.json()["state"] == "rejected" and resp.json()["latest"]["key_id"] == reviewer.split("_")[1]
        )
        rejected = c.get("/v1/worklist", params={"review": "rejected"}).json()["items"]
        assert job_id in {i["id"] for i in rejected}


def test_label_versions_keep_the_model_result(
    stack: Stack, finished_job: dict[str, Any], tmp_path: Path
) -> None:
    job_id = finished_job["id"]
    reviewer = _key(stack, "reviewer")
    with stack.client(reviewer) as c:
        original = c.get(f"/v1/jobs/{job_id}/result").content
        labels = _nifti(original)
        array = np.asarray(labels.dataobj).copy()
        array[:8, :8, :8] = 17
        corrected = nib.Nifti1Image(array, labels.affine, labels.header)
        resp = c.post(
            f"/v1/jobs/{job_id}/labels",
            content=gzip.compress(corrected.to_bytes()),
            headers={"Content-Type": "application/gzip"},
        )
        assert resp.status_code == 201, resp.text
        assert resp.json()["version"] == 1
        v1 = _nifti(c.get(f"/v1/jobs/{job_id}/result", params={"version": 1}).content)
        np.testing.assert_array_equal(np.asarray(v1.dataobj), array)
        assert v1.get_data_dtype() == np.uint8
        assert c.get(f"/v1/jobs/{job_id}/result").content == original
        assert c.get(f"/v1/jobs/{job_id}/result", params={"version": 0}).content == original
        assert c.get(f"/v1/jobs/{job_id}/result", params={"version": 9}).status_code == 404

        multipart = c.post(
            f"/v1/jobs/{job_id}/labels",
            files={"labels": ("fix.nii.gz", gzip.compress(corrected.to_bytes()))},
            data={"comment": "second pass"},
        )
        assert multipart.status_code == 201 and multipart.json()["version"] == 2, multipart.text

        wrong_value = array.copy()
        wrong_value[0, 0, 0] = 200
        bad = c.post(
            f"/v1/jobs/{job_id}/labels", content=nib.Nifti1Image(wrong_value, labels.affine).to_bytes()
        )
        assert bad.status_code == 422 and "200" in bad.json()["detail"]
        wrong_grid = c.post(
            f"/v1/jobs/{job_id}/labels", content=nib.Nifti1Image(array[:32], labels.affine).to_bytes()
        )
        assert wrong_grid.status_code == 422, wrong_grid.text
        versions = c.get(f"/v1/jobs/{job_id}/labels/versions").json()
    assert [v["version"] for v in versions["items"]] == [0, 1, 2] and versions["latest"] == 2
    assert versions["items"][2]["comment"] == "second pass"


# --- the page in a real browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        reason = f"browser test needs {', '.join(missing)}: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    if not (REPO / "node_modules" / "@niivue" / "niivue" / "dist" / "index.js").exists():
        reason = "NiiVue is not installed: run 'npm ci' in the repository root"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"segserve-chromium-{os.getpid()}"
    driver = start_chromium(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait_state(driver: Any, *states: str, timeout: float = 120) -> str:
    def current() -> str | None:
        state = driver.execute_script("return document.body.dataset.state")
        if state == "error" and "error" not in states:
            raise AssertionError(driver.execute_script("return window.segserveViewer.error"))
        return state if state in states else None

    return str(wait_for(current, timeout, f"page state {states}", interval=0.2))


def _pixels(driver: Any, name: str) -> np.ndarray:
    data_url = driver.execute_script("return window.segserveViewer.snapshot()")
    png = base64.b64decode(data_url.split(",", 1)[1])
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"viewer-{name}.png").write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _count_colour(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 6) -> int:
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tol).sum())


def _structure_to_check(result: bytes, colors: dict[str, list[int]]) -> int:
    """The most frequent predicted structure with a saturated colour (unlike grey tissue or the red
    crosshair)."""
    counts = np.bincount(np.asarray(_nifti(result).dataobj).ravel(), minlength=len(colors))
    for value in np.argsort(counts)[::-1]:
        r, g, b = colors[str(int(value))]
        reddish = r > 150 and g < 90 and b < 90
        if value > 0 and counts[value] > 50 and max(r, g, b) - min(r, g, b) > 60 and not reddish:
            return int(value)
    raise AssertionError("no predicted structure with a distinctive colour")


def test_viewer_page_shows_hides_and_accepts(
    stack: Stack, finished_job: dict[str, Any], browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    job_id = finished_job["id"]
    reviewer = _key(stack, "reviewer")
    with stack.client() as c:
        colors = c.get(f"/v1/models/{MODEL}").json()["colors"]
        label = _structure_to_check(c.get(f"/v1/jobs/{job_id}/result").content, colors)
    rgb = tuple(colors[str(label)])

    browser.get(f"{stack.base_url}/viewer")
    _wait_state(browser, "signed-out")
    browser.find_element(By.ID, "api-key").send_keys(reviewer)
    browser.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    _wait_state(browser, "worklist")
    assert browser.execute_script("return sessionStorage.getItem('segserve.apiKey')") == reviewer
    row = browser.find_element(By.CSS_SELECTOR, f'#jobs tr[data-job="{job_id}"]')
    row.click()
    _wait_state(browser, "loaded", timeout=180)
    state = browser.execute_script("return window.segserveViewer")
    assert state["jobId"] == job_id and state["bytes"] > 0 and state["decodeMs"] > 0
    assert state["volumeLoads"] == 2

    # Opaque overlay: the structure's pixels have exactly its colour in the slices.
    browser.execute_script(
        "const o = document.getElementById('opacity'); o.value = 1; o.dispatchEvent(new Event('input'))"
    )
    shown = _count_colour(_pixels(browser, "shown"), rgb)
    assert shown > 30, f"label {label} colour {rgb}: {shown} pixels"
    browser.save_screenshot(str(ARTIFACTS / "viewer-page.png"))

    updates = state["lutUpdates"]
    browser.find_element(By.ID, f"struct-{label}").click()
    wait_for(lambda: browser.execute_script("return window.segserveViewer.lutUpdates") > updates, 30, "LUT")
    hidden = _count_colour(_pixels(browser, "hidden"), rgb)
    assert hidden <= shown // 20, f"{hidden} pixels of label {label} left after hiding it (shown: {shown})"
    # Toggling re-colours; it does not fetch or decode a volume again.
    assert browser.execute_script("return window.segserveViewer.volumeLoads") == 2

    # The crosshair readout names the structure and the intensity under it; arrow keys scroll slices.
    before = browser.execute_script("return window.segserveViewer.readout")
    assert {"structure", "label", "intensity", "voxel"} <= set(before)
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_UP)
    wait_for(
        lambda: browser.execute_script("return window.segserveViewer.readout.voxel") != before["voxel"],
        30,
        "the crosshair to move one slice",
    )

    # Draw mode loads the labels into NiiVue's drawing layer; saving without strokes must give back the
    # same labels in the file's own voxel order, as a new version (the model's result stays version 0).
    browser.find_element(By.ID, "edit").click()
    browser.find_element(By.ID, "save-labels").click()
    saved = wait_for(
        lambda: browser.execute_script("return window.segserveViewer.savedVersion"), 120, "labels saved"
    )
    _wait_state(browser, "loaded")
    with stack.client() as c:
        v0 = _nifti(c.get(f"/v1/jobs/{job_id}/result").content)
        v1 = _nifti(c.get(f"/v1/jobs/{job_id}/result", params={"version": saved}).content)
    np.testing.assert_array_equal(np.asarray(v1.dataobj), np.asarray(v0.dataobj))
    np.testing.assert_allclose(v1.affine, v0.affine, atol=1e-5)

    browser.find_element(By.ID, "review-comment").send_keys("looks right")
    browser.find_element(By.ID, "accept").click()
    wait_for(lambda: "accepted" in browser.find_element(By.ID, "review-state").text, 30, "review shown")
    browser.save_screenshot(str(ARTIFACTS / "viewer-accepted.png"))
    with stack.client() as c:
        review = c.get(f"/v1/jobs/{job_id}/review").json()
    assert review["state"] == "accepted" and review["latest"]["comment"] == "looks right"
    assert review["latest"]["key_id"] == reviewer.split("_")[1]
