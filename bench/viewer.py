"""Benchmark: opening a 256³ job in the viewer page, over loopback, in headless chromium (software WebGL).

Run from the repository root (needs /usr/bin/chromium, /usr/bin/chromedriver, selenium, `npm ci`):

    .venv/bin/python -m bench.viewer

A finished job is put straight into a fresh data directory (no model run): subject-a's norm.mgz as the scan
(the API converts it to .nii.gz once; that conversion is timed separately and kept out of the page
figures) and its 18-class reference as the label volume. Only the API runs (no broker, no worker).
The page reports, for each open of the job:
  decodeMs  from the click on the job to both volumes fetched and decoded (NVImage objects ready),
  renderMs  to the first frame with the overlay queued in WebGL (and, read back, drawn on the GPU),
  bytes     volume bytes decoded (the .nii.gz files as stored; no HTTP compression on top), and
            transferBytes, what crossed the network for them (Resource Timing; 0 from the HTTP cache),
  reslices  NiiVue re-slices (updateGLVolume calls) for the open: one is the minimum.
Every request made from the click on (two volumes and a few small JSON answers) is listed with its
bytes over the network, and so is the page itself (HTML, scripts, NiiVue gzipped) before the click.
Cold: a fresh browser profile. Warm: the job opened again in the same page (ETag / private cache).
Then one structure is hidden: the time until the GPU has re-coloured the overlay (one re-slice of both
volumes; nothing fetched or decoded).
Baseline, measured in the same run: the same two volumes as uncompressed NIfTI (what a server that
decompressed them would send) and nibabel's load of both files in this Python process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np

from tests.support.browser import start_chromium

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGSERVE_SHARED_DIR", REPO.parent / "shared"))
SUBJECT_A = SHARED / "data" / "mri-brain" / "subject-a"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed_job(data_dir: Path, env: dict[str, str]) -> str:
    """A succeeded job row and its files, written the way the API and a worker would."""
    from segserve import jobs as job_states
    from segserve.config import get_settings
    from segserve.db import JobStatus, init_db, new_session, utcnow
    from segserve.imaging.writers import write_labels_nifti
    from segserve.scans.readers import read_image, read_labels
    from segserve.storage import JobFiles

    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    get_settings.cache_clear()
    settings = get_settings()
    init_db(settings.resolved_database_url)
    job_id = uuid.uuid4().hex
    files = JobFiles(settings.jobs_dir, job_id)
    files.image_dir.mkdir(parents=True)
    shutil.copy(SUBJECT_A / "norm.mgz", files.image_dir / "0000.mgz")
    image = read_image([files.image_dir / "0000.mgz"])
    labels = read_labels([SUBJECT_A / "ref18.nii.gz"])
    files.labels.parent.mkdir(parents=True)
    write_labels_nifti(labels.array.astype(np.uint8), image, files.labels)
    job = job_states.build_job(
        job_id,
        model_id="brain-mri-structures",
        model_version="bench",
        queue="cpu",
        input_format=image.source_format,
        input_files=["0000.mgz"],
        reference_files=[],
        image_shape=list(image.shape),
        image_spacing_mm=[float(s) for s in image.spacing_mm],
        submitted_by="bench",
    )
    job.status = JobStatus.succeeded.value
    job.progress = 1.0
    job.finished_at = utcnow()
    with new_session(settings.resolved_database_url) as session:
        session.add(job)
        session.commit()
    return job_id


# Bytes the page itself cost over the network: the document and everything it loaded before a job opened.
_PAGE_BYTES = """
const navigation = performance.getEntriesByType("navigation")[0];
const loaded = performance.getEntriesByType("resource");
return navigation.transferSize + loaded.reduce((sum, e) => sum + e.transferSize, 0);
"""

# Milliseconds from the click on the job until the GPU has finished the first frame (rendering included).
_GPU_DONE = """
const gl = document.getElementById("gl").getContext("webgl2");
gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
return performance.now() - window.segserveViewer.openStart;
"""

# Hide a structure (its checkbox's change handler re-slices synchronously in JS), then read one pixel back,
# which waits for the GPU to finish what was queued: the time until the re-coloured overlay exists.
_HIDE_STRUCTURE = """
const started = performance.now();
document.getElementById(arguments[0]).click();
const gl = document.getElementById("gl").getContext("webgl2");
gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
return performance.now() - started;
"""


def _driver(profile: Path) -> Any:
    driver = start_chromium(profile)
    # Software WebGL keeps the page's main thread busy for tens of seconds per 256³ re-slice; a script
    # call waits for it.
    driver.set_script_timeout(600)
    return driver


def _open(driver: Any, job_id: str, timeout: float = 600) -> dict[str, Any]:
    driver.execute_script("location.hash = ''")
    before = driver.execute_script("return window.segserveViewer.reslices")
    deadline = time.monotonic() + timeout
    while driver.execute_script("return document.body.dataset.state") != "worklist":
        if time.monotonic() > deadline:
            raise TimeoutError("worklist")
        time.sleep(0.1)
    driver.execute_script(f"location.hash = '#job={job_id}'")
    while True:
        state = driver.execute_script("return JSON.parse(JSON.stringify(window.segserveViewer))")
        if state["state"] == "loaded" and state["jobId"] == job_id:
            state["reslicesAtOpen"] = state["reslices"] - before
            state["requests"] = driver.execute_script("return window.segserveViewer.requestsSinceOpen()")
            state["gpuDoneMs"] = driver.execute_script(_GPU_DONE)
            return dict(state)
        if state["state"] == "error":
            raise RuntimeError(state["error"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"page state {state['state']}")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="segserve-bench-viewer-"))
    port = _free_port()
    # No job is submitted, so the broker is never used; the API only needs a URL to configure Celery with.
    env = {
        "SEGSERVE_DATA_DIR": str(tmp / "data"),
        "SEGSERVE_PORT": str(port),
        "SEGSERVE_REDIS_URL": "redis://127.0.0.1:9/0",
    }
    job_id = _seed_job(tmp / "data", env)
    cli = [sys.executable, "-m", "shell.cli"]
    full_env = {**os.environ, **env}
    key = json.loads(
        subprocess.run(
            [*cli, "keys", "create", "--name", "bench", "--role", "reviewer"],
            env=full_env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )["key"]
    log = (tmp / "api.log").open("wb")
    api = subprocess.Popen([*cli, "api"], env=full_env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    profile = tmp / "profile"
    driver = None
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if api.poll() is not None:
                raise RuntimeError(
                    "the API exited:\n" + (tmp / "api.log").read_text(errors="replace")[-3000:]
                )
            time.sleep(0.1)
        headers = {"Authorization": f"Bearer {key}"}
        started = time.perf_counter()
        image_bytes = len(httpx.get(f"{base}/v1/jobs/{job_id}/image", headers=headers, timeout=120).content)
        convert_s = time.perf_counter() - started
        labels_bytes = len(httpx.get(f"{base}/v1/jobs/{job_id}/result", headers=headers).content)

        jobs_dir = tmp / "data" / "jobs" / job_id
        started = time.perf_counter()
        raw = [
            nib.Nifti1Image.from_filename(p)
            for p in (jobs_dir / "viewer" / "image.nii.gz", jobs_dir / "result" / "labels.nii.gz")
        ]
        raw_bytes = sum(int(np.asarray(img.dataobj).nbytes) + 352 for img in raw)
        nibabel_s = time.perf_counter() - started

        driver = _driver(profile)
        driver.get(f"{base}/healthz")  # the origin, to store the key before the page's first (cold) load
        driver.execute_script("sessionStorage.setItem('segserve.apiKey', arguments[0])", key)
        driver.get(f"{base}/viewer")
        page_bytes = driver.execute_script(_PAGE_BYTES)
        cold = _open(driver, job_id)
        warm = _open(driver, job_id)
        toggle_ms = driver.execute_script(_HIDE_STRUCTURE, "struct-1")
    finally:
        if driver is not None:
            driver.quit()
        api.terminate()
        api.wait(timeout=30)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"job: subject-a 256x256x256, scan {image_bytes} B + labels {labels_bytes} B as stored (.nii.gz)")
    print(f"first request of the scan (MGZ -> .nii.gz conversion, once per job): {convert_s * 1000:.0f} ms")
    print(f"the page before opening a job: {page_bytes} B over the network (HTML, scripts, NiiVue gzipped)")
    for name, run in (("cold", cold), ("warm", warm)):
        print(
            f"{name}: decode {run['decodeMs']:.0f} ms, first frame queued {run['renderMs']:.0f} ms "
            f"and drawn {run['gpuDoneMs']:.0f} ms, "
            f"{run['bytes']} B decoded, {run['transferBytes']} B over the network (headers included), "
            f"{run['reslicesAtOpen']} re-slice(s)"
        )
        for request in run["requests"]:
            print(f"    {request['transferSize']:>9} B  {request['url'].replace(job_id, '{id}')}")
    print(f"hide one structure: {toggle_ms:.0f} ms to the re-coloured overlay on the GPU (one re-slice)")
    print(f"baseline uncompressed NIfTI: {raw_bytes} B; sent/baseline = {cold['bytes'] / raw_bytes:.3f}")
    print(
        f"baseline nibabel load of both files in Python: {nibabel_s * 1000:.0f} ms; "
        f"page decode/baseline = {cold['decodeMs'] / (nibabel_s * 1000):.1f}"
    )


if __name__ == "__main__":
    main()
