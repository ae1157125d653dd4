"""/v1/jobs/{id}/lesions: the lesion table of a job whose model has lesion labels (JSON or CSV), and the
instance volume behind GET /v1/jobs/{id}/result?format=instances."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from evaluation.lesion_report import lesions_csv
from segserve.config import Settings
from segserve.db import Job
from segserve.storage import JobFiles
from service.api.deps import CanReadJobs, SessionDep, SettingsDep
from service.api.lookup import job_with_files, require_succeeded
from service.files import csv_attachment, volume_response
from service.problems import Problem

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

FORMATS = ("json", "csv")


def no_lesions(job: Job) -> Problem:
    return Problem(
        404,
        f"job has no lesion table: model '{job.model_id}' marks none of its labels as lesions (the model "
        "card's lesion_labels; for installed models `segserve models install --lesion-labels`)",
        code="no_lesions",
    )


@router.get(
    "/{job_id}/lesions",
    summary="Lesion instances (id, label, volume, LPS centroid, box, RECIST axes, intensity): JSON or CSV",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}, 400: {}, 404: {}, 409: {}},
)
def get_lesions(
    job_id: str, session: SessionDep, settings: SettingsDep, _key: CanReadJobs, format: str = "json"
) -> Response:
    if format not in FORMATS:
        raise Problem(400, f"format must be one of {', '.join(FORMATS)}, got {format!r}", code="bad_format")
    job = job_with_files(session, job_id)
    require_succeeded(job)
    files = JobFiles(settings.jobs_dir, job.id)
    if not files.lesions.exists():
        raise no_lesions(job)
    payload = json.loads(files.lesions.read_text(encoding="utf-8"))
    if job.has_reference and files.metrics.exists():
        metrics = json.loads(files.metrics.read_text(encoding="utf-8"))
        payload["missed"] = {name: r["missed"] for name, r in metrics.get("lesionwise", {}).items()}
    if format == "csv":
        return csv_attachment(lesions_csv(payload), f"{job.id}_lesions.csv")
    payload["job_id"] = job.id
    return JSONResponse(payload)


def instances_response(request: Request, job: Job, settings: Settings, version: int | None) -> Response:
    """The instance volume (.nii.gz, uint16 ids 1..N on the scan's grid) of a succeeded job."""
    if version:
        raise Problem(
            422,
            "instances are made for the model's result only (version 0)",
            code="instances_version_unsupported",
        )
    path = JobFiles(settings.jobs_dir, job.id).instances
    if not path.exists():
        raise no_lesions(job)
    return volume_response(request, path, f"{job.id}_instances.nii.gz")
