"""Review of a job's labels: accept or reject with a comment, and corrected label versions.

Corrected labels are stored beside the model's result as `result/labels.v{N}.nii.gz` (N >= 1); the model's
own `result/labels.nii.gz` is version 0 and is never overwritten.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from models.catalog import Catalog
from segserve.config import Settings
from segserve.db import ApiKey, Job, JobStatus, LabelVersion, Review, new_session
from segserve.imaging.errors import ImageError
from segserve.imaging.volume import Volume
from segserve.imaging.writers import write_labels_nifti
from segserve.scans.readers import check_same_grid, read_labels
from segserve.storage import JobFiles, new_staging_dir
from service.api.deps import CanReadJobs, CatalogDep, SessionDep, SettingsDep, require
from service.api.lookup import job_with_files
from service.problems import Problem

router = APIRouter(prefix="/v1/jobs", tags=["reviews"])
CanWriteReviews = Annotated[ApiKey, Depends(require("reviews:write"))]


def _succeeded_job(session: Session, job_id: str) -> Job:
    """A succeeded job whose files are kept (404, 410 files_deleted, 409 otherwise)."""
    job = job_with_files(session, job_id)
    if job.status != JobStatus.succeeded.value:
        raise Problem(
            409,
            f"job is {job.status}; only a finished job's labels can be reviewed",
            code="job_has_no_result",
        )
    return job


# --- accept / reject ------------------------------------------------------------------------------------


class ReviewCreate(BaseModel):
    decision: Literal["accepted", "rejected"]
    comment: str = Field(default="", max_length=5000)
    label_version: int = Field(default=0, ge=0, description="The label version the decision is about")


class ReviewPublic(BaseModel):
    decision: str
    comment: str
    key_id: str
    label_version: int
    created_at: datetime


class ReviewState(BaseModel):
    job_id: str
    state: Literal["unreviewed", "accepted", "rejected"]
    latest: ReviewPublic | None
    history: list[ReviewPublic]


def _review_state(session: Session, job_id: str) -> ReviewState:
    # Ties on the time are broken by id, as in the worklist's review state (routes/worklist.py).
    rows = session.scalars(
        select(Review).where(Review.job_id == job_id).order_by(Review.created_at, Review.id)
    ).all()
    history = [
        ReviewPublic(
            decision=r.decision,
            comment=r.comment,
            key_id=r.key_id,
            label_version=r.label_version,
            created_at=r.created_at,
        )
        for r in rows
    ]
    latest = history[-1] if history else None
    state = latest.decision if latest else "unreviewed"
    return ReviewState(job_id=job_id, state=state, latest=latest, history=history)  # type: ignore[arg-type]


@router.post("/{job_id}/review", status_code=201, response_model=ReviewState, summary="Accept or reject")
def post_review(job_id: str, body: ReviewCreate, session: SessionDep, key: CanWriteReviews) -> ReviewState:
    _succeeded_job(session, job_id)
    if body.label_version > 0 and _version_row(session, job_id, body.label_version) is None:
        raise Problem(404, f"job has no label version {body.label_version}", code="label_version_not_found")
    session.add(
        Review(
            id=uuid.uuid4().hex,
            job_id=job_id,
            decision=body.decision,
            comment=body.comment,
            key_id=key.id,
            label_version=body.label_version,
        )
    )
    session.commit()
    return _review_state(session, job_id)


@router.get("/{job_id}/review", response_model=ReviewState, summary="The review state and its history")
def get_review(job_id: str, session: SessionDep, _key: CanReadJobs) -> ReviewState:
    if session.get(Job, job_id) is None:
        raise Problem(404, f"no job with id '{job_id}'", code="job_not_found")
    return _review_state(session, job_id)


# --- label versions -------------------------------------------------------------------------------------


class LabelVersionPublic(BaseModel):
    version: int
    key_id: str | None = Field(description="Who saved it (API key id); null for the model's result")
    comment: str
    label_values: list[int]
    label_names: dict[str, str] = Field(
        default_factory=dict,
        description="Names of the labels in this version that reviewers added beyond the model card's "
        "(value -> name)",
    )
    provenance: dict[str, Any] | None = Field(
        default=None,
        description="How the version was made when not uploaded: an interaction session's commit records "
        "{session_id, engine, prompts (voxel indices), target, base_version}",
    )
    created_at: datetime | None
    href: str


def version_public(row: LabelVersion) -> LabelVersionPublic:
    return LabelVersionPublic(
        version=row.version,
        key_id=row.key_id,
        comment=row.comment,
        label_values=row.label_values,
        label_names=row.label_names or {},
        provenance=row.provenance,
        created_at=row.created_at,
        href=f"/v1/jobs/{row.job_id}/result?version={row.version}",
    )


def named_labels(session: Session, job_id: str) -> dict[int, str]:
    """Labels reviewers added to a job's versions (value -> name; a later version's name wins)."""
    rows = session.scalars(
        select(LabelVersion).where(LabelVersion.job_id == job_id).order_by(LabelVersion.version)
    ).all()
    names: dict[int, str] = {}
    for row in rows:
        names.update({int(v): n for v, n in (row.label_names or {}).items()})
    return names


class LabelVersionList(BaseModel):
    job_id: str
    latest: int
    items: list[LabelVersionPublic]


def _version_row(session: Session, job_id: str, version: int) -> LabelVersion | None:
    return session.scalar(
        select(LabelVersion).where(LabelVersion.job_id == job_id, LabelVersion.version == version)
    )


def _versions(session: Session, job: Job) -> LabelVersionList:
    base = f"/v1/jobs/{job.id}/result"
    items = [
        LabelVersionPublic(
            version=0,
            key_id=None,
            comment="model result",
            label_values=[],
            created_at=job.finished_at,
            href=base,
        )
    ]
    rows = session.scalars(
        select(LabelVersion).where(LabelVersion.job_id == job.id).order_by(LabelVersion.version)
    ).all()
    items += [version_public(r) for r in rows]
    return LabelVersionList(job_id=job.id, latest=items[-1].version, items=items)


@router.get("/{job_id}/labels/versions", response_model=LabelVersionList, summary="Label version history")
def get_label_versions(job_id: str, session: SessionDep, _key: CanReadJobs) -> LabelVersionList:
    return _versions(session, _succeeded_job(session, job_id))


def _validated_labels(upload: Path, result: Volume, allowed_values: set[int]) -> tuple[np.ndarray, list[int]]:
    """The uploaded label array as uint8 on the result's grid, or a 422 naming what is wrong."""
    try:
        labels = read_labels([upload])
        check_same_grid(result, labels)
    except ImageError as exc:
        raise Problem(exc.status, str(exc), code=exc.code) from None
    values = [int(v) for v in labels.meta["label_values"]]
    unknown = sorted(set(values) - allowed_values)
    if unknown:
        raise Problem(
            422,
            f"label values {unknown} are not labels of the model (allowed: {sorted(allowed_values)})",
            code="unknown_label_values",
        )
    return labels.array.astype(np.uint8), values


def _store_version(
    settings: Settings, job_id: str, upload: Path, allowed: set[int], key_id: str, comment: str
) -> LabelVersion:
    """Validate an uploaded label volume against the result's grid and the allowed values, and save it."""
    result = read_labels([JobFiles(settings.jobs_dir, job_id).labels_version(0)])
    array, values = _validated_labels(upload, result, allowed)
    with new_session(settings.resolved_database_url) as session:
        names = named_labels(session, job_id)
    kept = {str(v): names[v] for v in values if v in names}
    return save_version(settings, job_id, array, result, key_id, comment, values, kept or None)


def save_version(
    settings: Settings,
    job_id: str,
    array: np.ndarray,
    like: Volume,
    key_id: str,
    comment: str,
    values: list[int],
    label_names: dict[str, str] | None = None,
    provenance: dict[str, Any] | None = None,
) -> LabelVersion:
    """Claim the next version number with the row (unique per job), then write `array` (uint8 labels on
    `like`'s grid) as its file atomically; the row is removed again if the write fails. Existing files
    are never touched."""
    with new_session(settings.resolved_database_url) as session:
        current = session.scalar(select(func.max(LabelVersion.version)).where(LabelVersion.job_id == job_id))
        row = LabelVersion(
            id=uuid.uuid4().hex,
            job_id=job_id,
            version=(current or 0) + 1,
            key_id=key_id,
            comment=comment,
            label_values=values,
            label_names=label_names,
            provenance=provenance,
        )
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise Problem(
                409, "another label version was saved at the same time; retry", code="version_conflict"
            ) from None
        try:
            write_labels_nifti(array, like, JobFiles(settings.jobs_dir, job_id).labels_version(row.version))
        except BaseException:
            session.delete(row)
            session.commit()
            raise
        return row


def card_labels(catalog: Catalog, model_id: str) -> dict[int, str]:
    try:
        return dict(catalog.card(model_id).labels)
    except KeyError:
        raise Problem(422, f"model '{model_id}' is no longer in the catalog", code="unknown_model") from None


def _allowed_values(catalog: Catalog, settings: Settings, job_id: str, model_id: str) -> set[int]:
    """The model card's labels and those reviewers named in the job's earlier versions."""
    with new_session(settings.resolved_database_url) as session:
        named = named_labels(session, job_id)
    return set(card_labels(catalog, model_id)) | set(named)


@router.post(
    "/{job_id}/labels",
    status_code=201,
    response_model=LabelVersionPublic,
    summary="Save corrected labels (.nii.gz body, or multipart field 'labels') as a new version",
    responses={409: {}, 413: {}, 422: {}},
)
async def post_labels(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    catalog: CatalogDep,
    key: CanWriteReviews,
) -> LabelVersionPublic:
    job = _succeeded_job(session, job_id)
    allowed = await run_in_threadpool(_allowed_values, catalog, settings, job.id, job.model_id)
    content_type = request.headers.get("content-type", "")
    staging = new_staging_dir(settings.staging_dir)
    try:
        comment = request.query_params.get("comment", "")
        if content_type.startswith("multipart/"):
            form = await request.form(max_files=1, max_fields=4)
            part = form.get("labels")
            if part is None or isinstance(part, str):
                raise Problem(422, "send one file in the form field 'labels'", code="missing_labels")
            body = await part.read()
            text = form.get("comment")
            comment = text if isinstance(text, str) else comment
        else:
            body = await request.body()
        if len(body) > settings.max_upload_bytes:
            raise Problem(413, "upload exceeds the limit", code="upload_too_large")
        if not body:
            raise Problem(422, "the upload is empty: send a .nii.gz label volume", code="missing_labels")
        upload = staging / ("labels.nii.gz" if body[:2] == b"\x1f\x8b" else "labels.nii")
        upload.write_bytes(body)
        row = await run_in_threadpool(_store_version, settings, job.id, upload, allowed, key.id, comment)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version_public(row)
