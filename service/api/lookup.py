"""Lookups every route needs, answering with the same problem documents everywhere."""

from __future__ import annotations

from sqlalchemy.orm import Session

from models.card import ModelCard, input_channels
from models.catalog import Catalog
from segserve.db import Job, JobStatus
from service.problems import Problem


def job_or_404(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise Problem(404, f"no job with id '{job_id}'", code="job_not_found")
    return job


def job_with_files(session: Session, job_id: str) -> Job:
    """`job_or_404` for routes that read the job's files: 410 `files_deleted` once they were deleted
    (retention or an admin's DELETE; segserve.retention). GET /v1/jobs/{id} still shows the job."""
    job = job_or_404(session, job_id)
    if job.files_deleted_at is not None:
        when = job.files_deleted_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        raise Problem(
            410,
            f"the files of job '{job_id}' (scan, results, label versions) were deleted at {when} under the "
            "deployment's retention or by an administrator; the job's record is kept",
            code="files_deleted",
            files_deleted_at=when,
        )
    return job


def available_card(catalog: Catalog, model_id: str) -> ModelCard:
    """The card of a model that can take jobs, or a 422 naming what is wrong."""
    if model_id not in catalog.ids():
        known = ", ".join(sorted(catalog.ids()))
        raise Problem(422, f"unknown model '{model_id}'; known models: {known}", code="unknown_model")
    status = catalog.status(model_id)
    if not status.available:
        raise Problem(422, f"model '{model_id}' is unavailable: {status.reason}", code="model_unavailable")
    return status.card


def single_image_card(catalog: Catalog, model_id: str, route: str) -> ModelCard:
    """`available_card` for routes that bring one image per case (DICOMweb series, dataset evaluations):
    a multi-channel model there is a 422 at once, not a job that fails in the worker."""
    card = available_card(catalog, model_id)
    channels = input_channels(card)
    if channels:
        raise Problem(
            422,
            f"model '{model_id}' takes {len(channels)} input channels ({', '.join(channels)}); {route} "
            "brings one image per case: submit its jobs with POST /v1/jobs, one image.<channel> part per "
            "channel",
            code="multi_channel_model",
        )
    return card


def require_succeeded(job: Job) -> None:
    """409 unless the job succeeded: `job_not_finished` while queued or running, else `job_has_no_result`."""
    if job.status == JobStatus.succeeded.value:
        return
    if job.status in (JobStatus.queued.value, JobStatus.running.value):
        raise Problem(409, f"job is {job.status}; the result is not ready yet", code="job_not_finished")
    reason = f": {job.error}" if job.error else ""
    raise Problem(409, f"job {job.status}{reason}; it has no result", code="job_has_no_result")
