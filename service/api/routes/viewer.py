"""The review viewer: its page and static files under /viewer, and the scan and reference volumes it
displays (`GET /v1/jobs/{id}/image`, `/reference`). The worklist is in `worklist.py`.

Volumes go out as stored (.nii.gz, gzip inside the file, no Content-Encoding) with a strong ETag from
size and mtime and `Cache-Control: private`, so a reopened job costs one 304 per volume.

The page and its scripts carry a strict Content-Security-Policy: scripts only from this origin (no inline
script, no eval), connections only to this origin, no framing. NiiVue needs `data:` images (its font
atlas and matcap are built in as data URLs) and nothing else beyond 'self'.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from segserve.config import Settings
from segserve.db import Job
from segserve.imaging.detect import detect_format
from segserve.imaging.errors import ImageError
from segserve.imaging.writers import write_labels_nifti, write_volume_nifti
from segserve.scans.readers import read_image, read_labels
from segserve.storage import JobFiles
from service.api.deps import CanReadJobs, SessionDep, SettingsDep
from service.api.lookup import job_with_files
from service.files import volume_response
from service.problems import Problem
from service.static_files import static_response

STATIC_DIR = Path(__file__).resolve().parents[2] / "viewer"
REPO_DIR = Path(__file__).resolve().parents[3]
NIIVUE_DIST = REPO_DIR / "node_modules" / "@niivue" / "niivue" / "dist"
_STATIC_FILES = {
    "viewer.js": "text/javascript",
    "page.js": "text/javascript",
    "views.js": "text/javascript",
    "worklist.js": "text/javascript",
    "review.js": "text/javascript",
    "lesions.js": "text/javascript",
    "interactive.js": "text/javascript",
    "drawing.js": "text/javascript",
    "controls.js": "text/javascript",
    "viewer.css": "text/css",
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
# On the page and on every file it loads: nosniff makes the browser refuse a script served under another
# type, and no-referrer keeps job ids in URLs (#job=...) out of any request's Referer.
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

page_router = APIRouter(tags=["viewer"], include_in_schema=False)
router = APIRouter(prefix="/v1", tags=["viewer"])


# --- the page and its static files (no key needed: the page asks for one) ---------------------------------


@page_router.get("/viewer", response_class=Response)
def viewer_page(request: Request) -> Response:
    headers = {"Cache-Control": "no-cache", **SECURITY_HEADERS}
    return static_response(request, STATIC_DIR / "index.html", "text/html; charset=utf-8", headers)


@page_router.get("/viewer/static/{name}", response_class=Response)
def viewer_static(name: str, request: Request) -> Response:
    if name not in _STATIC_FILES:
        raise Problem(404, f"no viewer file '{name}'", code="not_found")
    headers = {"Cache-Control": "no-cache", **SECURITY_HEADERS}  # revalidated: a 304 after an upgrade
    return static_response(request, STATIC_DIR / name, _STATIC_FILES[name], headers)


@page_router.get("/viewer/static/niivue/index.js", response_class=Response)
def niivue_module(request: Request) -> Response:
    path = NIIVUE_DIST / "index.js"
    if not path.exists():
        raise Problem(
            503, "NiiVue is not installed: run 'npm ci' in the repository root", code="viewer_not_installed"
        )
    headers = {"Cache-Control": "public, max-age=86400", **SECURITY_HEADERS}
    return static_response(request, path, "text/javascript", headers)


# --- volumes ------------------------------------------------------------------------------------------------


def _viewer_dir(settings: Settings, job_id: str) -> Path:
    return JobFiles(settings.jobs_dir, job_id).root / "viewer"


def _gzip_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    with source.open("rb") as src, gzip.open(tmp, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst)
    tmp.replace(target)


def image_volume(settings: Settings, job: Job) -> Path:
    """The scan the worker read, as .nii.gz: a gzipped NIfTI upload as stored, anything else converted once
    into `<job>/viewer/image.nii.gz` (so the label volume sits exactly on it)."""
    files = JobFiles(settings.jobs_dir, job.id)
    paths = files.image_paths(job.input_files)
    if len(paths) == 1 and paths[0].exists() and detect_format(paths[0]) == "nifti":
        with paths[0].open("rb") as fh:
            if fh.read(2) == b"\x1f\x8b":
                return paths[0]
    target = _viewer_dir(settings, job.id) / "image.nii.gz"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        if len(paths) == 1 and detect_format(paths[0]) == "nifti":
            _gzip_copy(paths[0], target)
        else:
            write_volume_nifti(read_image(paths), target)
    return target


def reference_volume(settings: Settings, job: Job) -> Path:
    """The uploaded reference as a .nii.gz label volume in its smallest integer type, converted once."""
    target = _viewer_dir(settings, job.id) / "reference.nii.gz"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        reference = read_labels(JobFiles(settings.jobs_dir, job.id).reference_paths(job.reference_files))
        write_labels_nifti(reference.array, reference, target)
    return target


@router.get(
    "/jobs/{job_id}/image",
    summary="The scan the worker read, as .nii.gz (NIfTI as stored; MGZ, NRRD, DICOM converted once)",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}}, 304: {}},
)
async def get_image(
    job_id: str, request: Request, session: SessionDep, settings: SettingsDep, _key: CanReadJobs
) -> Response:
    job = job_with_files(session, job_id)
    try:
        path = await run_in_threadpool(image_volume, settings, job)
    except (ImageError, FileNotFoundError) as exc:
        raise Problem(
            404, f"the job's scan cannot be read from storage: {exc}", code="image_missing"
        ) from None
    return volume_response(request, path, f"{job.id}_image.nii.gz")


@router.get(
    "/jobs/{job_id}/reference",
    summary="The reference label volume, as .nii.gz",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}}, 304: {}},
)
async def get_reference(
    job_id: str, request: Request, session: SessionDep, settings: SettingsDep, _key: CanReadJobs
) -> Response:
    job = job_with_files(session, job_id)
    if not job.has_reference:
        raise Problem(404, "this job was submitted without a reference", code="no_reference")
    try:
        path = await run_in_threadpool(reference_volume, settings, job)
    except (ImageError, FileNotFoundError) as exc:
        raise Problem(
            404, f"the reference cannot be read from storage: {exc}", code="reference_missing"
        ) from None
    return volume_response(request, path, f"{job.id}_reference.nii.gz")
