"""/v1/jobs: submit scans, follow jobs, fetch results and metrics, cancel and delete."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from models.catalog import Catalog
from models.memory import check_job_memory
from segserve import jobs as job_states
from segserve import retention
from segserve.config import Settings
from segserve.db import ApiKey, Job, JobPriority, JobStatus, Role, new_session
from segserve.idempotency import Claim, StoredAnswer
from segserve.imaging.errors import ImageError
from segserve.imaging.volume import Volume
from segserve.memory import InsufficientMemory, worker_budget
from segserve.queue_wait import queue_wait
from segserve.scans.decoded import channel_name, decoded_bytes, save_decoded
from segserve.scans.readers import check_same_grid, read_channels, read_image, read_labels
from segserve.storage import JobFiles, new_staging_dir
from service import idempotency
from service.api.deps import CanCreateJobs, CanDeleteJobs, CanReadJobs, CatalogDep, SessionDep, SettingsDep
from service.api.lookup import available_card, job_or_404
from service.deid_upload import deidentify_upload
from service.disk import check_declared_length, reserved_writes, upload_reserve
from service.problems import Problem
from service.quotas import check_queued, check_rate
from service.schemas import JobList, JobPublic
from service.shutdown import mark_finishing
from service.uploads import ParsedUpload, check_image_parts, receive_form
from workers.celery_app import app as celery_app
from workers.celery_app import publish_committed_job

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_FORM_SCHEMA: dict[str, Any] = {
    "parameters": [idempotency.OPENAPI_PARAMETER],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    # `image` or, for a multi-channel model, one `image.<channel>` part per channel
                    "required": ["model"],
                    "properties": {
                        "model": {"type": "string", "description": "A model id from GET /v1/models."},
                        "image": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One .nii/.nii.gz/.mgz/.nrrd file, a .zip of one DICOM series, "
                            "or several parts each holding one DICOM file of one series.",
                        },
                        "priority": {
                            "type": "string",
                            "enum": ["routine", "stat"],
                            "default": "routine",
                            "description": "stat: starts before every queued routine job on its queue.",
                        },
                        "reference": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Optional reference label volume on the image's grid.",
                        },
                    },
                    "patternProperties": {
                        r"^image\.[A-Za-z0-9][A-Za-z0-9_]{0,31}$": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "image.<channel>, for a multi-channel model (GET /v1/models: "
                            "input.channels, e.g. image.t1c, image.t1, image.t2, image.flair): one part per "
                            "channel, each like 'image', all on one grid; then no 'image' part.",
                        }
                    },
                }
            }
        },
    },
}


@dataclass(frozen=True)
class _Validated:
    input_format: str
    shape: list[int]
    spacing_mm: list[float]
    input_files: list[str]  # relative to the job's input/image/: the scan the viewer shows
    itemsize: int = 2  # bytes per voxel of the scan as read (int16: 2)
    n_channels: int = 1
    reference: bool = False


def _validate_volumes(
    staging: Path, form: ParsedUpload, channels: tuple[str, ...]
) -> tuple[_Validated, list[tuple[str, Volume]]]:
    """Read the scan or every channel (and the reference) fully: a truncated or wrong file, or channels
    on different grids, are refused now, not in the worker. The first channel's grid is the job's.

    Also returns what was read, named for `_keep_decoded` ("image" or each channel, and "reference")."""
    if channels:
        groups = [(c, [staging / "image" / c / n for n in form.channels[c]]) for c in channels]
        volumes = read_channels(groups)
        image = volumes[0]
        named = [(channel_name(c), v) for c, v in zip(channels, volumes, strict=True)]
        input_files = [f"{channels[0]}/{n}" for n in form.channels[channels[0]]]
    else:
        image = read_image([staging / "image" / n for n in form.files["image"]])
        named = [("image", image)]
        input_files = list(form.files["image"])
    if form.files["reference"]:
        reference = read_labels([staging / "reference" / n for n in form.files["reference"]])
        check_same_grid(image, reference)
        named.append(("reference", reference))
    info = _Validated(
        input_format=image.source_format,
        shape=list(image.shape),
        spacing_mm=[round(s, 6) for s in image.spacing_mm],
        input_files=input_files,
        itemsize=int(image.array.dtype.itemsize),
        n_channels=max(1, len(channels)),
        reference=bool(form.files["reference"]),
    )
    return info, named


def _keep_decoded(settings: Settings, staging: Path, named: list[tuple[str, Volume]]) -> None:
    """Keep the validated volumes beside the upload (segserve.scans.decoded, staging/decoded/), so that the
    worker maps them instead of decoding the upload again; they move into the job's folder with the
    upload. 507 when the copy would cross the disk reserve."""
    with reserved_writes(settings, staging, sum(decoded_bytes(v, staging) for _, v in named)):
        for name, volume in named:
            save_decoded(volume, staging, name)


def _store_job(
    settings: Settings,
    staging: Path,
    form: ParsedUpload,
    model_id: str,
    version: str,
    info: _Validated,
    key: ApiKey,
    priority: JobPriority,
    held: Claim | None,
) -> tuple[Job, dict[str, Any]]:
    """Move the upload into place and commit the row (and the Idempotency-Key's answer, in the same
    transaction: a key is never left without its job, nor a job without its key). Returns the job and the
    202 answer's body. On any failure nothing is left behind. The queued limit is checked again here, just
    before the row is made, for submissions that ran in parallel."""
    check_queued(settings, key)
    job_id = uuid.uuid4().hex
    files = JobFiles(settings.jobs_dir, job_id)
    files.root.mkdir(parents=True)
    try:
        os.rename(staging, files.root / "input")
        with new_session(settings.resolved_database_url) as session:
            job = job_states.build_job(
                job_id,
                model_id=model_id,
                model_version=version,
                queue=settings.default_queue,
                priority=priority,
                input_format=info.input_format,
                input_files=info.input_files,
                reference_files=form.files["reference"],
                image_shape=info.shape,
                image_spacing_mm=info.spacing_mm,
                submitted_by=key.id,
            )
            session.add(job)
            session.flush()
            body = JobPublic.from_row(job).model_dump(mode="json")
            if held is not None:
                answer = StoredAnswer(202, "application/json", json.dumps(body), _location(job_id), job_id)
                idempotency.complete_in(session, settings, held, answer)
            session.commit()
            return job, body
    except BaseException:
        files.remove()
        raise


def _location(job_id: str) -> list[tuple[str, str]]:
    return [("Location", f"/v1/jobs/{job_id}")]


def _priority(value: str) -> JobPriority:
    """The form field `priority`: empty means routine."""
    try:
        return JobPriority(value.strip().lower() or JobPriority.routine.value)
    except ValueError:
        raise Problem(
            422, f"form field 'priority' must be 'stat' or 'routine', got {value!r}", code="invalid_priority"
        ) from None


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    openapi_extra=_FORM_SCHEMA,
    summary="Submit a scan for segmentation",
    responses={
        413: {"description": "Upload too large"},
        415: {},
        422: {},
        429: {},
        507: {"description": "Disk full"},
    },
)
async def create_job(
    request: Request, settings: SettingsDep, catalog: CatalogDep, key: CanCreateJobs
) -> Response:
    idempotency_key = idempotency.request_key(request)
    # Limits first, before the upload is read: a refused client should not have to send gigabytes. A
    # request with an Idempotency-Key may be the retry of an accepted job (replayed below, whatever the
    # queue holds now), so its queued-jobs limit is checked only when a new job would be stored.
    await run_in_threadpool(check_rate, settings, key)
    if not idempotency_key:
        await run_in_threadpool(check_queued, settings, key)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise Problem(
            413, f"upload exceeds the limit of {settings.max_upload_bytes} bytes", code="upload_too_large"
        )
    check_declared_length(settings, int(declared) if declared and declared.isdigit() else 0)
    staging = new_staging_dir(settings.staging_dir)
    try:
        digest = idempotency.PartDigest.of(request) if idempotency_key else None
        form = await receive_form(
            request.headers.get("content-type", ""),
            request.stream(),
            staging,
            settings.max_upload_bytes,
            upload_reserve(settings, staging),
            digest,
        )
        # The upload is in: storing and publishing take seconds and are not cut off by the API's shutdown
        # deadline (service/shutdown.py), so a client is never told 503 about a stored job.
        mark_finishing(request.scope)
        held: Claim | None = None
        if idempotency_key and digest is not None:
            claimed = await idempotency.begin(settings, key.id, idempotency_key, digest)
            if isinstance(claimed, StoredAnswer):
                request.state.created_resource = ("job", claimed.resource_id)
                log.info("job %s: answer replayed for key %s (Idempotency-Key)", claimed.resource_id, key.id)
                return idempotency.replay(claimed)
            held = claimed
        async with idempotency.released_on_error(settings, held):
            job, body = await _accept(settings, catalog, key, staging, form, held)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    request.state.created_resource = ("job", job.id)
    await run_in_threadpool(publish_committed_job, celery_app, settings, job.id, job.queue, job.priority)
    log.info("job %s: accepted for model %s from key %s", job.id, job.model_id, key.id)
    return JSONResponse(body, status_code=202, headers=dict(_location(job.id)))


async def _accept(
    settings: Settings,
    catalog: Catalog,
    key: ApiKey,
    staging: Path,
    form: ParsedUpload,
    held: Claim | None,
) -> tuple[Job, dict[str, Any]]:
    """Check the received form against the model, validate the volumes and store the job (422 etc.)."""
    model_id = form.text.get("model", "")
    if not model_id:
        raise Problem(
            422, "missing form field 'model' (a model id from GET /v1/models)", code="missing_model"
        )
    priority = _priority(form.text.get("priority", ""))
    card = await run_in_threadpool(available_card, catalog, model_id)
    channels = check_image_parts(card, form)
    try:
        if settings.deidentify:  # before validation and storage: nothing identifying is kept
            form = await run_in_threadpool(deidentify_upload, settings, staging, form)
        info, volumes = await run_in_threadpool(_validate_volumes, staging, form, channels)
        # Refused now when no worker could take it (SEGSERVE_WORKER_MEMORY_MB set here too): 422, sizes named.
        check_job_memory(
            card,
            info.shape,
            info.itemsize,
            worker_budget(settings, use_cgroup=False),
            channels=info.n_channels,
            reference=info.reference,
            dicom_seg=info.input_format == "dicom",
            spacing_mm=info.spacing_mm,
        )
    except (ImageError, InsufficientMemory) as exc:
        raise Problem(exc.status, str(exc), code=exc.code) from None
    await run_in_threadpool(_keep_decoded, settings, staging, volumes)
    del volumes  # the voxels are on disk now: not held while the job is stored
    return await run_in_threadpool(
        _store_job, settings, staging, form, model_id, card.version, info, key, priority, held
    )


@router.get("", response_model=JobList, summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    _key: CanReadJobs,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobList:
    query = select(Job)
    count = select(func.count()).select_from(Job)
    if status is not None:
        query = query.where(Job.status == status.value)
        count = count.where(Job.status == status.value)
    total = session.scalar(count) or 0
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
    next_link = None
    if offset + limit < total:
        next_link = f"/v1/jobs?limit={limit}&offset={offset + limit}" + (
            f"&status={status.value}" if status else ""
        )
    return JobList(
        items=[JobPublic.from_row(r) for r in rows], total=total, limit=limit, offset=offset, next=next_link
    )


@router.get("/{job_id}", response_model=JobPublic, summary="A job's status and progress")
def get_job(job_id: str, session: SessionDep, settings: SettingsDep, _key: CanReadJobs) -> JobPublic:
    job = job_or_404(session, job_id)
    return JobPublic.from_row(job, queue_wait(session, job, runs=settings.estimate_runs))


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Cancel a queued or running job, or delete a finished job's files (admin: the job stays as a "
    "tombstone) or the job and its files (other roles)",
    responses={202: {"model": JobPublic}},
)
def delete_job(
    job_id: str, request: Request, session: SessionDep, settings: SettingsDep, key: CanDeleteJobs
) -> Response:
    job = job_or_404(session, job_id)
    outcome = job_states.cancel(session, job_id)
    if outcome is not None:
        session.refresh(job)
        if outcome is JobStatus.cancelled:
            JobFiles(settings.jobs_dir, job_id).remove()
        return JSONResponse(JobPublic.from_row(job).model_dump(mode="json"), status_code=202)
    if key.role == Role.admin.value:
        # As the retention does (segserve.retention): files removed now, the row kept with files_deleted_at,
        # one audit event. A second DELETE finds the tombstone and changes nothing.
        retention.delete_files(
            session,
            settings.jobs_dir,
            job_id,
            by="admin",
            key_id=key.id,
            client_address=request.client.host if request.client else None,
        )
        log.info("job %s: files deleted by key %s", job_id, key.id)
        return Response(status_code=204)
    JobFiles(settings.jobs_dir, job_id).remove()
    session.delete(job)
    session.commit()
    return Response(status_code=204)
